#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Formats

/// The dataset tool of `tvm prepare`: images in, an archive in the official dataset format out (the official
/// `dataset_tool.py convert --transform=center-crop-dhariwal` for RGB sets, `encode` for latent sets). Image i of
/// the source becomes the entry `entryName(i)` (`00000/img00000000.png`, `00000/img-mean-std-00000000.npy`, as the
/// official tool names them), and `dataset.json` holds `{"labels": [[name, label], ...]}` (null when unlabeled).
///
/// A run writes `OUT.partial` (`ZIPWriter`) and renames it to `OUT` only when complete, so `OUT` is either absent or
/// whole. A run that was killed or stopped continues where it stopped when run again with the same settings (they
/// are kept beside the partial archive in `OUT.partial-settings`; other settings are refused rather than mixed in).
/// Images are decoded and cropped in parallel over the CPU cores, a batch at a time, then handed to the encoder
/// (PNG bytes, or the VAE's posterior) in one call.
public struct DatasetPreparation {
    public enum BadImagePolicy: String, Sendable {
        /// Name the image, leave it out, count it, go on.
        case skip
        /// Name the image and stop; what is done stays in `OUT.partial` for the next run.
        case stop
    }

    /// What to do with one batch of cropped RGB images: the bytes of each one's entry, in order.
    public typealias Encoder = ([Image]) throws -> [[UInt8]]

    public let source: ImageSource
    public let destination: String
    /// The ADM center crop to `size` x `size` (`centerCropDhariwal`); an image already of that size is kept as it
    /// is (PIL's resize to the same size is a copy). nil: images are used as they are and must all be alike.
    public let size: Int?
    /// Images decoded, cropped and encoded together.
    public let batch: Int
    public let policy: BadImagePolicy
    /// The first `limit` images of the source (nil: all).
    public let limit: Int?
    /// The entry of image i of the source.
    public let entryName: (Int) -> String

    public init(source: ImageSource, destination: String, size: Int?, batch: Int, policy: BadImagePolicy, limit: Int? = nil,
                entryName: @escaping (Int) -> String) {
        precondition(batch >= 1 && (size ?? 1) >= 1, "DatasetPreparation: batch \(batch), size \(String(describing: size))")
        self.source = source
        self.destination = destination
        self.size = size
        self.batch = batch
        self.policy = policy
        self.limit = limit
        self.entryName = entryName
    }

    /// `00000/img00000000.png`: the official name of image `index` of an RGB set.
    public static func pngName(_ index: Int) -> String {
        let s = digits(index)
        return "\(s.prefix(5))/img\(s).png"
    }

    /// `00000/img-mean-std-00000000.npy`: the official name of image `index` of a latent set.
    public static func latentName(_ index: Int) -> String {
        let s = digits(index)
        return "\(s.prefix(5))/img-mean-std-\(s).npy"
    }

    private static func digits(_ index: Int) -> String {
        let s = String(index)
        return s.count >= 8 ? s : String(repeating: "0", count: 8 - s.count) + s
    }

    /// What a run did.
    public struct Report: Sendable {
        /// Entries that an earlier, interrupted run had written.
        public var resumed = 0
        /// Entries written by this run.
        public var written = 0
        /// The images left out, each a one-line reason naming it.
        public var bad: [String] = []
        /// Images in the finished archive.
        public var total: Int { resumed + written }
    }

    public var partialPath: String { destination + ".partial" }
    public var settingsPath: String { destination + ".partial-settings" }

    /// Runs (or continues) the preparation. `settings` describes everything that decides the entries' bytes
    /// (source, size, encoder and its weights): a partial archive made with other settings is refused.
    /// `progress(done, pending)` follows the images of this run: once when the work starts (0), then after each
    /// batch; `note` receives a line when an
    /// interrupted run is continued and one per bad image skipped.
    public func run(settings: String, encode: Encoder, progress: (Int, Int) -> Void = { _, _ in },
                    note: (String) -> Void = { _ in }) throws -> Report {
        if FileSystem.exists(destination) {
            throw DataError(file: destination, "exists; remove it or choose another output")
        }
        let writer = try DataError.converting { () throws -> ZIPWriter in
            if FileSystem.exists(partialPath) {
                let saved = FileSystem.isRegularFile(settingsPath) ? try AtomicFile.read(path: settingsPath) : []
                guard saved == Array(settings.utf8) else {
                    throw DataError(file: partialPath, "left by a run with other settings (or of another tool); remove it and "
                                    + "\(settingsPath) to start afresh, or repeat that run's command to continue it")
                }
                return try ZIPWriter(path: destination, resume: true)
            }
            try AtomicFile.write(path: settingsPath, bytes: Array(settings.utf8))
            return try ZIPWriter(path: destination)
        }
        let count = min(limit ?? source.count, source.count)
        var report = Report()
        let done = Set(writer.entries.map(\.name))
        report.resumed = writer.entries.count - (done.contains("dataset.json") ? 1 : 0)
        let pending = (0..<count).filter { !done.contains(entryName($0)) }
        if report.resumed > 0 { note("continuing \(partialPath), which holds \(report.resumed) of the \(count) images") }
        var shape: (width: Int, height: Int)? = nil
        var finished = 0
        progress(0, pending.count)
        for start in stride(from: 0, to: pending.count, by: batch) {
            let indices = Array(pending[start..<min(start + batch, pending.count)])
            let loaded = load(indices)
            var good: [(index: Int, image: Image)] = []
            for (index, result) in zip(indices, loaded) {
                let problem: String
                switch result {
                case .success(let image):
                    let expected = shape ?? (image.width, image.height)
                    if image.width == expected.width && image.height == expected.height {
                        shape = expected
                        good.append((index, image))
                        continue
                    }
                    problem = "\(source.location(index)): \(image.width)x\(image.height) pixels, while the images before it are "
                        + "\(expected.width)x\(expected.height) (give a crop size to make them alike)"
                case .failure(let error as ImageSource.ImageError):
                    problem = error.message
                case .failure(let error):
                    throw error
                }
                if policy == .stop {
                    throw DataError(sanitizing: problem + " (stopped: --on-bad-image stop; the \(report.total) images done are "
                                    + "kept in \(partialPath), and the same command continues from there)")
                }
                report.bad.append(problem)
                note("skipped: " + problem)
            }
            if !good.isEmpty {
                let entries = try encode(good.map { $0.image })
                precondition(entries.count == good.count, "DatasetPreparation: \(entries.count) entries for \(good.count) images")
                try DataError.converting {
                    for ((index, _), bytes) in zip(good, entries) { try writer.add(name: entryName(index), bytes: bytes) }
                }
                report.written += good.count
            }
            finished += indices.count
            progress(finished, pending.count)
        }
        guard report.total > 0 else {
            throw DataError(file: source.path, "none of the \(count) images could be used; \(destination) was not written")
        }
        try DataError.converting {
            if !done.contains("dataset.json") { try writer.add(name: "dataset.json", bytes: Array(metadata(writer).utf8)) }
            try writer.finish()
        }
        unlink(settingsPath)
        return report
    }

    /// `{"labels": [[name, label], ...]}` over the entries written, in name order (`null` for an unlabeled source).
    private func metadata(_ writer: ZIPWriter) -> String {
        guard let labels = source.labels else { return JSONValue.object([("labels", .null)]).serialized() }
        var index: [String: Int] = [:]
        for i in 0..<min(limit ?? source.count, source.count) { index[entryName(i)] = i }
        let pairs = writer.entries.compactMap { e in index[e.name].map { (e.name, labels[$0]) } }
            .sorted { utf8Order($0.0, $1.0) }
        return JSONValue.object([("labels", .array(pairs.map { .array([.string($0.0), .number(Double($0.1))]) }))]).serialized()
    }

    /// The images at `indices`, decoded, made RGB and cropped, in parallel.
    private func load(_ indices: [Int]) -> [Result<Image, Error>] {
        let results = UnsafeMutableBufferPointer<Result<Image, Error>?>.allocate(capacity: indices.count)
        results.initialize(repeating: nil)
        defer { results.deallocate() }
        let size = self.size, source = self.source
        DispatchQueue.concurrentPerform(iterations: indices.count) { k in
            results[k] = Result<Image, Error>(catching: { () throws -> Image in
                let image = try source.image(indices[k])
                guard let size, image.width != size || image.height != size else { return image }
                guard image.width >= 1, image.height >= 1 else {
                    throw ImageSource.ImageError(kind: .undecodable, message: "\(source.location(indices[k])): holds no pixels")
                }
                return image.centerCropDhariwal(size: size)
            })
        }
        return results.map { $0! }
    }
}
