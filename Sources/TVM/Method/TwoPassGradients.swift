import TensorCore
import NN

/// The memory schedule of the TVM loss's gradients (TVM.md gives the loss; this is how it is differentiated):
/// two backward passes instead of one graph holding both terms.
extension TVMObjective {
    /// Reverse mode for the loss's last pass: `gradients`, or data-parallel averaging. It receives the scalar,
    /// the tensors to differentiate with respect to and the gradients of the earlier pass to add.
    public typealias Backward = (_ loss: Tensor, _ wrt: [Tensor], _ initial: [Tensor]) -> [Tensor]

    /// The loss and the gradients of its batch mean with respect to `wrt` (leaves of `student`), in two backward
    /// passes: the flow-matching term first, its graph freed before the terminal-velocity term's JVP graph is
    /// built, so peak memory holds one of the two graphs rather than both. The result equals differentiating
    /// `terms(...).mean` (up to the order of floating-point sums), including the zeroing of non-finite rows.
    /// This reads one scalar from the device (whether any row is excluded, `removingExcludedRows`); the trainer
    /// learns that from its step figures instead, and calls the two parts itself.
    public func termsAndGradients(network net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet,
                                  _ b: Inputs, wrt: [Tensor], backward: Backward? = nil) -> (terms: Terms, gradients: [Tensor]) {
        let (terms, grads) = termsAndGradientsKeepingExcludedRows(network: net, student: student, teacher: teacher, b,
                                                                  wrt: wrt, backward: backward)
        // A `backward` that averages across ranks meets the other ranks in its collectives, so every rank must take
        // the same branch; this rank's count is all that is known here, so then the correction always runs (it
        // removes nothing where no row is excluded).
        guard backward != nil || withoutGrad({ excludedRows(terms).sum().item }) > 0 else { return (terms, grads) }
        return (terms, removingExcludedRows(terms, from: grads, network: net, student: student, teacher: teacher, b, wrt: wrt,
                                            backward: backward))
    }

    /// `termsAndGradients` without its last part: the gradients still hold the flow-matching gradient of the
    /// excluded rows, those whose flow-matching term is finite but whose loss is not (the terminal term, or the
    /// sum, overflowed). How many there are is `nonFiniteRows - nonFiniteFlowMatchingRows` of the step's figures
    /// (every row with a non-finite flow-matching term has a non-finite loss); where it is not zero,
    /// `removingExcludedRows` takes their gradient out. Nothing here waits for the device.
    public func termsAndGradientsKeepingExcludedRows(network net: some FlowMapNetwork, student: ParameterSet,
                                                     teacher: ParameterSet, _ b: Inputs, wrt: [Tensor],
                                                     backward: Backward? = nil) -> (terms: Terms, gradients: [Tensor]) {
        let k = scales(b)
        let fm = flowMatchingTerm(net, student: student, teacher: teacher, b, k)
        let fmGradients = gradients(of: select(fm.isFinite(), fm, fm.zerosLike()).mean(), wrt: wrt)
        let (terminal, F, flowMap, dfds) = terminalTerm(net, student: student, teacher: teacher, b, k)
        let (loss, finite) = combined(terminal: terminal, flowMatching: fm.detached())
        let grads = (backward ?? Self.localBackward)(loss.mean(), wrt, fmGradients)
        return (Terms(loss: loss, terminal: terminal, flowMatching: fm.detached(), F: F, flowMap: flowMap,
                      flowMapDerivative: dfds, finiteRows: finite), grads)
    }

    /// Takes the flow-matching gradient of the excluded rows of `terms` out of `grads` (from
    /// `termsAndGradientsKeepingExcludedRows` on the same inputs): the rows are zeroed as a whole, as the one-graph
    /// loss zeroes them. One more flow-matching pass and its backward pass, through `backward`, so data-parallel
    /// ranks average the correction as they averaged the gradients (each rank must call it, excluded rows or not).
    public func removingExcludedRows(_ terms: Terms, from grads: [Tensor], network net: some FlowMapNetwork,
                                     student: ParameterSet, teacher: ParameterSet, _ b: Inputs, wrt: [Tensor],
                                     backward: Backward? = nil) -> [Tensor] {
        let B = Double(b.x0.shape[0])
        let excluded = excludedRows(terms)
        let again = flowMatchingTerm(net, student: student, teacher: teacher, b, scales(b))
        return (backward ?? Self.localBackward)(select(excluded, again, again.zerosLike()).sum() / -B, wrt, grads)
    }

    /// 1 for a row whose flow-matching term is finite but whose loss is not, else 0.
    func excludedRows(_ terms: Terms) -> Tensor {
        withoutGrad { terms.flowMatching.isFinite() - terms.finiteRows }
    }

    private static func localBackward(_ loss: Tensor, _ wrt: [Tensor], _ initial: [Tensor]) -> [Tensor] {
        gradients(of: loss, wrt: wrt, initial: initial)
    }
}
