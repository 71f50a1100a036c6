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
    public var lr = 1e-3
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var weightDecay = 0.0
    public var maxGradNorm: Double? = nil
    /// The teacher: an EMA target of the student (TVM.md: 0.99).
    public var emaTargetDecay = 0.99
    public var evalEMA: EMASchedule = .power(gamma: 7, max: 0.9999)
    /// More evaluation EMAs of other widths, kept alongside to choose a width after the run (no extra passes
    /// of the network; one more update per step and one more set in each checkpoint).
    public var extraEMAs: [EMASchedule] = []
    public var guidance = GuidanceConfig.unconditional
    public var seed: UInt64 = 0
    /// How NaN/Inf values, loss spikes and exploding gradients are detected and handled.
    public var faults = FaultDetection()
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
    /// The step changed no weights, optimizer state or EMA (a fault that the policy rejects).
    public var skipped: Bool
    /// The fault that decided what this step did, if any.
    public var fault: NumericalFault?
    /// The policy is `stop` and this step found a fault: the caller should end the run.
    public var stopped: Bool { fault?.action == .stopped }
}

/// Student, EMA target (the TVM teacher), evaluation EMA and optimizer of one run.
public final class Trainer<Net: FlowMapNetwork> {
    public let net: Net
    public let config: TrainConfig
    public let student: ParameterSet
    public let teacher: ParameterSet
    public let ema: ParameterSet
    /// One set per `config.extraEMAs` entry, in that order.
    public let extraEMAs: [ParameterSet]
    public let optimizer: AdamW
    public var rng: RandomGenerator
    public private(set) var step = 0
    /// The fault checks' history; a checkpoint saves and restores it with the rest of the state.
    public var faultMonitor: FaultMonitor
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
        // Checkpoints name the extra EMAs by their schedules.
        precondition(Set(config.extraEMAs.map(\.description)).count == config.extraEMAs.count, "extra EMA schedules must differ")
        let initial = student
        extraEMAs = config.extraEMAs.map { _ in initial.copy() }
        optimizer = AdamW(for: student, lr: config.lr, beta1: config.beta1, beta2: config.beta2,
                          weightDecay: config.weightDecay, maxGradNorm: config.maxGradNorm)
        rng = RandomGenerator(seed: config.seed).split(2)
        tvm = TVMObjective(guidance: config.guidance)
        faultMonitor = FaultMonitor(detection: config.faults)
    }

    /// One step on a batch: loss, gradients (through the JVP for TVM), AdamW, then the EMAs.
    public func train(x0: Tensor, cond: Conditioning = Conditioning()) -> StepStats {
        let leaves = student.leaves()
        let loss: Tensor, grads: [Tensor]
        // Figures for the log, read from the device together at the end of the step.
        var figures: [Tensor] = []
        switch config.method {
        case .tvm:
            let inputs = tvm.inputs(x0: x0, cond: cond, rng: &rng, rows: parallel?.rows(ofBatch: x0.shape[0]))
            let (terms, g) = tvm.termsAndGradients(network: net, student: leaves, teacher: teacher, inputs, wrt: leaves.all,
                                                   backward: parallel.map { p in { p.averagedGradients(of: $0, wrt: $1, initial: $2) } })
            (loss, grads) = (terms.mean, g)
            figures = withoutGrad {
                [terms.terminal.mean(), terms.flowMatching.mean(), Double(terms.finiteRows.count) - terms.finiteRows.sum(),
                 nonFiniteCount(terms.terminal), nonFiniteCount(terms.flowMatching)]
            }
        case .meanFlow:
            loss = MeanFlowObjective().loss(network: net, params: leaves, x0: x0, rng: &rng)
            grads = gradients(of: loss, wrt: leaves.all)
        case .flowMatching:
            loss = FlowMatchingObjective().loss(network: net, params: leaves, x0: x0, cond: cond, rng: &rng)
            grads = gradients(of: loss, wrt: leaves.all)
        }
        let norm = globalNorm(grads)
        step += 1
        // The checks need the figures before the update; they come from the device in one read.
        let dataFigures = withoutGrad { [nonFiniteCount(x0), x0.max(), x0.affine(-1, 0).max()] }
        var values = concat(([loss] + dataFigures + figures).map { $0.detached().reshaped([1]) }, axis: 0).doubles
        let tvmTerms = !figures.isEmpty
        if let parallel {
            // Every rank judges the step on the same figures. Each rank's loss and terms cover an equal share of
            // the batch, so their means average and the non-finite row counts (6-8) add up; the data figures
            // (1-3) describe the whole global batch, which every rank holds.
            values = parallel.averageAcrossRanks(values)
            for i in 6..<values.count { values[i] = (values[i] * Double(parallel.worldSize)).rounded() }
        }
        let measured = StepFigures(loss: values[0], terminal: tvmTerms ? values[4] : nil, flowMatching: tvmTerms ? values[5] : nil,
                                   gradNorm: norm, rows: x0.shape[0], nonFiniteRows: tvmTerms ? Int(values[6]) : 0,
                                   nonFiniteTerminalRows: tvmTerms ? Int(values[7]) : 0,
                                   nonFiniteFlowMatchingRows: tvmTerms ? Int(values[8]) : 0, nonFiniteData: Int(values[1]),
                                   dataMagnitude: Swift.max(values[2], values[3]))
        let fault = faultMonitor.inspect(measured, step: step)
        // A rejected step (a NaN gradient, a spike) would reach the weights, Adam's moments and the EMAs for
        // good: it updates nothing. Only zeroed rows with an otherwise finite step train, as officially.
        let skipped = fault.map { $0.action != .zeroedRows } ?? false
        if !skipped {
            optimizer.update(student, grads: grads, norm: norm)
            emaUpdate(teacher, toward: student, decay: config.emaTargetDecay)
            emaUpdate(ema, toward: student, decay: config.evalEMA.decay(step: step))
            for (set, schedule) in zip(extraEMAs, config.extraEMAs) {
                emaUpdate(set, toward: student, decay: schedule.decay(step: step))
            }
        }
        return StepStats(step: step, loss: measured.loss, terminal: measured.terminal, flowMatching: measured.flowMatching,
                         gradNorm: norm, nanRows: measured.nonFiniteRows, skipped: skipped, fault: fault)
    }

    /// Continues a checkpointed run: copies the saved values into the student, teacher and EMA sets (same
    /// names), restores the optimizer state, the step count and the random stream, so that `train` proceeds
    /// exactly as the run that saved them. `extraEMAs` has one entry per `config.extraEMAs` schedule: the saved
    /// set, or nil for a schedule the saved run did not keep, which then starts from the restored student.
    public func restore(step: Int, rng: RandomGenerator, student s: ParameterSet, teacher t: ParameterSet,
                        ema e: ParameterSet, extraEMAs x: [ParameterSet?], optimizerStep: Int, m: ParameterSet, v: ParameterSet) {
        precondition(x.count == extraEMAs.count, "one saved set (or nil) per extra EMA")
        for (dst, src) in [(student, s), (teacher, t), (ema, e)] + zip(extraEMAs, x).map({ ($0, $1 ?? s) }) {
            for name in dst.names { dst[name] = src[name].detached() }
        }
        optimizer.restore(step: optimizerStep, m: m, v: v)
        self.step = step
        self.rng = rng
    }

    /// n-step samples from `noise` with the evaluation EMA (or other weights).
    public func sample(noise: Tensor, steps: Int, cond: Conditioning = Conditioning(), weights: ParameterSet? = nil,
                       guidanceScale: Double = 1) -> Tensor {
        if config.method == .flowMatching {
            return sampleEuler(network: net, params: weights ?? ema, noise: noise, steps: steps, cond: cond, guidance: guidanceScale)
        }
        let kappa = config.guidance.scaledParameterization ? guidanceScale : 1
        return sampleFlowMap(network: net, params: weights ?? ema, noise: noise, steps: steps, cond: cond,
                             kappa: kappa)
    }
}
