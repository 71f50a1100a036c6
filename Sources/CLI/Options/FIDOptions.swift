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
  --keep-best       keeps DIR/checkpoint_best.safetensors, the state with the lowest FID at the first --fid-nfe
                    (a complete training checkpoint: tvm sample reads it)
"""

/// FID while training on images: `--fid-every N [--fid-samples N] [--fid-nfe LIST] [--fid-weights F] [--keep-best]`.
struct FIDOptions {
    let every: Int
    let samples: Int
    let nfes: [Int]
    let weights: String
    let keepBest: Bool

    /// The options, or nil without `--fid-every`. The weights must exist: a run asked to measure FID that could
    /// not would find out only at its first measurement.
    static func parse(_ a: Arguments) throws -> FIDOptions? {
        guard a.string("fid-every") != nil else {
            for flag in ["fid-samples", "fid-nfe", "fid-weights"] where a.string(flag) != nil {
                throw CLIError("--\(flag) goes with --fid-every N", usage: true)
            }
            if a.has("keep-best") { throw CLIError("--keep-best keeps the checkpoint with the best FID: it needs --fid-every N", usage: true) }
            return nil
        }
        let options = FIDOptions(every: try a.int("fid-every", default: 1000, range: 1...100_000_000),
                                 samples: try a.int("fid-samples", default: 10000, range: 2...10_000_000),
                                 nfes: try a.intList("fid-nfe", default: [1, 4]),
                                 weights: a.string("fid-weights") ?? FIDFiles.defaultWeightsPath, keepBest: a.has("keep-best"))
        guard FileSystem.exists(options.weights) else {
            throw CLIError("--fid-every: " + FIDFiles.missingWeights(options.weights) + "; or pass --fid-weights FILE")
        }
        return options
    }

    /// The tracking of a run on `data`: Inception loaded, the data set's statistics taken from the cache or
    /// computed (with a progress bar) and cached.
    func tracking(data: ImageDataset, named name: String, seed: UInt64, guidance: Double, interval: ClosedRange<Double>?) throws -> FIDTracking {
        guard data.channels == 1 || data.channels == 3 else {
            throw CLIError("--fid-every: FID needs gray or RGB images; \(name) has \(data.channels) channels")
        }
        let extractor = FIDFeatureExtractor(network: try InceptionV3(path: weights), batchSize: activeCUDA != nil ? 100 : 8)
        let images = try ByteImages(dataset: data)
        let bar = ProgressBar("FID statistics of \(name)", total: images.count)
        let (reference, _) = try FIDReferenceStatistics().statistics(of: images, named: name, extractor: extractor,
                                                                     note: Console.info) { bar.update(images: $0) }
        let fid = TrainingFID(extractor: extractor, reference: reference, data: data, samples: samples, seed: seed, guidance: guidance,
                              interval: interval)
        Console.info("FID every \(every) steps: \(samples) samples at \(nfes.map(String.init).joined(separator: ", ")) NFE against the "
                     + "\(images.count) training images" + (keepBest ? "; the best checkpoint kept" : ""))
        return FIDTracking(every: every, nfes: nfes, keepBest: keepBest, measure: fid.measure)
    }
}
