import NN
#if canImport(Glibc)
import Glibc
#endif

/// The methods this project trains, on the same networks and budgets.
public enum Method: String, CaseIterable, Sendable {
    case tvm
    case meanFlow = "meanflow"
    case improvedMeanFlow = "imf"
    case flowMatching = "fm"

    public var displayName: String {
        switch self {
        case .tvm: return "TVM"
        case .meanFlow: return "MeanFlow"
        case .improvedMeanFlow: return "iMF"
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

extension EMASchedule: CustomStringConvertible {
    /// "0.999" or "power:16", as `--ema` takes it (and as checkpoints name the extra EMAs).
    public var description: String {
        switch self {
        case .fixed(let d): return "\(d)"
        case .power(let g, _): return g == g.rounded() && abs(g) < 1e15 ? "power:\(Int(g))" : "power:\(g)"
        }
    }
}

public struct TrainConfig {
    public var method: Method = .tvm
    public var batch = 1024
    /// The peak learning rate; `schedule` gives each step's share of it.
    public var lr = 1e-3
    public var schedule = LearningRateSchedule.constant
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    /// Decoupled weight decay (AdamW's), applied to every parameter.
    public var weightDecay = 0.0
    /// Clip the global gradient norm to this value before the update (nil: no clipping).
    public var maxGradNorm: Double? = nil

    /// The learning rate of training step k (1-based).
    public func learningRate(step k: Int) -> Double { lr * schedule.factor(step: k) }
    /// The teacher: an EMA target of the student (TVM.md: 0.99).
    public var emaTargetDecay = 0.99
    public var evalEMA: EMASchedule = .power(gamma: 7, max: 0.9999)
    /// More evaluation EMAs of other widths, kept alongside to choose a width after the run (no extra passes
    /// of the network; one more update per step and one more set in each checkpoint).
    public var extraEMAs: [EMASchedule] = []
    public var guidance = GuidanceConfig.unconditional
    /// TVM's (s, t, s') draw (TVM.md's gap sampler).
    public var timeSampler = GapTimeSampler()
    /// The flow-matching baseline's settings (its logit-normal time).
    public var flowMatching = FlowMatchingObjective()
    /// MeanFlow's and iMF's own settings (times, trained-in guidance, adaptive weight); their label dropout is
    /// `guidance.labelDropout`.
    public var meanFlow = MeanFlowObjective()
    public var improvedMeanFlow = ImprovedMeanFlowObjective()
    public var seed: UInt64 = 0
    /// How NaN/Inf values, loss spikes and exploding gradients are detected and handled.
    public var faults = FaultDetection()
    public init() {}
}
