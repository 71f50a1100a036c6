import Formats
import TensorCore

/// The official `dataset_tool.py getstats` of a latent set: per latent channel, the mean of the posterior means
/// over every image and position (`raw_mean`), and the standard deviation of one latent drawn per image from
/// its posterior, `mean + std * eps` (`raw_std`): the numbers `tvm train --latent-mean/--latent-std` take.
public struct LatentStatistics: Sendable {
    public let count: Int
    public let mean: [Double]
    public let std: [Double]

    /// The statistics of the latent archive at `path` (as `tvm prepare --vae` writes it); `seed` draws the eps.
    public init(path: String, seed: UInt64 = 0) throws {
        let set = try LatentArchive(path: path)
        var rng = RandomGenerator(seed: seed)
        let c = set.channels, plane = set.height * set.width
        var meanSum = [Double](repeating: 0, count: c), sum = meanSum, squares = meanSum
        for i in 0..<set.count {
            let v = try set.posterior(i)
            let eps = rng.normalFloats(c * plane)
            for ch in 0..<c {
                for k in (ch * plane)..<((ch + 1) * plane) {
                    let m = Double(v[k]), x = m + Double(v[c * plane + k]) * Double(eps[k])
                    meanSum[ch] += m
                    sum[ch] += x
                    squares[ch] += x * x
                }
            }
        }
        let n = Double(set.count * plane)
        count = set.count
        mean = meanSum.map { $0 / n }
        std = zip(sum, squares).map { s, q in (max(q / n - (s / n) * (s / n), 0)).squareRoot() }
    }
}

/// A latent data set as the official `dataset_tool.py encode` writes it: a ZIP of NPY entries, each the float32
/// [2C, H, W] posterior of one image (C channels of means, then C of standard deviations), in sorted name order,
/// with `dataset.json` labels. Entries are read on demand.
public struct LatentArchive {
    public let path: String
    public let names: [String]
    public let labels: [Int]?
    /// Latent channels (half the planes of an entry), and the latents' size.
    public let channels: Int, height: Int, width: Int
    private let archive: ZIPArchive

    public var count: Int { names.count }

    public init(path: String) throws {
        let archive = try DataError.converting { try ZIPArchive(path: path) }
        let names = archive.entries.map(\.name).filter { $0.lowercased().hasSuffix(".npy") }.sorted(by: utf8Order)
        guard let first = names.first else {
            throw DataError(file: path, "the archive holds no .npy entries; a latent data set is made by tvm prepare --vae")
        }
        let shape = try DataError.converting { try NPYArray.parse(archive.read(named: first), source: "\(path): entry \(quoted(first))").shape }
        guard shape.count == 3, shape[0] >= 2, shape[0] % 2 == 0, shape[1] >= 1, shape[2] >= 1 else {
            throw DataError(file: path, "the entry \(quoted(first)) has shape \(shape); a latent entry is [2C, H, W] (means, then stds)")
        }
        var labels: [Int]? = nil
        if archive.entry(named: "dataset.json") != nil {
            let source = "\(path): dataset.json"
            let bytes = try DataError.converting { try archive.read(named: "dataset.json", limit: 1 << 30) }
            if let labelled = try LabelFiles.labels(bytes, source: source) {
                labels = try names.map { name in
                    guard case .index(let i)? = labelled[name] else {
                        throw DataError(file: source, "the entry \(quoted(name)) has no class index")
                    }
                    return i
                }
            }
        }
        self.path = path
        self.archive = archive
        self.names = names
        self.labels = labels
        channels = shape[0] / 2
        height = shape[1]
        width = shape[2]
    }

    /// The [2C, H, W] floats of entry `i`, checked: the shape of the first entry, finite, stds not negative.
    public func posterior(_ i: Int) throws -> [Float] {
        let name = names[i], source = "\(path): entry \(quoted(name))"
        let array = try DataError.converting { try NPYArray.parse(archive.read(named: name), source: source) }
        guard array.shape == [2 * channels, height, width] else {
            throw DataError(sanitizing: "\(source): shape \(array.shape), while the first entry's is \([2 * channels, height, width])")
        }
        let v = array.floats, half = channels * height * width
        if let k = v.indices.first(where: { !v[$0].isFinite || ($0 >= half && v[$0] < 0) }) {
            throw DataError(sanitizing: "\(source): value \(v[k]) at flat index \(k) is not a finite mean or a non-negative std")
        }
        return v
    }
}

extension ImageDataset {
    /// A latent data set held in memory for training (`LatentArchive`): every posterior read and checked, the
    /// network's latents drawn from them batch by batch (`batchValues`) and normalised per channel,
    /// `(mean + std * eps) * scale + bias`, with `scale` and `bias` as the official encoder computes them (one
    /// per latent channel). Unlabeled sets get the single class 0.
    public static func latents(_ path: String, scale: [Float], bias: [Float]) throws -> ImageDataset {
        let set = try LatentArchive(path: path)
        guard scale.count == set.channels, bias.count == set.channels else {
            throw DataError(file: path, "the latents have \(set.channels) channels, but the normalisation has \(scale.count) "
                            + "(one --latent-mean and --latent-std value per channel)")
        }
        var values: [Float] = []
        values.reserveCapacity(set.count * 2 * set.channels * set.height * set.width)
        for i in 0..<set.count { values += try set.posterior(i) }
        let labels = set.labels ?? [Int](repeating: 0, count: set.count)
        var data = try ImageDataset(images: values, labels: labels, channels: 2 * set.channels, height: set.height,
                                    width: set.width, classes: (labels.max() ?? 0) + 1)
        data.channels = set.channels
        data.latentDraw = LatentDraw(scale: scale, bias: bias)
        return data
    }
}
