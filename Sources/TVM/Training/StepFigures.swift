import TensorCore
import Distributed

/// One optimizer step's figures, as the trainer reports them.
public struct StepStats {
    public var step: Int
    public var loss: Double
    public var terminal: Double?
    public var flowMatching: Double?
    /// The global gradient norm before clipping.
    public var gradNorm: Double
    /// The learning rate of this step (the update's, unless the step was skipped).
    public var learningRate: Double
    public var nanRows: Int
    /// The step changed no weights, optimizer state or EMA (a fault that the policy rejects).
    public var skipped: Bool
    /// The fault that decided what this step did, if any.
    public var fault: NumericalFault?
    /// The policy is `stop` and this step found a fault: the caller should end the run.
    public var stopped: Bool { fault?.action == .stopped }
}

/// The figures of one step that the checks need (read from the device once, with the log figures).
public struct StepFigures: Sendable {
    public var loss: Double
    /// The batch means of the two TVM terms (nil for methods with a single term).
    public var terminal: Double?
    public var flowMatching: Double?
    public var gradNorm: Double
    public var rows: Int
    /// Rows whose loss was NaN or infinite, in total and per term.
    public var nonFiniteRows: Int
    public var nonFiniteTerminalRows: Int
    public var nonFiniteFlowMatchingRows: Int
    /// NaN or infinite values in the data batch itself, and its largest magnitude (absurd finite data
    /// overflows the network just as well).
    public var nonFiniteData: Int
    public var dataMagnitude: Double

    public init(loss: Double, terminal: Double?, flowMatching: Double?, gradNorm: Double, rows: Int, nonFiniteRows: Int,
                nonFiniteTerminalRows: Int, nonFiniteFlowMatchingRows: Int, nonFiniteData: Int, dataMagnitude: Double) {
        self.loss = loss
        self.terminal = terminal
        self.flowMatching = flowMatching
        self.gradNorm = gradNorm
        self.rows = rows
        self.nonFiniteRows = nonFiniteRows
        self.nonFiniteTerminalRows = nonFiniteTerminalRows
        self.nonFiniteFlowMatchingRows = nonFiniteFlowMatchingRows
        self.nonFiniteData = nonFiniteData
        self.dataMagnitude = dataMagnitude
    }
}

extension StepFigures {
    /// TVM's figures of its two terms, still on the device: their batch means and how many rows were not finite,
    /// in total and per term.
    static func tensors(of terms: TVMObjective.Terms) -> [Tensor] {
        withoutGrad {
            [terms.terminal.mean(), terms.flowMatching.mean(), Double(terms.finiteRows.count) - terms.finiteRows.sum(),
             nonFiniteCount(terms.terminal), nonFiniteCount(terms.flowMatching)]
        }
    }

    /// The step's figures, all read from the device in one transfer: the loss, the data batch's non-finite values
    /// and magnitude, and `termFigures` (from `tensors(of:)`, empty for methods with a single term). The checks
    /// need them before the update.
    init(loss: Tensor, data x0: Tensor, termFigures: [Tensor], gradNorm: Double, parallel: DataParallel?) {
        let dataFigures = withoutGrad { [nonFiniteCount(x0), x0.max(), x0.affine(-1, 0).max()] }
        var values = concat(([loss] + dataFigures + termFigures).map { $0.detached().reshaped([1]) }, axis: 0).doubles
        let tvmTerms = !termFigures.isEmpty
        if let parallel {
            // Every rank judges the step on the same figures. Each rank's loss and terms cover an equal share of
            // the batch, so their means average and the non-finite row counts (6-8) add up; the data figures
            // (1-3) describe the whole global batch, which every rank holds.
            values = parallel.averageAcrossRanks(values)
            for i in 6..<values.count { values[i] = (values[i] * Double(parallel.worldSize)).rounded() }
        }
        self.init(loss: values[0], terminal: tvmTerms ? values[4] : nil, flowMatching: tvmTerms ? values[5] : nil,
                  gradNorm: gradNorm, rows: x0.shape[0], nonFiniteRows: tvmTerms ? Int(values[6]) : 0,
                  nonFiniteTerminalRows: tvmTerms ? Int(values[7]) : 0,
                  nonFiniteFlowMatchingRows: tvmTerms ? Int(values[8]) : 0, nonFiniteData: Int(values[1]),
                  dataMagnitude: Swift.max(values[2], values[3]))
    }
}

/// How many entries of `t` are NaN or infinite, as a scalar tensor (read with the other figures).
func nonFiniteCount(_ t: Tensor) -> Tensor {
    Double(t.count) - t.isFinite().sum()
}
