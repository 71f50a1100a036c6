import TensorCore
import NN
import Distributed

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
        // Every set in one buffer of one layout: each update below is one pass (Optimizers.swift).
        student.pack()
        teacher = student.copy()
        ema = student.copy()
        // Checkpoints name the extra EMAs by their schedules.
        precondition(Set(config.extraEMAs.map(\.description)).count == config.extraEMAs.count, "extra EMA schedules must differ")
        let initial = student
        extraEMAs = config.extraEMAs.map { _ in initial.copy() }
        optimizer = AdamW(for: student, lr: config.lr, beta1: config.beta1, beta2: config.beta2, eps: config.eps,
                          weightDecay: config.weightDecay, maxGradNorm: config.maxGradNorm)
        optimizer.frozen = network.frozenParameterNames
        rng = RandomGenerator(seed: config.seed).split(2)
        tvm = TVMObjective(guidance: config.guidance, timeSampler: config.timeSampler)
        faultMonitor = FaultMonitor(detection: config.faults)
    }

    /// One step on a batch: loss, gradients (through the JVP for TVM), AdamW at the schedule's rate, then the EMAs.
    /// `data`: the batch's checks, measured on the host where it was built (nil: read `x0` to measure them).
    public func train(x0: Tensor, cond: Conditioning = Conditioning(), data: BatchFigures? = nil) -> StepStats {
        let data = data ?? BatchFigures(of: x0)
        let leaves = student.leaves()
        let loss: Tensor, grads: [Tensor]
        // TVM's term figures for the log and the fault checks, made while the terms are at hand.
        var termFigures: [Tensor] = []
        // TVM's removal of the excluded rows' flow-matching gradient, needed only when the figures count some.
        var removingExcludedRows: (([Tensor]) -> [Tensor])?
        switch config.method {
        case .tvm:
            let inputs = tvm.inputs(x0: x0, cond: cond, rng: &rng, rows: parallel?.rows(ofBatch: x0.shape[0]))
            let backward: TVMObjective.Backward? = parallel.map { p in { p.averagedGradients(of: $0, wrt: $1, initial: $2) } }
            let (terms, g) = tvm.termsAndGradientsKeepingExcludedRows(network: net, student: leaves, teacher: teacher, inputs,
                                                                      wrt: leaves.all, backward: backward)
            (loss, grads) = (terms.mean, g)
            termFigures = StepFigures.tensors(of: terms)
            removingExcludedRows = { [net, teacher, tvm] in
                tvm.removingExcludedRows(terms, from: $0, network: net, student: leaves, teacher: teacher, inputs, wrt: leaves.all,
                                         backward: backward)
            }
        case .meanFlow:
            let batch = config.meanFlow.batch(x0: x0, cond: cond, rng: &rng)
            loss = config.meanFlow.terms(network: net, params: leaves, batch).mean
            grads = gradients(of: loss, wrt: leaves.all)
        case .improvedMeanFlow:
            let batch = config.improvedMeanFlow.batch(x0: x0, cond: cond, rng: &rng)
            loss = config.improvedMeanFlow.terms(network: net, params: leaves, batch).mean
            grads = gradients(of: loss, wrt: leaves.all)
        case .flowMatching:
            loss = config.flowMatching.loss(network: net, params: leaves, x0: x0, cond: cond, rng: &rng)
            grads = gradients(of: loss, wrt: leaves.all)
        }
        var gathered = Gradients(grads, of: student)
        step += 1
        // The step's one read from the device.
        var measured = StepFigures(loss: loss, data: data, termFigures: termFigures, squaredGradNorm: gathered.squaredNorm(),
                                   parallel: parallel)
        if measured.excludedRows > 0, let removingExcludedRows {
            // Rare (a terminal term overflowed where its flow-matching term did not): one more pass, and one more read
            // for the corrected norm. The figures are the same on every rank, so every rank takes this branch.
            gathered = Gradients(removingExcludedRows(grads), of: student)
            measured.gradNorm = gathered.norm()
        }
        let fault = faultMonitor.inspect(measured, step: step)
        // A rejected step (a NaN gradient, a spike) would reach the weights, Adam's moments and the EMAs for
        // good: it updates nothing. Only zeroed rows with an otherwise finite step train, as officially.
        let skipped = fault.map { $0.action != .zeroedRows } ?? false
        // The schedule follows the training step, skipped steps included, so the rate is a function of the step
        // the log shows.
        let learningRate = config.learningRate(step: step)
        if !skipped {
            optimizer.lr = learningRate
            optimizer.update(student, gradients: gathered, norm: measured.gradNorm)
            emaUpdate(teacher, toward: student, decay: config.emaTargetDecay)
            emaUpdate(ema, toward: student, decay: config.evalEMA.decay(step: step))
            for (set, schedule) in zip(extraEMAs, config.extraEMAs) {
                emaUpdate(set, toward: student, decay: schedule.decay(step: step))
            }
        }
        return StepStats(step: step, loss: measured.loss, terminal: measured.terminal, flowMatching: measured.flowMatching,
                         gradNorm: measured.gradNorm, learningRate: learningRate, nanRows: measured.nonFiniteRows, skipped: skipped,
                         fault: fault)
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
            dst.pack()
        }
        optimizer.restore(step: optimizerStep, m: m, v: v)
        self.step = step
        self.rng = rng
    }

    /// n-step samples from `noise` with the evaluation EMA (or other weights), as the method samples.
    public func sample(noise: Tensor, steps: Int, cond: Conditioning = Conditioning(), weights: ParameterSet? = nil,
                       guidanceScale: Double = 1) -> Tensor {
        sampleModel(trainedBy: config.method, network: net, params: weights ?? ema, noise: noise, steps: steps, cond: cond,
                    guidance: guidanceScale, scaledParameterization: config.guidance.scaledParameterization)
    }
}
