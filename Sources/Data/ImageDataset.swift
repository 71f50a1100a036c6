#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Formats
import TensorCore

/// A labelled image data set held in memory, already preprocessed for training.
///
/// `images` holds `count` images one after another, each `channels × height × width` floats in CHW
/// order (rows top to bottom), with pixel values in [−1, 1]: 8-bit sources map v ∈ 0...255 to
/// v / 127.5 − 1 (computed in Double, rounded once to Float, so 0 → −1, 255 → 1 exactly).
/// `labels[i]` is the class of image i, in 0 ..< `classes`; `classNames` has one name per class.
///
/// Loaders: `idx` / `fashionMNIST` (MNIST-format files), `pngFolder` (one subfolder of PNGs per
/// class) and `npy` (NumPy arrays). `batch` makes a [B, C, H, W] tensor, `BatchSampler` picks indices.
public struct ImageDataset: Sendable {
    public let count: Int
    /// The channels of the images the network sees (for a latent set, the latent channels).
    public internal(set) var channels: Int
    public let height: Int
    public let width: Int
    public let classes: Int
    public let images: [Float]
    public let labels: [Int]
    public let classNames: [String]
    /// Set for a latent set (`latents`): `images` then holds per image the VAE posterior, `channels` planes of
    /// means and `channels` of standard deviations, and every batch draws fresh latents from it.
    public internal(set) var latentDraw: LatentDraw? = nil

    /// The per-channel map of drawn latents to the network's, `x * scale + bias`.
    public struct LatentDraw: Sendable, Equatable {
        public let scale: [Float]
        public let bias: [Float]
    }

    /// Floats per image the network sees: channels × height × width.
    public var imageSize: Int { channels * height * width }
    /// Floats per image held: `imageSize`, twice that for a latent set.
    var storedImageSize: Int { latentDraw == nil ? imageSize : 2 * imageSize }

    /// Checks that the pieces fit together: sizes ≥ 1, `images.count == labels.count × C × H × W`,
    /// labels in 0 ..< classes, and `classNames` (default "0", "1", ...) of length `classes`.
    public init(images: [Float], labels: [Int], channels: Int, height: Int, width: Int, classes: Int,
                classNames: [String]? = nil) throws {
        guard channels >= 1, height >= 1, width >= 1, classes >= 1 else {
            throw DataError("image data set: invalid sizes (channels \(channels), \(height)x\(width), \(classes) classes)")
        }
        let (perImage, o1) = channels.multipliedReportingOverflow(by: height)
        let (size, o2) = perImage.multipliedReportingOverflow(by: width)
        let (total, o3) = size.multipliedReportingOverflow(by: labels.count)
        guard !o1, !o2, !o3, total == images.count else {
            throw DataError("image data set: \(images.count) values do not match \(labels.count) images of \(channels)x\(height)x\(width)")
        }
        guard !labels.isEmpty else { throw DataError("image data set: no images") }
        if let bad = labels.firstIndex(where: { $0 < 0 || $0 >= classes }) {
            throw DataError("image data set: label \(labels[bad]) of image \(bad) is outside 0..<\(classes)")
        }
        let names = classNames ?? (0..<classes).map(String.init)
        guard names.count == classes else {
            throw DataError("image data set: \(names.count) class names for \(classes) classes")
        }
        count = labels.count
        self.channels = channels
        self.height = height
        self.width = width
        self.classes = classes
        self.images = images
        self.labels = labels
        self.classNames = names
    }

    /// The preprocessed floats of image `i` (CHW; for a latent set, its posterior).
    public func image(_ i: Int) -> ArraySlice<Float> {
        precondition(i >= 0 && i < count, "image index \(i) outside 0..<\(count)")
        return images[(i * storedImageSize)..<((i + 1) * storedImageSize)]
    }

    /// Images per class.
    public var classCounts: [Int] {
        var c = [Int](repeating: 0, count: classes)
        for l in labels { c[l] += 1 }
        return c
    }

    /// v / 127.5 − 1 for v = 0 ... 255, rounded once from Double.
    public static let byteToUnit: [Float] = (0..<256).map { Float(Double($0) / 127.5 - 1) }

    /// The inverse, for export: round((x + 1) · 127.5) clamped to 0 ... 255 (non-finite values give 0).
    @inline(__always)
    public static func unitToByte(_ x: Float) -> UInt8 {
        guard x.isFinite else { return 0 }
        let v = ((Double(x) + 1) * 127.5).rounded()
        return UInt8(min(max(v, 0), 255))
    }

    // MARK: - Batches

    /// Gathers the images at `indices` (each in 0 ..< count; repeats allowed) into a [B, C, H, W]
    /// tensor on `device`, with their labels. With `flip`, each image is mirrored left-right with
    /// probability 1/2: one uniform per image is drawn from `rng` (B values, whether or not flipped);
    /// without `flip`, `rng` is not touched. A latent set draws each latent from its image's posterior, one normal
    /// per value from `rng` (B x C x H x W, after the flips' uniforms), as the official encoder does every time an
    /// image is used, and normalises it.
    public func batch(indices: [Int], flip: Bool, rng: inout RandomGenerator, on device: Device = .default) -> (images: Tensor, labels: [Int]) {
        let (values, labels) = batchValues(indices: indices, flip: flip, rng: &rng)
        return (Tensor(values, shape: [indices.count, channels, height, width], on: device), labels)
    }

    /// `batch` without the tensor: the [B, C, H, W] values as a flat array, and the labels.
    public func batchValues(indices: [Int], flip: Bool, rng: inout RandomGenerator) -> (values: [Float], labels: [Int]) {
        precondition(!indices.isEmpty, "a batch needs at least one image")
        for i in indices { precondition(i >= 0 && i < count, "image index \(i) outside 0..<\(count)") }
        let u = flip ? rng.uniformFloats(indices.count) : []
        let size = imageSize, w = width, rows = channels * height
        var out = [Float](repeating: 0, count: indices.count * size)
        if let draw = latentDraw {
            precondition(!flip, "a latent data set is not flipped")
            let eps = rng.normalFloats(indices.count * size), plane = height * width
            for (b, i) in indices.enumerated() {
                let s = i * 2 * size, d = b * size
                for c in 0..<channels {
                    let scale = draw.scale[c], bias = draw.bias[c]
                    for k in (c * plane)..<((c + 1) * plane) {
                        // mean + eps * std, then * scale, then + bias: each rounded to float32, as in PyTorch.
                        let x = images[s + k] + eps[d + k] * images[s + size + k]
                        out[d + k] = x * scale + bias
                    }
                }
            }
            return (out, indices.map { labels[$0] })
        }
        images.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for (b, i) in indices.enumerated() {
                    let s = i * size, d = b * size
                    if flip && u[b] < 0.5 {
                        for r in 0..<rows {
                            let rs = s + r * w, rd = d + r * w
                            for x in 0..<w { dst[rd + x] = src[rs + w - 1 - x] }
                        }
                    } else {
                        for k in 0..<size { dst[d + k] = src[s + k] }
                    }
                }
            }
        }
        return (out, indices.map { labels[$0] })
    }

    // MARK: - IDX (MNIST format)

    /// An IDX image file [n, rows, cols] (uint8, magic 0x00000803) and its label file [n] (magic
    /// 0x00000801), gzipped or not. Each image is padded with `pad` zero pixels on every side (value
    /// −1 after scaling; 28x28 with pad 2 gives 32x32, the size patch-2 and patch-4 models want) and
    /// scaled to [−1, 1]. Labels must be below `classes`.
    public static func idx(images: String, labels: String, pad: Int = 2, classes: Int = 10,
                           classNames: [String]? = nil, maxBytes: Int = IDX.defaultMaxBytes) throws -> ImageDataset {
        guard (0...1024).contains(pad) else { throw DataError("\(images): padding \(pad) is outside 0...1024") }
        guard classes >= 1, classes <= 256 else { throw DataError("\(labels): class count \(classes) is outside 1...256") }
        let img = try IDX.readImages(path: images, maxBytes: maxBytes)
        let lab = try IDX.readLabels(path: labels, maxBytes: maxBytes)
        let n = img.shape[0], rows = img.shape[1], cols = img.shape[2]
        guard lab.shape[0] == n else {
            throw DataError(file: labels, "\(lab.shape[0]) labels for the \(n) images of \(images)")
        }
        guard n >= 1 else { throw DataError(file: images, "IDX image file holds no images") }
        if let bad = lab.values.firstIndex(where: { Int($0) >= classes }) {
            throw DataError(file: labels, "label \(lab.values[bad]) of image \(bad) is out of range for \(classes) classes")
        }
        let h = rows + 2 * pad, w = cols + 2 * pad
        let table = byteToUnit
        var out = [Float](repeating: -1, count: n * h * w)
        img.values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                table.withUnsafeBufferPointer { t in
                    for i in 0..<n {
                        for y in 0..<rows {
                            let s = (i * rows + y) * cols, d = (i * h + y + pad) * w + pad
                            for x in 0..<cols { dst[d + x] = t[Int(src[s + x])] }
                        }
                    }
                }
            }
        }
        return try ImageDataset(images: out, labels: lab.values.map { Int($0) }, channels: 1, height: h, width: w,
                                classes: classes, classNames: classNames)
    }

    /// Where the Debian/Ubuntu package `dataset-fashion-mnist` installs the four gzipped IDX files.
    public static let fashionMNISTDirectory = "/usr/share/datasets/fashion-mnist"

    /// Fashion-MNIST's ten classes, in label order.
    public static let fashionMNISTClassNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    /// Fashion-MNIST (60 000 training or 10 000 test images, 28x28 gray, 10 classes) from `directory`,
    /// padded to 32x32 (see `idx`). Finds `train-images-idx3-ubyte` / `train-labels-idx1-ubyte`
    /// (`t10k-` for the test split), with or without `.gz`, and the `train-images.idx3-ubyte` spelling
    /// some archives use.
    public static func fashionMNIST(directory: String = fashionMNISTDirectory, train: Bool = true, pad: Int = 2) throws -> ImageDataset {
        let split = train ? "train" : "t10k"
        func find(_ kind: String, _ rank: Int) throws -> String {
            let names = ["\(split)-\(kind)-idx\(rank)-ubyte", "\(split)-\(kind).idx\(rank)-ubyte"]
            for name in names {
                for candidate in [name + ".gz", name] where FileSystem.isRegularFile(directory + "/" + candidate) {
                    return directory + "/" + candidate
                }
            }
            let what = FileSystem.isDirectory(directory) ? "\(names[0])[.gz] is not in \(directory)"
                                                          : "directory \(directory) does not exist"
            throw DataError(sanitizing: "Fashion-MNIST \(train ? "training" : "test") \(kind): \(what); install the data set with "
                + "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files go to \(fashionMNISTDirectory)) or put the "
                + "four IDX files from https://github.com/zalandoresearch/fashion-mnist in that directory")
        }
        return try idx(images: find("images", 3), labels: find("labels", 1), pad: pad, classes: 10,
                       classNames: fashionMNISTClassNames)
    }

    // MARK: - PNG folders

    /// A folder with one subfolder per class; the subfolder names, sorted by their UTF-8 bytes, are
    /// the class names and give the class indices. Each holds `.png` files (any case; other files and
    /// names starting with "." are ignored), read in sorted order. All images must share one size and
    /// one channel count: gray or RGB (an alpha channel is accepted only when fully opaque, and dropped).
    public static func pngFolder(_ path: String) throws -> ImageDataset {
        let classDirs = try DataError.converting { try FileSystem.list(path) }.filter { FileSystem.isDirectory(path + "/" + $0) }
        guard !classDirs.isEmpty else {
            throw DataError(file: path, "no class subfolders (expected one folder of PNG files per class)")
        }
        var images: [Float] = []
        var labels: [Int] = []
        var first: (file: String, width: Int, height: Int, channels: Int)?
        let table = byteToUnit
        for (label, dir) in classDirs.enumerated() {
            let folder = path + "/" + dir
            let files = try DataError.converting { try FileSystem.list(folder) }.filter {
                $0.lowercased().hasSuffix(".png") && FileSystem.isRegularFile(folder + "/" + $0)
            }
            guard !files.isEmpty else { throw DataError(file: folder, "class folder has no .png files") }
            for name in files {
                let file = folder + "/" + name
                let image: Image
                do {
                    image = try Image.readPNG(path: file)
                } catch let e as FormatError {
                    throw DataError(sanitizing: e.message.hasPrefix(file) ? e.message : file + ": " + e.message)
                }
                var c = image.channels
                if c == 2 || c == 4 {
                    var opaque = true
                    var k = c - 1
                    while k < image.pixels.count { if image.pixels[k] != 255 { opaque = false; break }; k += c }
                    guard opaque else {
                        throw DataError(file: file, "image has a non-opaque alpha channel; save it as gray or RGB without transparency")
                    }
                    c -= 1
                }
                if let f = first {
                    guard image.width == f.width, image.height == f.height else {
                        throw DataError(file: file, "image is \(image.width)x\(image.height), but \(f.file) is \(f.width)x\(f.height); all images must share one size")
                    }
                    guard c == f.channels else {
                        throw DataError(file: file, "image has \(c) color channel(s), but \(f.file) has \(f.channels); convert all to gray or all to RGB")
                    }
                } else {
                    first = (file, image.width, image.height, c)
                }
                // Interleaved HWC (with optional alpha) to planar CHW.
                let plane = image.width * image.height, stride = image.channels
                let base = images.count
                images.append(contentsOf: repeatElement(0, count: plane * c))
                image.pixels.withUnsafeBufferPointer { px in
                    images.withUnsafeMutableBufferPointer { dst in
                        for ch in 0..<c {
                            for p in 0..<plane { dst[base + ch * plane + p] = table[Int(px[p * stride + ch])] }
                        }
                    }
                }
                labels.append(label)
            }
        }
        guard let f = first else { throw DataError(file: path, "no images") }
        return try ImageDataset(images: images, labels: labels, channels: f.channels, height: f.height, width: f.width,
                                classes: classDirs.count, classNames: classDirs)
    }

    /// Writes the data set as a PNG folder that `pngFolder` reads back into the same data set (exactly,
    /// for data from 8-bit sources): one subfolder per class named `<index>_<class name>` (the index
    /// zero-padded so sorted order is label order; "/" and control characters in names become "_"),
    /// images named by their zero-padded index in the data set. Values map back to bytes with
    /// `unitToByte`. `limitPerClass` keeps only the first images of each class (e.g. a preview grid
    /// of samples); classes with no images get no folder. Existing files of the same names are replaced.
    public func writePNGFolder(_ path: String, limitPerClass: Int? = nil) throws {
        guard channels == 1 || channels == 3 else {
            throw DataError(file: path, "PNG export needs 1 or 3 channels, the data set has \(channels)")
        }
        try DataError.converting { try FileSystem.makeDirectories(path) }
        let classDigits = String(classes - 1).count, imageDigits = String(count - 1).count
        var written = [Int](repeating: 0, count: classes)
        var madeFolder = [Bool](repeating: false, count: classes)
        let plane = height * width
        for i in 0..<count {
            let label = labels[i]
            if let limit = limitPerClass, written[label] >= limit { continue }
            let folder = path + "/" + Self.padded(label, classDigits) + "_" + Self.safeName(classNames[label])
            if !madeFolder[label] {
                try DataError.converting { try FileSystem.makeDirectories(folder) }
                madeFolder[label] = true
            }
            var pixels = [UInt8](repeating: 0, count: plane * channels)
            let src = image(i), s0 = src.startIndex
            for ch in 0..<channels {
                for p in 0..<plane { pixels[p * channels + ch] = Self.unitToByte(src[s0 + ch * plane + p]) }
            }
            let file = folder + "/" + Self.padded(i, imageDigits) + ".png"
            do {
                try Image(width: width, height: height, channels: channels, pixels: pixels).writePNG(path: file)
            } catch let e as FormatError {
                throw DataError(sanitizing: e.message)
            }
            written[label] += 1
        }
    }

    static func padded(_ v: Int, _ digits: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, digits - s.count)) + s
    }

    static func safeName(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars {
            out.unicodeScalars.append(scalar == "/" || scalar.value < 0x20 || scalar.value == 0x7F ? "_" : scalar)
        }
        return out
    }

    // MARK: - NumPy arrays

    /// Images from a `.npy` array of shape [n, H, W] (one channel) or [n, C, H, W] (channels first,
    /// C = 1 ... 4), and labels from a `.npy` array of shape [n] of integers (uint8, int32, int64, or
    /// floats holding whole numbers). uint8 images are scaled from 0 ... 255 to [−1, 1]; float32 /
    /// float64 images are taken as already in [−1, 1] and refused when a value lies outside
    /// [−1.001, 1.001] or is not finite, or when none is negative (floats in 0 ... 255 or 0 ... 1 are the usual mistake: save
    /// uint8, or rescale to x / 127.5 − 1). Without labels every image gets class 0 of 1 (an
    /// unconditional set). `classes` defaults to the largest label + 1.
    public static func npy(images: String, labels: String?, classes: Int? = nil) throws -> ImageDataset {
        let array = try readNPY(images)
        let shape = array.shape
        let (n, c, h, w): (Int, Int, Int, Int)
        switch shape.count {
        case 3: (n, c, h, w) = (shape[0], 1, shape[1], shape[2])
        case 4:
            (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
            guard (1...4).contains(c) else {
                let hint = (1...4).contains(shape[3]) ? "; it looks channels-last (NHWC): transpose to [n, C, H, W]" : ""
                throw DataError(file: images, "\(c) channels in shape \(IDX.shapeText(shape)) (expected [n, C, H, W] with C 1 to 4)\(hint)")
            }
        default:
            throw DataError(file: images, "image array has shape \(IDX.shapeText(shape)); expected [n, H, W] or [n, C, H, W]")
        }
        guard n >= 1, h >= 1, w >= 1 else { throw DataError(file: images, "image array of shape \(IDX.shapeText(shape)) holds no pixels") }
        let values: [Float]
        switch array.descr {
        case "|u1", "<u1":
            let table = byteToUnit
            values = array.floats.map { table[Int($0)] }
        case "<f4", "<f8":
            values = array.floats
            if let bad = values.firstIndex(where: { !$0.isFinite || abs($0) > 1.001 }) {
                throw DataError(file: images, "float image value \(values[bad]) at flat index \(bad) is outside [-1, 1]; "
                    + "float arrays must already be scaled to [-1, 1] (save uint8 0-255 to have them scaled)")
            }
            // torchvision's ToTensor gives [0, 1]: taken as [-1, 1], every image would train as a washed-out one.
            if values.allSatisfy({ $0 >= 0 }), values.contains(where: { $0 > 0 }) {
                throw DataError(file: images, "every float image value lies in [0, 1] (torchvision's convention); float arrays "
                    + "must be scaled to [-1, 1]: save x * 2 - 1, or uint8 0-255 to have them scaled")
            }
        default:
            throw DataError(file: images, "image dtype \(array.descr) is not supported (use uint8, float32 or float64)")
        }
        var labelValues = [Int](repeating: 0, count: n)
        if let labels {
            let l = try readNPY(labels)
            guard l.shape == [n] else {
                throw DataError(file: labels, "label array has shape \(IDX.shapeText(l.shape)), expected [\(n)] for the \(n) images of \(images)")
            }
            let d = l.doubles
            for (i, v) in d.enumerated() {
                guard v.isFinite, v >= 0, v == v.rounded(), v < 1e9 else {
                    throw DataError(file: labels, "label \(v) of image \(i) is not a non-negative whole number")
                }
                labelValues[i] = Int(v)
            }
        }
        let k = classes ?? ((labelValues.max() ?? 0) + 1)
        if let bad = labelValues.firstIndex(where: { $0 >= k }), let labels {
            throw DataError(file: labels, "label \(labelValues[bad]) of image \(bad) is out of range for \(k) classes")
        }
        return try ImageDataset(images: values, labels: labelValues, channels: c, height: h, width: w, classes: k)
    }

    static func readNPY(_ path: String) throws -> NPYArray {
        do {
            return try NPYArray.read(path: path)
        } catch let e as FormatError {
            throw DataError(sanitizing: e.message.hasPrefix(path) ? e.message : path + ": " + e.message)
        }
    }
}

/// Epoch-style index sampling: each epoch is a fresh random permutation of 0 ..< count, seeded by
/// (seed, epoch) alone, and `next(n)` hands out the next n indices of it, carrying on into the next
/// epoch's permutation when one runs out (so every index appears exactly once per epoch and a batch
/// may straddle two epochs).
///
/// The state is (seed, epoch, position): save `state` in a checkpoint and `init(count:state:)`
/// continues with exactly the indices the original would have produced.
public struct BatchSampler: Equatable, Sendable {
    /// Everything needed to resume; `count` is kept to catch a checkpoint resumed on another data set.
    public struct State: Equatable, Sendable, Codable {
        public var count: Int
        public var seed: UInt64
        public var epoch: Int
        public var position: Int

        public init(count: Int, seed: UInt64, epoch: Int, position: Int) {
            self.count = count
            self.seed = seed
            self.epoch = epoch
            self.position = position
        }

        /// "count=60000 seed=1 epoch=3 position=128": one line for checkpoint metadata.
        public var text: String { "count=\(count) seed=\(seed) epoch=\(epoch) position=\(position)" }

        /// Parses `text`.
        public init(text: String) throws {
            var fields: [String: String] = [:]
            for part in text.split(separator: " ") {
                let kv = part.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw DataError("sampler state: cannot parse '\(text)'") }
                fields[String(kv[0])] = String(kv[1])
            }
            guard let c = fields["count"].flatMap({ Int($0) }), let s = fields["seed"].flatMap({ UInt64($0) }),
                  let e = fields["epoch"].flatMap({ Int($0) }), let p = fields["position"].flatMap({ Int($0) }) else {
                throw DataError("sampler state: cannot parse '\(text)' (expected count=, seed=, epoch=, position=)")
            }
            self.init(count: c, seed: s, epoch: e, position: p)
        }
    }

    public let count: Int
    public let seed: UInt64
    /// Epochs completed so far (the current permutation is epoch `epoch`'s).
    public private(set) var epoch: Int
    /// Indices of the current epoch already handed out.
    public private(set) var position: Int
    /// The current epoch's permutation.
    public private(set) var order: [Int]

    public init(count: Int, seed: UInt64) {
        precondition(count >= 1, "a sampler needs at least one item")
        self.count = count
        self.seed = seed
        epoch = 0
        position = 0
        order = BatchSampler.permutation(count: count, seed: seed, epoch: 0)
    }

    /// Resumes from a saved state; throws when it was saved for a data set of another size or is invalid.
    public init(count: Int, state: State) throws {
        guard count >= 1 else { throw DataError("sampler: a data set of \(count) items cannot be sampled") }
        guard state.count == count else {
            throw DataError("sampler state was saved for \(state.count) items, the data set has \(count)")
        }
        guard state.epoch >= 0, (0..<count).contains(state.position) else {
            throw DataError("sampler state epoch \(state.epoch), position \(state.position) is invalid for \(count) items")
        }
        self.count = count
        seed = state.seed
        epoch = state.epoch
        position = state.position
        order = BatchSampler.permutation(count: count, seed: seed, epoch: epoch)
    }

    public var state: State { State(count: count, seed: seed, epoch: epoch, position: position) }

    /// The next `n` indices (n ≥ 0).
    public mutating func next(_ n: Int) -> [Int] {
        precondition(n >= 0, "negative batch size \(n)")
        var out: [Int] = []
        out.reserveCapacity(n)
        while out.count < n {
            let take = min(n - out.count, count - position)
            out += order[position..<(position + take)]
            position += take
            if position == count {
                epoch += 1
                position = 0
                order = BatchSampler.permutation(count: count, seed: seed, epoch: epoch)
            }
        }
        return out
    }

    /// Fisher–Yates with one 64-bit draw per swap from the stream `split(epoch)` of `seed`.
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var rng = RandomGenerator(seed: seed).split(UInt64(epoch))
        var p = Array(0..<count)
        var i = count - 1
        while i > 0 {
            p.swapAt(i, rng.int(below: i + 1))
            i -= 1
        }
        return p
    }
}
