import NN
import TVM
import Data
import Formats

/// Whether `tvm train` was given image data (`--data fashion-mnist|mnist|DIR|FILE.npy`). The name of a 2-D
/// distribution wins over a folder of that name (a first `--out moons` run leaves one); `./moons` names the folder.
func isImageTraining(_ args: [String]) -> Bool {
    var value: String?
    for (i, a) in args.enumerated() {
        if a == "--data", i + 1 < args.count { value = args[i + 1] }
        else if a.hasPrefix("--data=") { value = String(a.dropFirst("--data=".count)) }
    }
    guard let v = value else { return false }
    let l = v.lowercased()
    if (try? Toy2D.named(v)) != nil { return false }
    return l == "fashion-mnist" || l == "mnist" || l.hasSuffix(".npy") || l.hasSuffix(".zip") || FileSystem.isDirectory(v)
}

/// The image data set of `--data` (with `--data-dir`, `--pad`, `--labels`, `--classes`).
func loadImageData(_ a: Arguments) throws -> ImageDataset {
    let name = a.string("data", default: "fashion-mnist")
    // Options of another kind of data would be silently ignored; say so instead.
    let idx = ["fashion-mnist", "mnist"].contains(name.lowercased()), npy = name.lowercased().hasSuffix(".npy")
    let latents = name.lowercased().hasSuffix(".zip")
    for (option, applies, kind) in [("data-dir", idx, "IDX data (--data fashion-mnist or mnist)"), ("pad", idx, "IDX data (--data fashion-mnist or mnist)"),
                                    ("labels", npy, "--data FILE.npy"), ("classes", npy, "--data FILE.npy")]
        + latentOptionNames.map({ ($0, latents, "latent data (--data LATENTS.zip)") })
    where !applies && a.string(option) != nil {
        throw CLIError("--\(option) applies only to \(kind), not to --data \(name)", usage: true)
    }
    // Read only where it applies, so that the options a run records (config.json) hold no option of another kind.
    func pad() throws -> Int { try a.int("pad", default: 2, range: 0...1024) }
    switch name.lowercased() {
    case "fashion-mnist":
        return try ImageDataset.fashionMNIST(directory: a.string("data-dir", default: ImageDataset.fashionMNISTDirectory), pad: try pad())
    case "mnist":
        guard let dir = a.string("data-dir") else { throw CLIError("--data mnist needs --data-dir DIR with the IDX files", usage: true) }
        let d = try ImageDataset.fashionMNIST(directory: dir, pad: try pad())
        return try ImageDataset(images: d.images, labels: d.labels, channels: d.channels, height: d.height,
                                width: d.width, classes: d.classes)
    default:
        if latents {
            guard FileSystem.isRegularFile(name) else { throw CLIError("--data \(name): no such file") }
            let normalization = try latentNormalization(a).normalization
            return try ImageDataset.latents(name, scale: normalization.scale, bias: normalization.bias)
        }
        if name.lowercased().hasSuffix(".npy") {
            let classes = a.string("classes") == nil ? nil : try a.int("classes", default: 1, range: 1...(1 << 24))
            return try ImageDataset.npy(images: name, labels: a.string("labels"), classes: classes)
        }
        return try ImageDataset.pngFolder(name)
    }
}

/// The options of the latent normalisation (`tvm train --data LATENTS.zip`).
let latentOptionNames = ["latent-mean", "latent-std", "latent-final-mean", "latent-final-std"]

/// The per-channel map from the VAE's latents to the network's, `(x - raw_mean) / raw_std * final_std + final_mean`
/// computed as the official encoder computes it: --latent-mean and --latent-std are the data set's raw statistics
/// (`tvm prepare --stats`; default ImageNet 256's, as the official 256 configs have them), --latent-final-mean and
/// --latent-final-std the target's (default 0 and 1). With the map, the four as a run records them, which
/// `latentNormalization(recorded:)` reads back.
func latentNormalization(_ a: Arguments) throws -> (normalization: LatentNormalization, record: [(String, JSONValue)]) {
    let defaults = LatentNormalization.imageNet256Statistics
    func list(_ flag: String, _ fallback: [Double], positive: Bool) throws -> [Double] {
        let text = a.string(flag, default: fallback.map { "\($0)" }.joined(separator: ","))
        let values = commaSeparated(text).map { Double($0) }
        guard !values.isEmpty, values.allSatisfy({ $0 != nil && $0!.isFinite && (!positive || $0! > 0) }) else {
            throw CLIError("--\(flag) must be comma-separated \(positive ? "positive " : "")numbers, one per latent channel, got '\(text)'",
                           usage: true)
        }
        return values.map { $0! }
    }
    let mean = try list("latent-mean", defaults.mean, positive: false), std = try list("latent-std", defaults.std, positive: true)
    guard mean.count == std.count else {
        throw CLIError("--latent-mean has \(mean.count) values and --latent-std \(std.count); give one of each per latent channel", usage: true)
    }
    let finalMean = try a.double("latent-final-mean", default: 0, range: -1e6...1e6)
    let finalStd = try a.double("latent-final-std", default: 1, range: 1e-6...1e6)
    return (LatentNormalization(rawMean: mean, rawStd: std, finalMean: finalMean, finalStd: finalStd),
            TrainingCheckpoint.latentRecord(mean: mean, std: std, finalMean: finalMean, finalStd: finalStd))
}

/// The latent normalisation a run recorded (nil: the run trained on images, not latents).
func latentNormalization(recorded training: JSONValue, source: String) throws -> LatentNormalization? {
    guard let mean = training["latent_mean"]?.array?.compactMap(\.double) else { return nil }
    guard let std = training["latent_std"]?.array?.compactMap(\.double), std.count == mean.count, !mean.isEmpty,
          std.allSatisfy({ $0 > 0 }),
          let finalMean = training["latent_final_mean"]?.double, let finalStd = training["latent_final_std"]?.double else {
        throw CLIError("\(source): the recorded latent normalisation (latent_mean, latent_std, ...) is malformed")
    }
    return LatentNormalization(rawMean: mean, rawStd: std, finalMean: finalMean, finalStd: finalStd)
}

/// The DiT for `data`: `--model NAME` (default S/2), with --hidden/--depth/--heads/--patch overriding it.
func imageModelConfig(_ a: Arguments, data: ImageDataset) throws -> DiTConfig {
    guard data.height == data.width else {
        throw CLIError("the DiT needs square images; the data set's are \(data.width)x\(data.height)")
    }
    let name = a.string("model", default: "S/2")
    // Parsed at a resolution most patch sizes divide (1-10, 12, 14, 15, 16); the data's sizes come next.
    var c: DiTConfig
    do { c = try DiTConfig.named(name, res: 5040, channels: data.channels, classes: data.classes) } catch {
        throw CLIError("\(error)", usage: true)
    }
    c.hidden = try a.int("hidden", default: c.hidden, range: 4...65536)
    c.depth = try a.int("depth", default: c.depth, range: 1...1024)
    c.heads = try a.int("heads", default: c.heads, range: 1...65536)
    c.patch = try a.int("patch", default: c.patch, range: 1...16384)
    c.timeSpecInit = a.has("time-spec-init")
    c.inContext = a.has("in-context")
    c.inputSize = data.height
    c.inChannels = data.channels
    c.numClasses = data.classes
    do { try c.validate() } catch { throw CLIError("\(error)", usage: true) }
    return c
}

/// `--cfg-range LO,HI`.
func parseCFGRange(_ s: String) throws -> (Double, Double) {
    let p = commaSeparated(s).map { Double($0) }
    guard p.count == 2, let lo = p[0], let hi = p[1], lo.isFinite, hi.isFinite, lo > 0, lo <= hi else {
        throw CLIError("--cfg-range must be LO,HI with 0 < LO <= HI, got '\(s)'", usage: true)
    }
    return (lo, hi)
}
