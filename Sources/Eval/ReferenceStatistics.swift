import Formats

/// FID reference statistics as papers publish them: the Inception features' mean and covariance of a data set,
/// without the features. EDM-style `img256.pkl` is a pickle of `{'mu': array [d], 'sigma': array [d, d]}` (read
/// as data, never run); ADM's reference batches (`VIRTUAL_imagenet256_labeled.npz`) are numpy `.npz` archives
/// holding `mu.npy` and `sigma.npy` (and the images, which are not read). Neither records how many images the
/// statistics cover.
public struct ReferenceStatistics: Sendable {
    public let mean: [Double]
    /// dimension x dimension, row-major.
    public let covariance: [Double]
    public var dimension: Int { mean.count }

    public init(mean: [Double], covariance: [Double]) throws {
        guard !mean.isEmpty, covariance.count == mean.count * mean.count else {
            throw EvalError("reference statistics: a mean of \(mean.count) and a covariance of \(covariance.count) values do not fit")
        }
        guard mean.allSatisfy(\.isFinite), covariance.allSatisfy(\.isFinite) else {
            throw EvalError("reference statistics: the mean or covariance has a non-finite value")
        }
        self.mean = mean
        self.covariance = covariance
    }

    /// Reads `img256.pkl` (a pickle) or an ADM `.npz` (a ZIP), told apart by their first bytes.
    public static func read(path: String) throws -> ReferenceStatistics {
        do {
            let mu: NPYArray, sigma: NPYArray
            if try ZIPArchive.isArchive(path: path) {
                let archive = try ZIPArchive(path: path)
                // Bounded by the file's own size already; 1 GB is far above a 2048 x 2048 float64 covariance (32 MB).
                mu = try NPYArray.parse(try archive.read(named: "mu.npy", limit: 1 << 30), source: "\(path): mu.npy")
                sigma = try NPYArray.parse(try archive.read(named: "sigma.npy", limit: 1 << 30), source: "\(path): sigma.npy")
            } else {
                let root = try PickleReader.read(try AtomicFile.read(path: path), source: path)
                guard let m = root["mu"], let s = root["sigma"] else {
                    throw EvalError("\(path): not reference statistics (a dict with 'mu' and 'sigma'), but \(root.summary)")
                }
                mu = try NumPyPickle.array(m, what: "\(path): mu")
                sigma = try NumPyPickle.array(s, what: "\(path): sigma")
            }
            guard mu.shape.count == 1, sigma.shape == [mu.shape[0], mu.shape[0]] else {
                throw EvalError("\(path): mu \(Self.text(mu.shape)) and sigma \(Self.text(sigma.shape)) are not [d] and [d, d]")
            }
            do { return try ReferenceStatistics(mean: mu.doubles, covariance: sigma.doubles) } catch let e as EvalError {
                throw EvalError("\(path): \(e.message)")
            }
        } catch let e as FormatError {
            throw EvalError(e.message)
        }
    }

    static func text(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
}
