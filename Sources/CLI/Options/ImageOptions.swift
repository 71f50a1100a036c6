import NN
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
    return l == "fashion-mnist" || l == "mnist" || l.hasSuffix(".npy") || FileSystem.isDirectory(v)
}

/// The image data set of `--data` (with `--data-dir`, `--pad`, `--labels`, `--classes`).
func loadImageData(_ a: Arguments) throws -> ImageDataset {
    let name = a.string("data", default: "fashion-mnist")
    // Options of another kind of data would be silently ignored; say so instead.
    let idx = ["fashion-mnist", "mnist"].contains(name.lowercased()), npy = name.lowercased().hasSuffix(".npy")
    for (option, applies, kind) in [("data-dir", idx, "IDX data (--data fashion-mnist or mnist)"), ("pad", idx, "IDX data (--data fashion-mnist or mnist)"),
                                    ("labels", npy, "--data FILE.npy"), ("classes", npy, "--data FILE.npy")]
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
        if name.lowercased().hasSuffix(".npy") {
            let classes = a.string("classes") == nil ? nil : try a.int("classes", default: 1, range: 1...(1 << 24))
            return try ImageDataset.npy(images: name, labels: a.string("labels"), classes: classes)
        }
        return try ImageDataset.pngFolder(name)
    }
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
