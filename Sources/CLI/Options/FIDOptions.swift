import TVM
import Data
import Eval
import Formats

let fidHelp = """
  FID while training (Inception-v3 as tvm fid runs it; README "FID" makes its weights once):
  --fid-every N     every N steps and after the last one, the FID of the evaluation EMA against the training
                    images (their statistics cached as tvm fid caches them), as a line {"step", "fid_nfe1", ...,
                    "fid_seconds"} in metrics.jsonl and as fid/nfe<K> in TensorBoard. Rank 0 measures it; its
                    time counts toward --time-budget.
  --fid-samples N   images per FID (default 10000): the classes in turn, guidance --sample-cfg, the same noise
                    every time
  --fid-nfe LIST    the step counts to measure (default 1,4)
  --fid-weights F   the converted Inception weights (default $TVM_INCEPTION_WEIGHTS, else
                    ~/.cache/terminalvelocity/inception-2015-12-05.safetensors)
  --fid-dataset D   measure against these images instead of the training images: anything tvm fid --dataset
                    takes (a data set ZIP, an .npy, a class folder, fashion-mnist), statistics cached alike
  --fid-ref FILE    measure against published statistics (img256.pkl, ADM's .npz), as tvm fid --ref
                    On latents (--data LATENTS.zip) FID needs --vae DIR and one of these two: the samples are
                    decoded and converted to 8-bit pixels as tvm sample --vae does, their classes drawn uniformly
                    (the official protocol; the samples of the step's EMA are tvm sample --seed <seed + 253583085>
                    --n <fid-samples> --classes random), and compared with the cropped RGB set of tvm prepare
                    (--fid-dataset RGB.zip) or the paper's reference (--fid-ref img256.pkl).
  --keep-best       keeps DIR/checkpoint_best.safetensors, the state with the lowest FID at the first --fid-nfe
                    (a complete training checkpoint: tvm sample reads it)
"""

/// FID while training: `--fid-every N [--fid-samples N] [--fid-nfe LIST] [--fid-weights F] [--fid-dataset D | --fid-ref FILE]
/// [--keep-best]`.
struct FIDOptions {
    /// What the samples are compared with.
    enum Reference {
        /// The images the run trains on.
        case trainingImages
        /// Other images (`--fid-dataset`), listed (a data set ZIP) or read when the options are.
        case images(any FIDImageSet, name: String)
        /// Published statistics (`--fid-ref`).
        case published(ReferenceStatistics, name: String)
    }

    let every: Int
    let samples: Int
    let nfes: [Int]
    let weights: String
    let keepBest: Bool
    let reference: Reference

    /// The options, or nil without `--fid-every`. The weights must exist: a run asked to measure FID that could
    /// not would find out only at its first measurement.
    static func parse(_ a: Arguments) throws -> FIDOptions? {
        guard a.string("fid-every") != nil else {
            for flag in ["fid-samples", "fid-nfe", "fid-weights", "fid-dataset", "fid-ref"] where a.string(flag) != nil {
                throw CLIError("--\(flag) goes with --fid-every N", usage: true)
            }
            if a.has("keep-best") { throw CLIError("--keep-best keeps the checkpoint with the best FID: it needs --fid-every N", usage: true) }
            return nil
        }
        let weights = a.string("fid-weights") ?? FIDFiles.defaultWeightsPath
        guard FileSystem.exists(weights) else {
            throw CLIError("--fid-every: " + FIDFiles.missingWeights(weights) + "; or pass --fid-weights FILE")
        }
        let reference: Reference
        switch (a.string("fid-dataset"), a.string("fid-ref")) {
        case (nil, nil): reference = .trainingImages
        case (let spec?, nil): reference = .images(try loadFIDReference(spec, dataDir: nil, pad: 2, train: true, limit: nil), name: spec)
        case (nil, let path?):
            let statistics: ReferenceStatistics
            do { statistics = try ReferenceStatistics.read(path: path) } catch let e as EvalError {
                throw CLIError("--fid-ref " + e.message)
            }
            guard statistics.dimension == InceptionV3.featureCount else {
                throw CLIError("--fid-ref \(path): statistics of \(statistics.dimension) features; Inception-v3 gives "
                               + "\(InceptionV3.featureCount)")
            }
            reference = .published(statistics, name: path)
        default: throw CLIError("give --fid-dataset or --fid-ref, not both", usage: true)
        }
        return FIDOptions(every: try a.int("fid-every", default: 1000, range: 1...100_000_000),
                          samples: try a.int("fid-samples", default: 10000, range: 2...10_000_000),
                          nfes: try a.intList("fid-nfe", default: [1, 4]), weights: weights, keepBest: a.has("keep-best"),
                          reference: reference)
    }

    /// The tracking of a run on `data`: Inception loaded, the reference images' statistics taken from the cache or
    /// computed (with a progress bar) and cached. `decoder` turns a latent run's samples into images.
    func tracking(data: ImageDataset, named name: String, seed: UInt64, guidance: Double,
                  interval: ClosedRange<Double>?, decoder: LatentDecoder?) throws -> FIDTracking {
        guard decoder != nil || data.channels == 1 || data.channels == 3 else {
            throw CLIError("--fid-every: FID needs gray or RGB images; \(name) has \(data.channels) channels")
        }
        let extractor = FIDFeatureExtractor(network: try InceptionV3(path: weights), batchSize: activeCUDA != nil ? 100 : 8)
        let statistics: ReferenceStatistics, against: String
        switch reference {
        case .published(let published, let path):
            (statistics, against) = (published, "the statistics of \(path)")
        case .trainingImages, .images:
            let (images, imagesName) = try referenceImages(data: data, named: name)
            let bar = ProgressBar("FID statistics of \(imagesName)", total: images.count)
            let (features, _) = try FIDReferenceStatistics().statistics(of: images, named: imagesName, extractor: extractor,
                                                                        note: Console.info) { bar.update(images: $0) }
            statistics = try ReferenceStatistics(mean: features.mean, covariance: features.covariance)
            against = "the \(images.count) images of \(imagesName)"
        }
        let fid = TrainingFID(extractor: extractor, reference: statistics, data: data, samples: samples, seed: seed, guidance: guidance,
                              interval: interval,
                              labels: decoder == nil ? .inTurn : .uniform, decode: decoder.map { d in { try d.images($0) } })
        Console.info("FID every \(every) steps: \(samples) \(decoder == nil ? "" : "decoded ")samples at "
                     + "\(nfes.map(String.init).joined(separator: ", ")) NFE against \(against)"
                     + (keepBest ? "; the best checkpoint kept" : ""))
        return FIDTracking(every: every, nfes: nfes, keepBest: keepBest, measure: fid.measure)
    }

    private func referenceImages(data: ImageDataset, named name: String) throws -> (any FIDImageSet, String) {
        if case .images(let images, let imagesName) = reference { return (images, imagesName) }
        return (try ByteImages(dataset: data), name)
    }
}
