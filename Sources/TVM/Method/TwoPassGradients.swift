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
    public func termsAndGradients(network net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet,
                                  _ b: Inputs, wrt: [Tensor], backward: Backward? = nil) -> (terms: Terms, gradients: [Tensor]) {
        let k = scales(b), B = Double(b.x0.shape[0])
        let backward = backward ?? { loss, wrt, initial in gradients(of: loss, wrt: wrt, initial: initial) }
        let fm = flowMatchingTerm(net, student: student, teacher: teacher, b, k)
        let fmFinite = fm.isFinite()
        var fmGradients = gradients(of: select(fmFinite, fm, fm.zerosLike()).mean(), wrt: wrt)
        let (terminal, F, flowMap, dfds) = terminalTerm(net, student: student, teacher: teacher, b, k)
        let (loss, finite) = combined(terminal: terminal, flowMatching: fm.detached())
        // A row whose flow-matching term was finite but whose terminal term is not is zeroed as a whole: its
        // flow-matching gradient, already taken, comes back out (one more pass, only in that rare case). Knowing
        // whether to costs one scalar read from the device per step, before the second backward pass is queued.
        let excluded = withoutGrad { fmFinite - finite }
        if withoutGrad({ excluded.sum().item }) > 0 {
            let again = flowMatchingTerm(net, student: student, teacher: teacher, b, k)
            let removed = gradients(of: select(excluded, again, again.zerosLike()).sum() / B, wrt: wrt)
            fmGradients = withoutGrad { zip(fmGradients, removed).map { $0 - $1 } }
        }
        let grads = backward(loss.mean(), wrt, fmGradients)
        return (Terms(loss: loss, terminal: terminal, flowMatching: fm.detached(), F: F, flowMap: flowMap,
                      flowMapDerivative: dfds, finiteRows: finite), grads)
    }
}
