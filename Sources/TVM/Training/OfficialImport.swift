import TensorCore
import NN
import Data
import Formats

/// The official code's files as this project's training checkpoints (`tvm import`, and read directly by
/// `tvm sample --checkpoint` and `tvm train --resume-from`).
///
/// A network pickle (`im256_w2.pkl`, a training snapshot) holds one network: it becomes the student, the EMA
/// target and the evaluation EMA alike, at step 0 with zero AdamW moments, so training from it is fine-tuning. A
/// `torch.save` training state (`training-state-*.pt`) maps whole: `net` -> student, `ema_target` -> teacher,
/// `ema` -> evaluation EMA, AdamW's moments and step (the run's step is AdamW's). Neither file has a random
/// stream or a data order; a run started from one uses its own.
extension TrainingCheckpoint {
    /// Whether `path` names an official file (by its extension: `.pkl`, `.pt`), which `importing` reads.
    public static func isOfficial(path: String) -> Bool {
        let lower = path.lowercased()
        return lower.hasSuffix(".pkl") || lower.hasSuffix(".pt")
    }

    /// Reads an official file as a checkpoint: with `network` (ema, net, ema_target), that one network of a
    /// pickle or training state; without, a `.pt` training state whole, or a pickle's `ema` (else the first of
    /// `net`, `ema_target` it holds). `parts`: the sets to make of one network (as `read(parts:)` reads them; a
    /// training state is read whole). Throws a one-line `ModelError` naming the file.
    public static func importing(path: String, network: String? = nil, parts: [Part] = Part.allCases,
                                 on device: Device = .default) throws -> TrainingCheckpoint {
        if let network, !OfficialNetwork.keys.contains(network) {
            throw ModelError("the network must be one of \(OfficialNetwork.keys.joined(separator: ", ")), got \(quoted(network))")
        }
        let file: TorchPickle
        do { file = try TorchPickle.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        if network == nil, file.root["optimizer_state"] != nil {
            return TrainingCheckpoint(official: try OfficialTrainingState(file, on: device), source: path)
        }
        let key = network ?? OfficialNetwork.keys.first { file.root[$0] != nil } ?? OfficialNetwork.keys[0]
        return TrainingCheckpoint(official: try OfficialNetwork(file, key: key, on: device), source: path, parts: parts)
    }

    /// One network as student, teacher and evaluation EMA (those of `parts`), before any step: the first of them
    /// holds the network's tensors, each further one a copy (training updates them in place); moments are zeros.
    init(official network: OfficialNetwork, source: String, parts: [Part]) {
        func copy(_ p: ParameterSet, values: (Tensor) -> Tensor) -> ParameterSet { ParameterSet(p.pairs.map { ($0.0, values($0.1)) }) }
        let p = network.parameters
        var sets: [Part: ParameterSet] = [:]
        for part in parts {
            switch part {
            case .adamM, .adamV: sets[part] = copy(p) { $0.zerosLike() }
            case .student, .teacher, .ema:
                let taken = sets.keys.contains { $0 != .adamM && $0 != .adamV }
                sets[part] = taken ? copy(p) { Tensor($0.floats, shape: $0.shape, on: $0.device) } : p
            }
        }
        self.init(step: 0, optimizerStep: 0, rng: RandomGenerator(seed: 0), samplerState: Self.noSamplerState,
                  faultMonitorState: nil, model: network.config,
                  training: Self.officialDescription(source: source, network: network.key, scaled: network.scaledParameterization,
                                                     model: network.config),
                  bestFID: nil, sets: sets, extraEMANames: [], extraEMAs: [:])
    }

    /// A training state, networks and optimizer, at AdamW's step; its settings are recorded in the training
    /// description under the names `tvm train` gives them, so a run with other settings notes the change.
    init(official state: OfficialTrainingState, source: String) {
        let description = Self.officialDescription(source: source, network: "net, ema_target, ema",
                                                   scaled: state.student.scaledParameterization, model: state.config)
        let optimizer: [(String, JSONValue)] = [("lr", .number(state.learningRate)), ("beta1", .number(state.beta1)),
                                                ("beta2", .number(state.beta2)), ("eps", .number(state.eps)),
                                                ("weight_decay", .number(state.weightDecay))]
        self.init(step: state.optimizerStep, optimizerStep: state.optimizerStep, rng: RandomGenerator(seed: 0),
                  samplerState: Self.noSamplerState, faultMonitorState: nil, model: state.config,
                  training: .object((description.object ?? []) + optimizer), bestFID: nil,
                  sets: [.student: state.student.parameters, .teacher: state.teacher.parameters, .ema: state.ema.parameters,
                         .adamM: state.adamM, .adamV: state.adamV],
                  extraEMANames: [], extraEMAs: [:])
    }

    /// An official file has no data order: this one fits no data set, so `--resume` of an imported checkpoint
    /// says so (`tvm train --resume-from` starts a data order of its own).
    static let noSamplerState = BatchSampler.State(count: 0, seed: 0, epoch: 0, position: 0).text

    static func officialDescription(source: String, network: String, scaled: Bool, model: DiTConfig) -> JSONValue {
        .object([("method", .string(Method.tvm.rawValue)), ("scaled_param", .bool(scaled)),
                 ("imported_from", .string(source)), ("network", .string(network))]
                + (officialLatentStatistics(model).map { latentRecord(mean: $0.mean, std: $0.std) } ?? []))
    }

    /// The latent statistics the official configs train with, for a network of the paper's two settings: SD-VAE
    /// latents (4 channels) of 32x32 are ImageNet 256x256 (`im256_*`), of 64x64 ImageNet 512x512 (`im512_*`); both
    /// normalised to mean 0 and std 1. An official file records no statistics, so these let `tvm sample --vae`
    /// decode the released networks; other shapes have none.
    static func officialLatentStatistics(_ model: DiTConfig) -> (mean: [Double], std: [Double])? {
        guard model.inChannels == 4 else { return nil }
        switch model.inputSize {
        case 32: return LatentNormalization.imageNet256Statistics
        case 64: return LatentNormalization.imageNet512Statistics
        default: return nil
        }
    }

    /// A latent run's normalisation as its training description records it (`tvm train --data LATENTS.zip`, and
    /// the official networks above); `tvm sample --vae` reads it back.
    public static func latentRecord(mean: [Double], std: [Double], finalMean: Double = 0, finalStd: Double = 1) -> [(String, JSONValue)] {
        [("latent_mean", .array(mean.map { .number($0) })), ("latent_std", .array(std.map { .number($0) })),
         ("latent_final_mean", .number(finalMean)), ("latent_final_std", .number(finalStd))]
    }
}
