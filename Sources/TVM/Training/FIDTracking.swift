import TensorCore
import NN
import Data
import Eval
import Formats

/// One FID measurement of a run: at which step, with how many network evaluations, and the value.
public struct FIDMeasurement: Equatable, Sendable {
    public var step: Int
    public var nfe: Int
    public var fid: Double

    public init(step: Int, nfe: Int, fid: Double) {
        self.step = step
        self.nfe = nfe
        self.fid = fid
    }

    /// {"step": ..., "nfe": ..., "fid": ...}, as checkpoints record the best one.
    var json: JSONValue {
        .object([("step", .number(Double(step))), ("nfe", .number(Double(nfe))), ("fid", .number(fid))])
    }

    init?(json: JSONValue) {
        guard let step = json["step"]?.int, let nfe = json["nfe"]?.int, let fid = json["fid"]?.double, fid.isFinite else { return nil }
        self.init(step: step, nfe: nfe, fid: fid)
    }
}

/// FID while training: every `every` steps and after the last step, the FID of the evaluation EMA at each of
/// `nfes`, logged with the step's figures; with `keepBest`, the checkpoint with the lowest FID at the first of
/// `nfes` is kept beside the latest one.
public struct FIDTracking {
    public var every: Int
    public var nfes: [Int]
    public var keepBest: Bool
    /// The FID of the trainer's evaluation EMA at an NFE (`TrainingFID.measure` in `tvm train`; tests inject a
    /// stand-in, so the schedule, the log and the best checkpoint are tested without the Inception network).
    public var measure: (Trainer<DiT>, _ nfe: Int) throws -> Double

    public init(every: Int, nfes: [Int], keepBest: Bool, measure: @escaping (Trainer<DiT>, _ nfe: Int) throws -> Double) {
        precondition(every >= 1 && !nfes.isEmpty, "FID needs a positive interval and at least one NFE")
        self.every = every
        self.nfes = nfes
        self.keepBest = keepBest
        self.measure = measure
    }

    /// Whether `measurement` beats `best` (the first NFE decides; a non-finite FID never wins).
    func improves(_ measurement: FIDMeasurement, on best: FIDMeasurement?) -> Bool {
        guard measurement.fid.isFinite, measurement.nfe == nfes[0] else { return false }
        return best.map { measurement.fid < $0.fid } ?? true
    }
}

/// The FID of a run's evaluation EMA, measured as `tvm fid` measures it: `samples` images at a given NFE, guidance
/// `guidance`, from noise that is the same at every measurement (so successive FIDs differ by the model alone, and a
/// resumed run measures what the uninterrupted one did), as 8-bit pixels through Inception-v3, against the
/// reference statistics (the training images', or those `--fid-dataset` / `--fid-ref` name).
public struct TrainingFID {
    /// How the samples' classes are chosen.
    public enum Labels: Sendable {
        /// The classes in turn (0, 1, ..., K-1, 0, ...): every class as often as the others.
        case inTurn
        /// Drawn uniformly at random, all before the noise, as `tvm sample --classes random` draws them (the official
        /// FID protocol): the measurement's samples are those of `tvm sample --seed <the run's seed + fidSeedOffset>
        /// --n <samples> --classes random`.
        case uniform
    }

    /// What the measurement's random stream adds to the run's seed.
    public static let fidSeedOffset: UInt64 = 0xF1D5EED

    public let extractor: FIDFeatureExtractor
    public let reference: ReferenceStatistics
    public let samples: Int
    let classes: Int, channels: Int, side: Int
    let seed: UInt64
    let guidance: Double
    let labels: Labels
    /// A latent run's samples to 8-bit images (the VAE decoder and the official conversion); nil: the samples are
    /// images in [-1, 1], rounded to 8 bits.
    let decode: ((Tensor) throws -> ByteImages)?
    let interval: ClosedRange<Double>?

    /// `seed` is the run's; `data` gives the sample shape and the classes; `interval` where the guidance acts (nil:
    /// everywhere).
    public init(extractor: FIDFeatureExtractor, reference: ReferenceStatistics, data: ImageDataset, samples: Int, seed: UInt64,
                guidance: Double, interval: ClosedRange<Double>? = nil, labels: Labels = .inTurn,
                decode: ((Tensor) throws -> ByteImages)? = nil) {
        precondition(samples >= 2, "FID needs at least 2 samples")
        self.extractor = extractor
        self.reference = reference
        self.samples = samples
        classes = data.classes
        channels = data.channels
        side = data.height
        self.seed = seed
        self.guidance = guidance
        self.labels = labels
        self.decode = decode
        self.interval = interval
    }

    /// Samples in batches of the extractor's size, each passed through Inception at once (nothing else is kept).
    public func measure(_ trainer: Trainer<DiT>, nfe: Int) throws -> Double {
        var rng = RandomGenerator(seed: seed &+ Self.fidSeedOffset)
        let classOf: [Int]
        switch labels {
        case .inTurn: classOf = (0..<samples).map { $0 % classes }
        case .uniform: classOf = (0..<samples).map { _ in rng.int(below: classes) }
        }
        var accumulator = FeatureAccumulator(dimension: InceptionV3.featureCount, device: extractor.network.device)
        var done = 0
        while done < samples {
            let count = min(extractor.batchSize, samples - done)
            let noise = Tensor.randomNormal([count, channels, side, side], rng: &rng)
            let cond = Conditioning.sampling(labels: Array(classOf[done..<(done + count)]), classes: classes, guidance: guidance,
                                             interval: interval)
            let images = trainer.sample(noise: noise, steps: nfe, cond: cond, weights: trainer.ema, guidanceScale: guidance)
            if let decode {
                try extractor.accumulate(try decode(images), into: &accumulator)
            } else {
                try extractor.accumulate(generated: images, into: &accumulator)
            }
            done += count
        }
        return try FID.distance(try accumulator.statistics(), reference)
    }
}
