import TensorCore
import NN
import Data
import Distributed
import Formats

/// What a training loop tells the person running it (the command line prints the notes and draws the progress).
public protocol TrainingObserver: AnyObject {
    /// A line about the run: resumption, replica checks, faults that did not stop it, the files written.
    func note(_ line: String)
    /// The loop starts stepping toward `steps` (nil: until its time budget runs out).
    func starting(steps: Int?)
    /// After every step: its figures, the steps per second of this invocation and the seconds it has run.
    func stepped(_ stats: StepStats, rate: Double, elapsed: Double)
}

/// Why a training run stopped or could not start; every case leaves the files already written intact.
public enum TrainingLoopError: Error, CustomStringConvertible {
    /// A fresh run was asked for in a directory that holds another run's checkpoint.
    case runExists(directory: String, checkpoint: String)
    /// A resumed run found no checkpoint.
    case noCheckpoint(String)
    /// The checkpoint could not be written (a full disk); `kept` says which one is intact.
    case checkpointNotSaved(step: Int, kept: String, reason: String)
    /// A step found a numerical fault under the `stop` policy, before it updated anything.
    case stoppedByFault(NumericalFault, kept: String)

    public var description: String {
        switch self {
        case .runExists(let directory, let checkpoint): return "\(directory) already holds a training run (\(checkpoint))"
        case .noCheckpoint(let path): return "no checkpoint at \(path)"
        case .checkpointNotSaved(let step, let kept, let reason):
            return "step \(step): could not save the checkpoint, so the run stops (\(kept)): \(reason)"
        case .stoppedByFault(let fault, let kept): return "\(fault); \(kept)"
        }
    }
}

/// A run of image training in a directory: it starts afresh or resumes from the directory's checkpoint exactly,
/// steps until the step count or the time budget, logs every step to `metrics.jsonl`, and at every snapshot (every
/// `snapshotEvery` steps and at the end) checks that the data-parallel replicas agree, then writes the checkpoint
/// (atomically) and the sample grids. A fault under the `stop` policy ends it before the faulty step changes
/// anything, the last checkpoint kept. In a data-parallel run rank 0 alone reads the checkpoint and writes files.
public final class TrainingLoop {
    public struct Plan {
        public var directory: String
        /// Continue from the directory's checkpoint (false: the directory must hold none).
        public var resume = false
        /// The step to stop at; nil: until the time budget runs out.
        public var steps: Int?
        public var snapshotEvery = 1000
        /// Seconds this invocation may train, checked before every step.
        public var timeBudget: Double?
        /// Random horizontal flips of the training images.
        public var flip = false
        /// The guidance scale of the sample grids.
        public var sampleGuidance = 2.0
        /// The run's options as the checkpoint records them; a resumed run names the ones that changed.
        public var description = JSONValue.object([])

        public init(directory: String) { self.directory = directory }
    }

    public let trainer: Trainer<DiT>
    public let data: ImageDataset
    public let plan: Plan
    private(set) var sampler: BatchSampler
    public var checkpointPath: String { plan.directory + "/checkpoint.safetensors" }
    public var metricsPath: String { plan.directory + "/metrics.jsonl" }
    let grids: SampleGrids
    let observer: TrainingObserver
    let clock: () -> Double
    /// The step of the last checkpoint written or resumed from by this process.
    private(set) var savedStep: Int?
    /// The sample grids written, in order.
    private(set) var written: [String] = []

    var parallel: DataParallel? { trainer.parallel }
    var isRoot: Bool { (parallel?.rank ?? 0) == 0 }

    /// Readies `plan.directory` (a fresh run never overwrites another run's checkpoint; temporary files of an
    /// interrupted write are removed) and makes the trainer, data-parallel over `parallel` when given. `clock`
    /// gives seconds, for the time budget and the rates.
    public init(model: DiTConfig, config: TrainConfig, data: ImageDataset, plan: Plan, parallel: DataParallel? = nil,
                observer: TrainingObserver, clock: @escaping () -> Double) throws {
        self.data = data
        self.plan = plan
        self.observer = observer
        self.clock = clock
        let checkpoint = plan.directory + "/checkpoint.safetensors"
        // A fresh run would overwrite another run's log at once and its checkpoint at the first save.
        if !plan.resume && FileSystem.exists(checkpoint) { throw TrainingLoopError.runExists(directory: plan.directory, checkpoint: checkpoint) }
        try FileSystem.makeDirectories(plan.directory)
        // Writers killed mid-write (a crash, SIGKILL) leave NAME.tmp-PID files; the finished files are intact.
        let stale = AtomicFile.removeStaleTemporaries(in: plan.directory)
        if !stale.isEmpty {
            observer.note("removed \(stale.count) unfinished temporary file\(stale.count == 1 ? "" : "s") left by an interrupted run: "
                          + stale.joined(separator: ", "))
        }
        trainer = Trainer(network: try DiT(model), config: config)
        trainer.parallel = parallel
        sampler = BatchSampler(count: data.count, seed: config.seed &+ 0x5EED)
        grids = SampleGrids(data: data, seed: config.seed, guidance: plan.sampleGuidance)
    }

    /// Resumes from the checkpoint (or clears the log of a fresh run), then gives every rank rank 0's state.
    /// Returns false when the run is already at its step count.
    public func start() throws -> Bool {
        var saved: JSONValue?
        if plan.resume && isRoot {
            guard FileSystem.exists(checkpointPath) else { throw TrainingLoopError.noCheckpoint(checkpointPath) }
            let ck = try TrainingCheckpoint.read(path: checkpointPath, expecting: trainer.net.config)
            try ck.restore(into: trainer)
            sampler = try ck.sampler(count: data.count)
            try truncateLog(atStep: ck.step)
            observer.note("resumed from \(checkpointPath) at step \(ck.step)")
            savedStep = ck.step
            saved = ck.training
        } else if isRoot {
            try truncateLog(atStep: 0)
        }
        if let parallel {
            try onRank(parallel.rank) { try trainer.synchronize(sampler: &sampler, over: parallel.communicator) }
            try checkReplicas()
        }
        if let steps = plan.steps, trainer.step >= steps {
            observer.note("already at step \(trainer.step) of \(steps); nothing to do")
            return false
        }
        if let saved = saved?.object {
            // Other options are allowed (e.g. a new learning rate), but the run then differs from an uninterrupted one.
            let changed = (plan.description.object ?? []).compactMap { key, value -> String? in
                guard let old = saved.first(where: { $0.0 == key })?.1, old != value else { return nil }
                return "\(key) \(old.serialized()) -> \(value.serialized())"
            }
            if !changed.isEmpty { observer.note("note: training options differ from the checkpoint's: " + changed.joined(separator: ", ")) }
        }
        return true
    }

    /// Trains until the step count or the time budget, then takes the last snapshot.
    public func run() throws {
        let log = isRoot ? try LineWriter(path: metricsPath, append: true) : nil
        let startStep = trainer.step, start = clock()
        observer.starting(steps: plan.steps)
        var lastSnapshot = -1
        while trainer.step < plan.steps ?? Int.max {
            // The ranks stop together (each has its own clock).
            if let budget = plan.timeBudget {
                let over = clock() - start >= budget
                if parallel?.anyRank(over) ?? over { break }
            }
            let stats = imageTrainingStep(trainer, data: data, sampler: &sampler, flip: plan.flip)
            let elapsed = clock() - start
            let rate = Double(stats.step - startStep) / max(elapsed, 1e-9)
            observer.stepped(stats, rate: rate, elapsed: elapsed)
            try log?.write(Self.logLine(stats, rate: rate, elapsed: elapsed).serialized())
            if let fault = stats.fault {
                guard !stats.stopped else { throw TrainingLoopError.stoppedByFault(fault, kept: kept) }
                observer.note(fault.description)
            }
            if stats.step % plan.snapshotEvery == 0 {
                try snapshot()
                lastSnapshot = stats.step
            }
        }
        if lastSnapshot != trainer.step && trainer.step > startStep { try snapshot() }
        guard isRoot else { return }
        observer.note("step \(trainer.step): wrote \(metricsPath), \(checkpointPath)"
                      + (written.isEmpty ? "" : " and \(written.count) sample grids (last \(written.last!))"))
    }

    /// One line of `metrics.jsonl`.
    static func logLine(_ stats: StepStats, rate: Double, elapsed: Double) -> JSONValue {
        var fields: [(String, JSONValue)] = [("step", .number(Double(stats.step))), ("loss", .number(stats.loss))]
        if let t = stats.terminal { fields.append(("terminal", .number(t))) }
        if let f = stats.flowMatching { fields.append(("fm", .number(f))) }
        fields += [("grad_norm", .number(stats.gradNorm)), ("it/s", .number(rate)), ("elapsed", .number(elapsed))]
        if stats.nanRows > 0 { fields.append(("nan_rows", .number(Double(stats.nanRows)))) }
        if stats.skipped { fields.append(("skipped", .bool(true))) }
        if let fault = stats.fault { fields.append(("fault", .string(fault.description))) }
        return .object(fields)
    }

    /// The replica check, then the checkpoint and the grids: if the disk is full, the state matters more than
    /// the pictures.
    func snapshot() throws {
        try checkReplicas()
        guard isRoot else { return }
        do {
            try TrainingCheckpoint(trainer: trainer, samplerState: sampler.state, training: plan.description).write(path: checkpointPath)
        } catch let e as ModelError {
            throw TrainingLoopError.checkpointNotSaved(step: trainer.step, kept: kept, reason: e.message)
        }
        savedStep = trainer.step
        written += try grids.write(trainer, into: plan.directory)
    }

    /// Compares the ranks' weights and training state; rank 0 notes the hashes.
    func checkReplicas() throws {
        guard let parallel else { return }
        observer.note(try onRank(parallel.rank) { try trainer.checkReplicas(sampler: sampler, over: parallel.communicator) })
    }

    /// Which checkpoint a run that stops now leaves behind.
    var kept: String {
        savedStep.map { "the checkpoint of step \($0) in \(checkpointPath) is intact" } ?? "no checkpoint was saved yet"
    }

    /// Keeps the lines of the log whose "step" is at most `step` (a resumed run writes the rest again).
    func truncateLog(atStep step: Int) throws {
        guard FileSystem.exists(metricsPath) else { return }
        let bytes = try AtomicFile.read(path: metricsPath)
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { line in
            guard let v = try? JSONValue.parse(String(line)), let s = v["step"]?.int else { return false }
            return s <= step
        }
        try AtomicFile.write(path: metricsPath, bytes: Array(lines.map { $0 + "\n" }.joined().utf8))
    }
}

/// One training step on images: the next batch from `sampler`, optional flips and the guidance
/// conditioning drawn from the trainer's random stream, then `Trainer.train`. Everything it draws lives
/// in (trainer, sampler) state, so a run restored from a `TrainingCheckpoint` continues exactly.
public func imageTrainingStep(_ trainer: Trainer<DiT>, data: ImageDataset, sampler: inout BatchSampler,
                              flip: Bool, on device: Device = .default) -> StepStats {
    let indices = sampler.next(trainer.config.batch)
    let batch = data.batch(indices: indices, flip: flip, rng: &trainer.rng, on: device)
    let cond = trainer.config.guidance.conditioning(labels: batch.labels, classes: data.classes,
                                                    rng: &trainer.rng, on: device)
    return trainer.train(x0: batch.images, cond: cond)
}
