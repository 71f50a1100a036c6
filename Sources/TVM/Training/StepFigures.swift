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
    /// TVM's rows zeroed by their terminal term alone (finite flow-matching term, non-finite loss): their
    /// flow-matching gradient must come out (`TVMObjective.removingExcludedRows`).
    public var excludedRows: Int { nonFiniteRows - nonFiniteFlowMatchingRows }

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

    /// The step's figures, all read from the device in one transfer, the one read of a step after its gradients:
    /// the loss, `termFigures` (from `tensors(of:)`, empty for methods with a single term) and the gradients'
    /// squared norm; `data` was measured on the host. The checks need them before the update.
    init(loss: Tensor, data: BatchFigures, termFigures: [Tensor], squaredGradNorm: Tensor, parallel: DataParallel?) {
        var values = concat(([loss] + termFigures + [squaredGradNorm]).map { $0.detached().reshaped([1]) }, axis: 0).doubles
        let gradNorm = values.removeLast().squareRoot()
        let tvmTerms = !termFigures.isEmpty
        if let parallel {
            // Every rank judges the step on the same figures. Each rank's loss and terms cover an equal share of
            // the batch, so their means average and the non-finite row counts (3-5) add up. The gradients are
            // averaged already, so every rank has the same norm, and the data figures describe the whole global
            // batch, which every rank holds.
            values = parallel.averageAcrossRanks(values)
            for i in values.indices.dropFirst(3) { values[i] = (values[i] * Double(parallel.worldSize)).rounded() }
        }
        self.init(loss: values[0], terminal: tvmTerms ? values[1] : nil, flowMatching: tvmTerms ? values[2] : nil,
                  gradNorm: gradNorm, rows: data.rows, nonFiniteRows: tvmTerms ? Int(values[3]) : 0,
                  nonFiniteTerminalRows: tvmTerms ? Int(values[4]) : 0,
                  nonFiniteFlowMatchingRows: tvmTerms ? Int(values[5]) : 0, nonFiniteData: data.nonFinite,
                  dataMagnitude: data.magnitude)
    }
}

/// The data batch's checks, made on the host where the batch is built: no device reduction and no read.
public struct BatchFigures: Sendable, Equatable {
    public var rows: Int
    /// NaN or infinite values.
    public var nonFinite: Int
    /// The largest magnitude of the finite values (absurd finite data overflows the network just as well).
    public var magnitude: Double

    /// The figures of a batch of `rows` rows holding `values`.
    public init(rows: Int, values: [Float]) {
        self.rows = rows
        var nonFinite = 0, magnitude: Float = 0
        for v in values {
            if v.isFinite { magnitude = Swift.max(magnitude, Swift.abs(v)) } else { nonFinite += 1 }
        }
        self.nonFinite = nonFinite
        self.magnitude = Double(magnitude)
    }

    /// The figures of a batch that is on the device (read to the host; for batches not built there).
    public init(of x0: Tensor) {
        self.init(rows: x0.shape[0], values: x0.floats)
    }
}

/// How many entries of `t` are NaN or infinite, as a scalar tensor (read with the other figures).
func nonFiniteCount(_ t: Tensor) -> Tensor {
    Double(t.count) - t.isFinite().sum()
}
