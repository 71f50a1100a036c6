import TensorCore
import NN
import Data
import Formats

/// A complete image-training state in one safetensors file: student (`student.<official name>`), evaluation
/// EMA (`ema.`), EMA target (`teacher.`), AdamW moments (`adam_m.`, `adam_v.`), the extra evaluation EMAs
/// (`ema_<schedule>.`, e.g. `ema_power:32.`, listed in the metadata `extra_emas`), and metadata: the step, the
/// optimizer step, the random stream (seed and offset), the batch-sampler state, the model and training
/// configurations (JSON), the best FID of the run so far (when it measures FID), the format version and a CRC-32
/// of all tensor bytes. Written atomically.
public struct TrainingCheckpoint {
    public static let format = "tvm-training-checkpoint"
    public static let formatVersion = 1

    /// The parameter sets a file holds, by prefix.
    public enum Part: String, CaseIterable, Sendable {
        case student, teacher, ema
        case adamM = "adam_m"
        case adamV = "adam_v"
        public var prefix: String { rawValue + "." }
    }

    public var step: Int
    public var optimizerStep: Int
    public var rng: RandomGenerator
    public var samplerState: String
    /// The fault checks' history (`FaultMonitor.state`); nil in checkpoints written before it was saved.
    public var faultMonitorState: String?
    public var model: DiTConfig
    public var training: JSONValue
    /// The lowest FID the run measured up to this step (nil: none measured, or a checkpoint before FID tracking).
    public var bestFID: FIDMeasurement?
    /// The sets read or to be written; `read(parts:)` can leave some out (empty sets).
    public var sets: [Part: ParameterSet]
    /// The names (`EMASchedule.description`) of the extra evaluation EMAs the file keeps, in its order.
    public var extraEMANames: [String]
    /// The extra EMA sets read or to be written, by name; `read(extraEMAs:)` can leave some out.
    public var extraEMAs: [String: ParameterSet]

    public init(trainer: Trainer<DiT>, samplerState: BatchSampler.State, training: JSONValue, bestFID: FIDMeasurement? = nil) {
        step = trainer.step
        optimizerStep = trainer.optimizer.step
        rng = trainer.rng
        self.samplerState = samplerState.text
        faultMonitorState = trainer.faultMonitor.state
        model = trainer.net.config
        self.training = training
        self.bestFID = bestFID
        sets = [.student: trainer.student, .teacher: trainer.teacher, .ema: trainer.ema,
                .adamM: trainer.optimizer.m, .adamV: trainer.optimizer.v]
        extraEMANames = trainer.config.extraEMAs.map(\.description)
        extraEMAs = Dictionary(uniqueKeysWithValues: zip(extraEMANames, trainer.extraEMAs))
    }

    public subscript(part: Part) -> ParameterSet { sets[part] ?? ParameterSet() }

    static func extraEMAPrefix(_ name: String) -> String { "ema_\(name)." }

    /// Writes the file atomically: a kill at any moment leaves the previous file at `path` intact.
    public func write(path: String) throws {
        var tensors: [NamedArray] = []
        for part in Part.allCases {
            guard let set = sets[part] else { continue }
            tensors += Checkpoint.arrays(set, prefix: part.prefix)
        }
        for name in extraEMANames {
            guard let set = extraEMAs[name] else { continue }
            tensors += Checkpoint.arrays(set, prefix: Self.extraEMAPrefix(name))
        }
        var crc: UInt32 = 0
        for t in tensors { crc = Checksum.crc32(t.bytes, previous: crc) }
        let metadata: [(String, String)] = [
            ("format", Self.format), ("format_version", "\(Self.formatVersion)"),
            ("step", "\(step)"), ("optimizer_step", "\(optimizerStep)"),
            ("rng_seed", "\(rng.seed)"), ("rng_offset", "\(rng.offset)"),
            ("sampler_state", samplerState),
            ("model_config", model.json.serialized()), ("training_config", training.serialized()),
            ("data_crc32", "\(crc)"),
        ] + (faultMonitorState.map { [("fault_monitor", $0)] } ?? [])
          + (extraEMANames.isEmpty ? [] : [("extra_emas", extraEMANames.joined(separator: ","))])
          + (bestFID.map { [("best_fid", $0.json.serialized())] } ?? [])
        do {
            try SafetensorsFile(metadata: metadata, tensors: tensors).write(path: path)
        } catch let e as FormatError {
            throw ModelError(e.message)
        }
    }

    /// Reads and checks a checkpoint: format and version, the CRC of the tensor data, and (with `expecting`)
    /// that its model configuration equals this run's. `extraEMAs`: the extra EMA sets to read (nil: all the
    /// file keeps). Throws a one-line `ModelError` naming the problem.
    public static func read(path: String, expecting: DiTConfig? = nil, parts: [Part] = Part.allCases,
                            extraEMAs wanted: [String]? = nil, on device: Device = .default) throws -> TrainingCheckpoint {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError {
            throw ModelError(e.message.hasPrefix(path) ? e.message : "\(path): \(e.message)")
        }
        func fail(_ s: String) -> ModelError { ModelError("\(path): \(s)") }
        guard file.metadata("format") == format else {
            throw fail("not a TerminalVelocity training checkpoint (no \"format\": \"\(format)\" metadata)")
        }
        guard let versionText = file.metadata("format_version"), let version = Int(versionText) else {
            throw fail("training checkpoint without a valid format_version")
        }
        guard version == formatVersion else {
            throw fail("training checkpoint format version \(version) is not supported (this build reads version \(formatVersion))")
        }
        func int<T: FixedWidthInteger>(_ key: String, _: T.Type) throws -> T {
            guard let s = file.metadata(key), let v = T(s) else { throw fail("missing or invalid metadata \"\(key)\"") }
            return v
        }
        var crc: UInt32 = 0
        for t in file.tensors { crc = Checksum.crc32(t.bytes, previous: crc) }
        guard try int("data_crc32", UInt32.self) == crc else {
            throw fail("tensor data is corrupted (CRC-32 mismatch)")
        }
        let model: DiTConfig
        do {
            guard let text = file.metadata("model_config") else { throw ModelError("missing metadata \"model_config\"") }
            model = try DiTConfig(json: try JSONValue.parse(text))
        } catch let e as ModelError { throw fail(e.message) } catch { throw fail("invalid model_config: \(error)") }
        if let expecting, let diff = model.firstDifference(from: expecting) {
            throw fail("checkpoint model does not match this run (checkpoint vs run: \(diff))")
        }
        let training: JSONValue
        do { training = try JSONValue.parse(file.metadata("training_config") ?? "") } catch {
            throw fail("missing or invalid metadata \"training_config\"")
        }
        guard let samplerState = file.metadata("sampler_state") else { throw fail("missing metadata \"sampler_state\"") }
        let net = try DiT(model)
        var sets: [Part: ParameterSet] = [:]
        for part in parts {
            sets[part] = try net.parameters(from: file, prefix: part.prefix, source: path, on: device)
        }
        let extraNames = file.metadata("extra_emas").map { $0.split(separator: ",").map(String.init) } ?? []
        var extraSets: [String: ParameterSet] = [:]
        for name in wanted ?? extraNames {
            guard extraNames.contains(name) else {
                throw fail("no extra EMA \"\(name)\" in this checkpoint (it keeps \(extraNames.isEmpty ? "none" : extraNames.joined(separator: ", ")))")
            }
            extraSets[name] = try net.parameters(from: file, prefix: extraEMAPrefix(name), source: path, on: device)
        }
        let monitor = file.metadata("fault_monitor")
        if let monitor, FaultMonitor(detection: FaultDetection(), state: monitor) == nil {
            throw fail("invalid metadata \"fault_monitor\"")
        }
        var bestFID: FIDMeasurement?
        if let text = file.metadata("best_fid") {
            guard let json = try? JSONValue.parse(text), let best = FIDMeasurement(json: json) else { throw fail("invalid metadata \"best_fid\"") }
            bestFID = best
        }
        return TrainingCheckpoint(step: try int("step", Int.self), optimizerStep: try int("optimizer_step", Int.self),
                                  rng: RandomGenerator(seed: try int("rng_seed", UInt64.self),
                                                       offset: try int("rng_offset", UInt64.self)),
                                  samplerState: samplerState, faultMonitorState: monitor, model: model, training: training,
                                  bestFID: bestFID, sets: sets, extraEMANames: extraNames, extraEMAs: extraSets)
    }

    init(step: Int, optimizerStep: Int, rng: RandomGenerator, samplerState: String, faultMonitorState: String?,
         model: DiTConfig, training: JSONValue, bestFID: FIDMeasurement?, sets: [Part: ParameterSet], extraEMANames: [String],
         extraEMAs: [String: ParameterSet]) {
        self.step = step
        self.optimizerStep = optimizerStep
        self.rng = rng
        self.samplerState = samplerState
        self.faultMonitorState = faultMonitorState
        self.model = model
        self.training = training
        self.bestFID = bestFID
        self.sets = sets
        self.extraEMANames = extraEMANames
        self.extraEMAs = extraEMAs
    }

    /// The batch sampler as it was, for a data set of `count` items.
    public func sampler(count: Int) throws -> BatchSampler {
        do {
            return try BatchSampler(count: count, state: try BatchSampler.State(text: samplerState))
        } catch let e as DataError {
            throw ModelError("checkpoint: \(e)")
        }
    }

    /// Puts every saved value back into `trainer` (which must have this model), so that training continues
    /// exactly as the run that wrote the checkpoint would have.
    public func restore(into trainer: Trainer<DiT>) throws {
        if let diff = model.firstDifference(from: trainer.net.config) {
            throw ModelError("checkpoint model does not match this run (checkpoint vs run: \(diff))")
        }
        for part in Part.allCases where sets[part] == nil {
            throw ModelError("checkpoint was read without its \(part.rawValue) parameters; cannot resume")
        }
        // An extra EMA this run keeps and the checkpoint does not starts from the student (the options note says so).
        let extras = try trainer.config.extraEMAs.map { schedule -> ParameterSet? in
            let name = schedule.description
            guard extraEMANames.contains(name) else { return nil }
            guard let set = extraEMAs[name] else { throw ModelError("checkpoint was read without its extra EMA \(name); cannot resume") }
            return set
        }
        trainer.restore(step: step, rng: rng, student: self[.student], teacher: self[.teacher], ema: self[.ema],
                        extraEMAs: extras, optimizerStep: optimizerStep, m: self[.adamM], v: self[.adamV])
        // The history under this run's detection settings (read() has checked that the text parses).
        let detection = trainer.config.faults
        trainer.faultMonitor = faultMonitorState.flatMap { FaultMonitor(detection: detection, state: $0) }
            ?? FaultMonitor(detection: detection)
    }
}
