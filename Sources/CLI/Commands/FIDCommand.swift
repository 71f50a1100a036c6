import TensorCore
import Data
import Eval
import Formats

/// `tvm fid`: the Frechet Inception Distance between generated images and a data set, Inception-v3 run here.
struct FIDCommand: Command {
    let name = "fid"
    let summary = "Frechet Inception Distance between generated images and a data set (Inception-v3 run here)"
    let help = """
        tvm fid GENERATED --dataset fashion-mnist|mnist|DIR|FILE.npy|FILE.zip | --ref img256.pkl|FILE.npz [--data-dir DIR] [--pad 2] [--split train|test]
                [--limit N] [--weights FILE] [--batch N] [--cache DIR | --no-cache] [--save-features FILE.npy]
          Frechet Inception Distance between GENERATED (an .npy [n, C, H, W] or [n, H, W] as `tvm sample --npy`
          writes, or a folder with one subfolder of PNGs per class as `tvm sample --folder` writes) and a data set:
          Fashion-MNIST (--data-dir, default \(ImageDataset.fashionMNISTDirectory); --split train, the default, or
          test), MNIST (IDX files in --data-dir), a class-folder of PNGs, an .npy, or a data set ZIP in the official
          format (the cropped RGB set of tvm prepare, the reference of the paper's FID-50k: compare 50000 samples of
          tvm sample --vae DIR --n 50000 --classes random --npy FILE; the ZIP is read a batch at a time, so a set
          of any size fits in memory). IDX images are padded by --pad pixels (default 2, as `tvm train` pads them,
          so they match the samples of a model trained on them).
          Input scaling: every image is taken as 8-bit pixels (float arrays hold [-1, 1] and are rounded as PNG
          export rounds them; values beyond +-1 are clamped (with a note); non-negative floats above 1.5 are refused
          as 0-255 data; uint8 arrays are used as they are), gray is repeated to RGB, resized to 299x299 with
          TensorFlow 1's bilinear sampling and scaled to v / 128 - 1, as the original TensorFlow FID code does.
          The network is Inception-v3 with the TensorFlow weights of 2015-12-05, run by this program on the GPU
          (--device auto, the default) or the CPU. --weights FILE (default $TVM_INCEPTION_WEIGHTS, else
          ~/.cache/terminalvelocity/inception-2015-12-05.safetensors) is made once by scripts/convert_inception.py
          (README, "FID"). The data set's statistics are cached (--cache DIR, default $XDG_CACHE_HOME/terminalvelocity/fid
          or ~/.cache/terminalvelocity/fid) under a key of the exact pixels, the weights and the preprocessing, so a
          second run skips that pass. --limit N uses the first N images of each set. --batch N images per network
          pass (default 100 on a GPU, 8 on the CPU). --save-features FILE.npy writes the generated images'
          features [n, 2048]. Prints "FID <value>" on stdout.
          --ref FILE instead of --dataset takes published reference statistics (mu [2048], sigma [2048, 2048]): the
          EDM pickle (img256.pkl, img512.pkl; read as data, nothing in it is run) or ADM's .npz reference batch
          (VIRTUAL_imagenet256_labeled.npz).
        """

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "fid", args, options: ["dataset", "ref", "data-dir", "pad", "split", "limit", "weights", "batch",
                                                              "cache", "save-features"], switches: ["no-cache"])
        try a.expectPositional(1, "one positional argument, the generated images (FILE.npy or a folder)")
        if a.string("ref") != nil && a.string("dataset") != nil { throw CLIError("give --dataset or --ref, not both", usage: true) }
        // Published statistics stand for the reference images.
        let published = try a.string("ref").map { path -> ReferenceStatistics in
            do { return try ReferenceStatistics.read(path: path) } catch let e as EvalError { throw CLIError(e.message) }
        }
        if let published, published.dimension != InceptionV3.featureCount {
            throw CLIError("--ref \(a.string("ref")!): statistics of \(published.dimension) features; Inception-v3 gives \(InceptionV3.featureCount)")
        }
        guard let datasetSpec = a.string("dataset") ?? a.string("ref") else {
            throw CLIError("tvm fid needs --dataset fashion-mnist|mnist|DIR|FILE.npy (the reference images) or --ref FILE", usage: true)
        }
        let pad = try a.int("pad", default: 2, range: 0...1024)
        let split = a.string("split", default: "train").lowercased()
        guard split == "train" || split == "test" else { throw CLIError("--split must be train or test, got '\(split)'", usage: true) }
        let limit = a.string("limit") == nil ? nil : try a.int("limit", default: 2, range: 2...Int.max)
        let batch = try a.int("batch", default: activeCUDA != nil ? 100 : 8, range: 1...100_000)
        if a.has("no-cache") && a.string("cache") != nil { throw CLIError("give --cache DIR or --no-cache, not both", usage: true) }
        let weightsPath = a.string("weights") ?? FIDFiles.defaultWeightsPath
        guard FileSystem.exists(weightsPath) else { throw CLIError(FIDFiles.missingWeights(weightsPath) + "; or pass --weights FILE") }

        let generatedPath = a.positional[0]
        var generated = try loadFIDImages(generatedPath, dataDir: a.string("data-dir"), pad: pad, train: split == "train")
        if let limit { generated = generated.prefix(limit) }
        let reference = published == nil
            ? try loadFIDReference(datasetSpec, dataDir: a.string("data-dir"), pad: pad, train: split == "train", limit: limit) : nil
        for (count, name) in [(generated.count, generatedPath)] + (reference.map { [($0.count, datasetSpec)] } ?? []) where count < 2 {
            throw CLIError("\(name): FID needs at least 2 images, got \(count)")
        }
        let network = try InceptionV3(path: weightsPath)
        let extractor = FIDFeatureExtractor(network: network, batchSize: batch)
        Console.info("FID: \(generated.count) generated images \(generated.channels)x\(generated.height)x\(generated.width) vs "
            + (reference.map { "\($0.count) of \(datasetSpec) \($0.channels)x\($0.height)x\($0.width); " } ?? "the statistics of \(datasetSpec); ")
            + "Inception-v3 on \(deviceDescription()), batch \(batch)")

        // The reference statistics: from the cache when its key (weights, preprocessing, exact pixels) matches.
        let cache = FIDReferenceStatistics(cacheDirectory: a.has("no-cache") ? nil : a.string("cache") ?? FIDFiles.defaultCacheDirectory)
        let start = now()
        var referenceStats: FeatureStatistics?
        var imagesRun = 0
        if let reference {
            let referenceBar = ProgressBar(datasetSpec, total: reference.count)
            let (stats, computed) = try cache.statistics(of: reference, named: datasetSpec, extractor: extractor,
                                                         note: Console.info) { referenceBar.update(images: $0) }
            referenceStats = stats
            imagesRun = computed ? reference.count : 0
        }

        let progress = ProgressBar(generatedPath, total: generated.count)
        var saved: [Float] = []
        let keep = a.string("save-features") != nil
        let generatedStats = try extractor.statistics(generated) { done, features in
            if keep { saved += features.floats }
            progress.update(images: done)
        }
        imagesRun += generated.count
        if let path = a.string("save-features") {
            try NPYArray.write(path: path, shape: [generated.count, InceptionV3.featureCount], floats: saved)
            Console.info("wrote the features of the generated images to \(path)")
        }
        let fid = try referenceStats.map { try FID.distance(generatedStats, $0) } ?? FID.distance(generatedStats, published!)
        let seconds = now() - start
        Console.info("\(imagesRun) images through Inception in \(fmt(seconds, 1)) s (\(fmt(Double(imagesRun) / Swift.max(seconds, 1e-9), 1)) images/s, "
            + "including the distance)")
        Console.out("FID \(fmt(fid, 4))")
    }
}

/// An .npy of images as 8-bit pixels: uint8 used as is, floats taken as [-1, 1] (see the help text).
func readNPYImages(_ path: String) throws -> ByteImages {
    let array = try NPYArray.read(path: path)
    let s = array.shape
    let (n, c, h, w): (Int, Int, Int, Int)
    switch s.count {
    case 3: (n, c, h, w) = (s[0], 1, s[1], s[2])
    case 4:
        (n, c, h, w) = (s[0], s[1], s[2], s[3])
        guard c == 1 || c == 3 else {
            let hint = s[3] == 1 || s[3] == 3 ? "; it looks channels-last (NHWC): transpose to [n, C, H, W]" : ""
            throw CLIError("\(path): shape \(s) has \(c) channels; FID needs [n, 1 or 3, H, W] or [n, H, W]\(hint)")
        }
    default:
        throw CLIError("\(path): image array has shape \(s); expected [n, H, W] or [n, C, H, W]")
    }
    guard n >= 1, h >= 1, w >= 1 else { throw CLIError("\(path): image array of shape \(s) holds no images") }
    switch array.descr {
    case "|u1", "<u1":
        return try ByteImages(pixels: array.floats.map { UInt8($0) }, count: n, channels: c, height: h, width: w)
    case "<f4", "<f8":
        let v = array.floats
        // Non-negative floats reaching past 1.5 are 0-255 (or similar) data saved as floats, not [-1, 1] images
        // a little off range: refuse those rather than clamp them all to white.
        if !v.contains(where: { $0 < 0 }), let k = v.firstIndex(where: { $0 > 1.5 }) {
            throw CLIError("\(path): value \(v[k]) at flat index \(k) is far outside [-1, 1] and no value is negative; float "
                           + "images must be scaled to [-1, 1] (save uint8 0-255 otherwise)")
        }
        let outside = v.reduce(0) { $0 + (Swift.abs($1) > 1 ? 1 : 0) }
        if outside > 0 {
            Console.info("note: \(path): \(outside) of \(v.count) values (\(fmt(100 * Double(outside) / Double(v.count), 2))%) lie "
                         + "outside [-1, 1] and are clamped")
        }
        do { return try ByteImages(unitValues: v, count: n, channels: c, height: h, width: w) } catch let e as EvalError {
            throw EvalError("\(path): \(e.message)")
        }
    default:
        throw CLIError("\(path): image dtype \(array.descr) is not supported (use uint8, float32 or float64)")
    }
}

/// The images of a data set ZIP in the official format (`tvm prepare` without --vae), all of one size, as 8-bit RGB.
func readDatasetZIP(_ path: String) throws -> ByteImages {
    let archive = try DatasetArchiveImages(path: path)
    return try archive.images(0..<archive.count)
}

/// The reference images of FID (the first `limit`): a data set ZIP read a batch at a time (an ImageNet set is larger
/// than memory as pixels), any other set as `loadFIDImages` reads it.
func loadFIDReference(_ spec: String, dataDir: String?, pad: Int, train: Bool, limit: Int?) throws -> any FIDImageSet {
    if spec.lowercased().hasSuffix(".zip") { return try DatasetArchiveImages(path: spec, limit: limit) }
    let images = try loadFIDImages(spec, dataDir: dataDir, pad: pad, train: train)
    return limit.map { images.prefix($0) } ?? images
}

/// One image set for FID: a named IDX data set, an .npy, or a class-folder of PNGs.
func loadFIDImages(_ spec: String, dataDir: String?, pad: Int, train: Bool) throws -> ByteImages {
    switch spec.lowercased() {
    case "fashion-mnist":
        let dir = dataDir ?? ImageDataset.fashionMNISTDirectory
        return try ByteImages(dataset: ImageDataset.fashionMNIST(directory: dir, train: train, pad: pad))
    case "mnist":
        guard let dir = dataDir else { throw CLIError("--dataset mnist needs --data-dir DIR with the IDX files", usage: true) }
        return try ByteImages(dataset: ImageDataset.fashionMNIST(directory: dir, train: train, pad: pad))
    default:
        if spec.lowercased().hasSuffix(".npy") { return try readNPYImages(spec) }
        if spec.lowercased().hasSuffix(".zip") { return try readDatasetZIP(spec) }
        guard FileSystem.isDirectory(spec) else {
            throw CLIError("\(spec): not fashion-mnist, mnist, an .npy file or a folder of PNG class folders")
        }
        return try ByteImages(dataset: ImageDataset.pngFolder(spec))
    }
}
