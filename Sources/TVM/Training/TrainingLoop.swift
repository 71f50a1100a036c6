import TensorCore
import NN
import Data
import Distributed
import Formats

/// What a training loop tells the person running it (the command line prints the notes and draws the progress).
public protocol TrainingObserver: AnyObject {
    /// A line about the run: resumption, replica checks, faults that did not stop it, the files written.
    func note(_ line: String)
    /// The loop starts stepping from `step` (0, or the step resumed from) toward `steps` (nil: until its time
    /// budget runs out), for at most `seconds` (its time budget; nil: none).
    func starting(at step: Int, steps: Int?, seconds: Double?)
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
/// writes its options to `config.json`, steps until the step count or the time budget, logs every step to
/// `metrics.jsonl` and TensorBoard event files (`RunLog`), measures FID when asked (`FIDTracking`, keeping the best
/// checkpoint), and at every snapshot (every `snapshotEvery` steps and at the end) checks that the data-parallel
/// replicas agree, then writes the checkpoint (atomically) and the sample grids. A fault under the `stop` policy
/// ends it before the faulty step changes anything, the last checkpoint kept. In a data-parallel run rank 0 alone
/// reads the checkpoint, measures FID and writes files.
public final class TrainingLoop {
    public struct Plan {
        public var directory: String
        /// Continue from the directory's checkpoint (false: the directory must hold none).
        public var resume = false
        /// The state a fresh run starts from (`tvm train --resume-from`): its networks, optimizer and step; the
        /// data order and random stream are this run's own.
        public var initial: TrainingCheckpoint?
        /// The step to stop at; nil: until the time budget runs out.
        public var steps: Int?
        public var snapshotEvery = 1000
        /// Seconds this invocation may train, checked before every step.
        public var timeBudget: Double?
        /// Random horizontal flips of the training images.
        public var flip = false
        /// The guidance scale of the sample grids.
        public var sampleGuidance = 2.0
        /// Where that guidance acts, for a DiT with the interval input (iMF); nil: everywhere.
        public var sampleGuidanceInterval: ClosedRange<Double>?
        /// Samples to images in [-1, 1] for the grids (a latent run's VAE decoder); nil: the samples are images.
        public var decodeSamples: ((Tensor) throws -> Tensor)?
        /// How many of the latest snapshots keep their sample grids, besides the first snapshot (nil: all).
        public var keepGrids: Int?
        /// The run's options as the checkpoint records them; a resumed run names the ones that changed.
        public var description = JSONValue.object([])
        /// The options that repeat the run (`tvm train --config DIR/config.json`): written to `config.json` at the
        /// start and logged to TensorBoard (nil: neither).
        public var options: JSONValue?

        public init(directory: String) { self.directory = directory }
    }

    public let trainer: Trainer<DiT>
    public let data: ImageDataset
    public let plan: Plan
    private(set) var sampler: BatchSampler
    public var checkpointPath: String { plan.directory + "/checkpoint.safetensors" }
    public var metricsPath: String { plan.directory + "/metrics.jsonl" }
    public var configPath: String { plan.directory + "/config.json" }
    /// The checkpoint with the lowest FID so far (`FIDTracking.keepBest`).
    public var bestCheckpointPath: String { plan.directory + "/checkpoint_best.safetensors" }
    let grids: SampleGrids
    let observer: TrainingObserver
    let clock: () -> Double
    /// The step of the last checkpoint written or resumed from by this process.
    private(set) var savedStep: Int?
    /// The sample grids written, in order.
    private(set) var written: [String] = []
    /// FID while training (nil: none); set before `run`, after `start` (making the measure may take a while,
    /// and `start` finds out first whether the run can go on at all).
    public var fid: FIDTracking?
    /// The lowest FID at the first FID NFE so far, with its step; checkpoints carry it across a resume.
    private(set) var bestFID: FIDMeasurement?
    /// Asked before every step whether to stop now (SIGINT or SIGTERM): the run then takes its last snapshot
    /// (checkpoint and grids, no FID: a preempted job has seconds) and `run` returns with `interrupted` set.
    public var stopRequested: () -> Bool = { false }
    /// Whether the last `run` ended because `stopRequested` said so.
    public private(set) var interrupted = false

    var parallel: DataParallel? { trainer.parallel }
    public var isRoot: Bool { (parallel?.rank ?? 0) == 0 }

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
        grids = SampleGrids(data: data, seed: config.seed, guidance: plan.sampleGuidance, interval: plan.sampleGuidanceInterval)
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
            bestFID = ck.bestFID
        } else if isRoot {
            try truncateLog(atStep: 0)
            if let initial = plan.initial {
                let rng = trainer.rng
                try initial.restore(into: trainer)
                trainer.rng = rng
                observer.note("started from the given checkpoint's networks and optimizer state at step \(initial.step)")
                saved = initial.training
            }
        }
        if isRoot, let options = plan.options {
            try AtomicFile.write(path: configPath, bytes: Array((options.serialized(pretty: true) + "\n").utf8))
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
        let log = isRoot ? try RunLog(directory: plan.directory, metricsPath: metricsPath, after: trainer.step,
                                      batch: trainer.config.batch, options: plan.options) : nil
        let startStep = trainer.step, start = clock()
        observer.starting(at: startStep, steps: plan.steps, seconds: plan.timeBudget)
        var lastSnapshot = -1, lastFID = -1
        if let best = bestFID, let fid, best.nfe != fid.nfes[0] {
            observer.note("note: the checkpoint's best FID was measured at \(best.nfe) NFE and this run ranks by \(fid.nfes[0]) NFE; "
                          + "the best is chosen afresh")
            bestFID = nil
        }
        interrupted = false
        while trainer.step < plan.steps ?? Int.max {
            // The ranks stop together (each has its own clock, and may get a signal before the others).
            interrupted = stopRequested()
            let stop = interrupted || plan.timeBudget.map { clock() - start >= $0 } ?? false
            if parallel?.anyRank(stop) ?? stop { break }
            let stats = imageTrainingStep(trainer, data: data, sampler: &sampler, flip: plan.flip)
            let elapsed = clock() - start
            let rate = Double(stats.step - startStep) / max(elapsed, 1e-9)
            observer.stepped(stats, rate: rate, elapsed: elapsed)
            try log?.step(stats, rate: rate, elapsed: elapsed)
            if let fault = stats.fault {
                guard !stats.stopped else { throw TrainingLoopError.stoppedByFault(fault, kept: kept) }
                observer.note(fault.description)
            }
            // FID before the snapshot, so that its checkpoint knows the best FID up to its step.
            if let fid, stats.step % fid.every == 0 {
                try measureFID(fid, log: log)
                lastFID = stats.step
            }
            if stats.step % plan.snapshotEvery == 0 {
                try snapshot(log: log)
                lastSnapshot = stats.step
            }
        }
        if trainer.step > startStep {
            if let fid, lastFID != trainer.step, !interrupted { try measureFID(fid, log: log) }
            if lastSnapshot != trainer.step { try snapshot(log: log) }
        }
        try log?.close()
        guard isRoot else { return }
        observer.note("step \(trainer.step): wrote \(metricsPath), \(checkpointPath)"
                      + (written.isEmpty ? "" : " and \(written.count) sample grids (last \(written.last!))"))
    }

    /// The replica check, then the checkpoint and the grids: if the disk is full, the state matters more than
    /// the pictures.
    func snapshot(log: RunLog?) throws {
        try checkReplicas()
        guard isRoot else { return }
        try saveCheckpoint(to: checkpointPath)
        savedStep = trainer.step
        let drawn = try grids.write(trainer, into: plan.directory, decode: plan.decodeSamples)
        written += drawn.map(\.path)
        try log?.grids(drawn, step: trainer.step)
        if let keep = plan.keepGrids { _ = try SampleGrids.prune(in: plan.directory, keepingLast: keep) }
    }

    /// The complete training state, atomically; a failure names the checkpoint that is intact.
    func saveCheckpoint(to path: String) throws {
        do {
            try TrainingCheckpoint(trainer: trainer, samplerState: sampler.state, training: plan.description, bestFID: bestFID)
                .write(path: path)
        } catch let e as ModelError {
            throw TrainingLoopError.checkpointNotSaved(step: trainer.step, kept: kept, reason: e.message)
        }
    }

    /// Rank 0 measures the FID at every NFE of `fid`, logs it, and keeps the checkpoint of a new best.
    func measureFID(_ fid: FIDTracking, log: RunLog?) throws {
        guard isRoot else { return }
        let start = clock()
        let measurements = try fid.nfes.map { FIDMeasurement(step: trainer.step, nfe: $0, fid: try fid.measure(trainer, $0)) }
        try log?.fid(measurements, seconds: clock() - start)
        let figures = measurements.map { "\(short($0.fid)) at \($0.nfe) NFE" }.joined(separator: ", ")
        guard fid.improves(measurements[0], on: bestFID) else {
            observer.note("step \(trainer.step): FID \(figures) (best \(bestFID.map { "\(short($0.fid)) at step \($0.step)" } ?? "none finite"))")
            return
        }
        bestFID = measurements[0]
        guard fid.keepBest else {
            observer.note("step \(trainer.step): FID \(figures), the best so far")
            return
        }
        try saveCheckpoint(to: bestCheckpointPath)
        observer.note("step \(trainer.step): FID \(figures), the best so far: wrote \(bestCheckpointPath)")
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
    let (values, labels) = data.batchValues(indices: indices, flip: flip, rng: &trainer.rng)
    // The data checks are made here, on the host values: no device reduction and no read for them.
    let figures = BatchFigures(rows: indices.count, values: values)
    let images = Tensor(values, shape: [indices.count, data.channels, data.height, data.width], on: device)
    let cond = trainer.config.guidance.conditioning(labels: labels, classes: data.classes, rng: &trainer.rng, on: device)
    return trainer.train(x0: images, cond: cond, data: figures)
}
