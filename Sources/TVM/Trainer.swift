import TensorCore
import NN
import Distributed
#if canImport(Glibc)
import Glibc
#endif

/// The methods this project trains, on the same networks and budgets.
public enum Method: String, CaseIterable, Sendable {
    case tvm
    case meanFlow = "meanflow"
    case flowMatching = "fm"

    public var displayName: String {
        switch self {
        case .tvm: return "TVM"
        case .meanFlow: return "MeanFlow"
        case .flowMatching: return "Flow matching"
        }
    }
}

/// Decay of the evaluation EMA at optimizer step k (1-based).
public enum EMASchedule: Equatable, Sendable {
    case fixed(Double)
    /// beta_k = min(max, (1 - 1/k)^(gamma + 1)): averages over a window growing with k (about k / (gamma + 1)
    /// steps), so short runs get a useful average and long runs converge to `max`.
    case power(gamma: Double, max: Double)

    public func decay(step k: Int) -> Double {
        switch self {
        case .fixed(let d): return d
        case .power(let g, let m): return Swift.min(m, pow(1 - 1 / Double(Swift.max(k, 1)), g + 1))
        }
    }
}

public struct TrainConfig {
    public var method: Method = .tvm
    public var batch = 1024
    public var lr = 1e-3
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var weightDecay = 0.0
    public var maxGradNorm: Double? = nil
    /// The teacher: an EMA target of the student (TVM.md: 0.99).
    public var emaTargetDecay = 0.99
    public var evalEMA: EMASchedule = .power(gamma: 7, max: 0.9999)
    public var guidance = GuidanceConfig.unconditional
    public var seed: UInt64 = 0
    public init() {}
}

/// One optimizer step's figures.
public struct StepStats {
    public var step: Int
    public var loss: Double
    public var terminal: Double?
    public var flowMatching: Double?
    public var gradNorm: Double
    public var nanRows: Int
    /// The gradient was not finite, so the step changed no weights, optimizer state or EMA.
    public var skipped: Bool
}

/// Student, EMA target (the TVM teacher), evaluation EMA and optimizer of one run.
public final class Trainer<Net: FlowMapNetwork> {
    public let net: Net
    public let config: TrainConfig
    public let student: ParameterSet
    public let teacher: ParameterSet
    public let ema: ParameterSet
    public let optimizer: AdamW
    public var rng: RandomGenerator
    public private(set) var step = 0
    let tvm: TVMObjective
    /// Data-parallel training (TVM only): `train` then gets the whole global batch, evaluates this rank's rows of
    /// it and averages the gradients and logged figures across ranks (nil: this process trains alone).
    public var parallel: DataParallel? {
        didSet { precondition(parallel == nil || config.method == .tvm, "data-parallel training supports TVM only") }
    }

    public init(network: Net, config: TrainConfig, on device: Device = .default) {
        net = network
        self.config = config
        var initRNG = RandomGenerator(seed: config.seed).split(1)
        student = network.initialParameters(rng: &initRNG, on: device)
        teacher = student.copy()
        ema = student.copy()
        optimizer = AdamW(for: student, lr: config.lr, beta1: config.beta1, beta2: config.beta2,
                          weightDecay: config.weightDecay, maxGradNorm: config.maxGradNorm)
        rng = RandomGenerator(seed: config.seed).split(2)
        tvm = TVMObjective(guidance: config.guidance)
    }

    /// One step on a batch: loss, gradients (through the JVP for TVM), AdamW, then both EMAs.
    public func train(x0: Tensor, cond: Conditioning = Conditioning()) -> StepStats {
        let leaves = student.leaves()
        let loss: Tensor
        // Figures for the log, read from the device together at the end of the step.
        var figures: [Tensor] = []
        switch config.method {
        case .tvm:
            let terms = tvm.terms(network: net, student: leaves, teacher: teacher, x0: x0, cond: cond, rng: &rng,
                                  rows: parallel?.rows(ofBatch: x0.shape[0]))
            loss = terms.mean
            figures = withoutGrad {
                [terms.terminal.mean(), terms.flowMatching.mean(), Double(terms.finiteRows.count) - terms.finiteRows.sum()]
            }
        case .meanFlow:
            loss = MeanFlowObjective().loss(network: net, params: leaves, x0: x0, rng: &rng)
        case .flowMatching:
            loss = FlowMatchingObjective().loss(network: net, params: leaves, x0: x0, rng: &rng)
        }
        let grads = parallel?.averagedGradients(of: loss, wrt: leaves.all) ?? gradients(of: loss, wrt: leaves.all)
        let norm = globalNorm(grads)
        step += 1
        // A NaN or infinite gradient (a bad batch: zeroing its loss rows does not stop 0 * NaN in backward)
        // would poison the weights, Adam's moments and both EMAs for good: such a step updates nothing.
        let skipped = !norm.isFinite
        if !skipped {
            optimizer.update(student, grads: grads, norm: norm)
            emaUpdate(teacher, toward: student, decay: config.emaTargetDecay)
            emaUpdate(ema, toward: student, decay: config.evalEMA.decay(step: step))
        }
        var values = concat(([loss] + figures).map { $0.detached().reshaped([1]) }, axis: 0).doubles
        if let parallel {
            // Each rank's figures cover an equal share of the batch: the means average, the NaN row count adds up.
            values = parallel.averageAcrossRanks(values)
            if values.count > 3 { values[3] = (values[3] * Double(parallel.worldSize)).rounded() }
        }
        return StepStats(step: step, loss: values[0], terminal: figures.isEmpty ? nil : values[1],
                         flowMatching: figures.isEmpty ? nil : values[2], gradNorm: norm,
                         nanRows: figures.isEmpty ? 0 : Int(values[3]), skipped: skipped)
    }

    /// Continues a checkpointed run: copies the saved values into the student, teacher and EMA sets (same
    /// names), restores the optimizer state, the step count and the random stream, so that `train` proceeds
    /// exactly as the run that saved them.
    public func restore(step: Int, rng: RandomGenerator, student s: ParameterSet, teacher t: ParameterSet,
                        ema e: ParameterSet, optimizerStep: Int, m: ParameterSet, v: ParameterSet) {
        for (dst, src) in [(student, s), (teacher, t), (ema, e)] {
            for name in dst.names { dst[name] = src[name].detached() }
        }
        optimizer.restore(step: optimizerStep, m: m, v: v)
        self.step = step
        self.rng = rng
    }

    /// n-step samples from `noise` with the evaluation EMA (or other weights).
    public func sample(noise: Tensor, steps: Int, cond: Conditioning = Conditioning(), weights: ParameterSet? = nil,
                       guidanceScale: Double = 1) -> Tensor {
        let kappa = config.guidance.scaledParameterization ? guidanceScale : 1
        return sampleFlowMap(network: net, params: weights ?? ema, noise: noise, steps: steps, cond: cond,
                             kappa: kappa, instantaneous: config.method == .flowMatching)
    }
}
