import TensorCore
import NN
import TVM
import Data
import Formats
import Eval

/// `tvm sample`: images from a training checkpoint, as a PNG grid, an NPY array and a folder of PNGs per class.
struct SampleCommand: Command {
    let name = "sample"
    let summary = "sample images from an image-training checkpoint (PNG grid, NPY, PNG folder)"
    let help = """
        tvm sample --checkpoint FILE [--n 100] [--nfe 1] [--cfg W] [--classes 0,1,2] [--seed N] [--out grid.png]
                   [--npy FILE] [--folder DIR] [--weights ema|ema:SCHEDULE|student|teacher] [--columns 10]
                   [--noise FILE.npy] [--vae DIR] [--cfg-interval LO,HI] [--tf32|--bf16]
          Samples images from a training checkpoint (by default with the evaluation EMA; ema:SCHEDULE picks one of
          the extra EMAs the run kept, e.g. ema:power:32; teacher is the EMA target) in --nfe steps with
          guidance scale --cfg (a flow-matching checkpoint: --nfe Euler steps, each evaluating the class and the null
          class for classifier-free guidance; a MeanFlow checkpoint has its guidance trained in and ignores --cfg; an
          iMF checkpoint takes --cfg as its guidance condition, and --cfg-interval LO,HI the times where that
          guidance acts, 0,1 meaning everywhere; the official ImageNet choice is 0.4,0.65 at --cfg 8). --cfg and
          --cfg-interval default to the run's own (tvm train's --sample-cfg, itself the training w or the middle of
          --cfg-range, and --sample-cfg-interval), which its grids and FID used; else 2 and 0,1.
          Classes: --classes, spread over the n samples in blocks (default all classes);
          --classes random draws each sample's class uniformly at random (the official FID protocol).
          Writes a PNG grid (--out, default samples.png), and optionally an NPY [n, C, H, W] of the sampler's float
          values (nominally in [-1, 1] but not clamped: they are what the official sampler returns, for parity
          checks; the PNGs clip to [-1, 1] as the official code does when it saves images) and a folder with one subfolder of PNGs per class. --noise FILE.npy [n, C, H, W] starts from that noise
          instead of --seed's (n defaults to its rows).
          On CUDA, --tf32 or --bf16 takes the matrix products (and with --bf16 the flash attention and the VAE's
          activations) in that precision, as tvm train does.
          The checkpoint may also be an official network pickle (.pkl) or training state (.pt), read as
          tvm import reads it: --weights ema, student and teacher are then a training state's ema, net and
          ema_target, and the one network of a pickle.
          A checkpoint trained on latents (tvm train --data LATENTS.zip) gives latents; --vae DIR (the SD-VAE folder the
          latent set was made with) decodes them as the official code does (the run's normalisation undone, the VAE
          decoder, (x + 1) / 2 clamped to [0, 1] times 255, truncated): the grid then shows the first 100 images, the
          NPY is uint8 [n, 3, H, W] (what tvm fid takes) and the folder holds the PNGs.
        """

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "sample", args, options: ["checkpoint", "n", "nfe", "cfg", "classes", "seed", "out", "npy",
                                                                  "folder", "weights", "columns", "noise", "vae", "cfg-interval"],
                              switches: ["tf32", "bf16"])
        try a.expectPositional(0, "no positional arguments (use --checkpoint FILE)")
        // Before any model is loaded: a VAE made under bf16 products keeps its convolution weights in bf16 alone.
        _ = applyProductPrecision(a)
        guard let path = a.string("checkpoint") else { throw CLIError("tvm sample needs --checkpoint FILE", usage: true) }
        let givenNoise = try a.string("noise").map { try NPYArray.read(path: $0) }
        let n = try a.int("n", default: givenNoise?.shape.first ?? 100, range: 1...1_000_000)
        let nfe = try a.int("nfe", default: 1, range: 1...10_000)
        let givenCFG = try a.optionalDouble("cfg", range: 1e-6...1e6)
        let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        let columns = try a.int("columns", default: 10, range: 1...10_000)
        let weightsName = a.string("weights", default: "ema")
        // ema:SCHEDULE names an extra EMA by its schedule, written as the checkpoint writes it (power:8.0 is power:8).
        let extraEMA = weightsName.lowercased().hasPrefix("ema:") ? (try? parseEMA(String(weightsName.dropFirst(4))))?.description : nil
        let part = ["ema": TrainingCheckpoint.Part.ema, "student": .student, "teacher": .teacher][weightsName.lowercased()]
        guard part != nil || extraEMA != nil else {
            throw CLIError("--weights must be ema, ema:SCHEDULE, student or teacher, got '\(weightsName)'", usage: true)
        }
        // Every destination is checked before anything is computed or written, so a bad --npy or --folder
        // does not leave a fresh grid next to an error.
        let out = a.string("out", default: "samples.png")
        try checkOutputFile(out, flag: "--out")
        if let npy = a.string("npy") { try checkOutputFile(npy, flag: "--npy") }
        if let folder = a.string("folder"), FileSystem.exists(folder) && !FileSystem.isDirectory(folder) {
            throw CLIError("--folder \(folder): exists and is not a folder")
        }
        guard FileSystem.exists(path) else { throw CLIError("\(path): no such file") }
        let parts = part.map { [$0] } ?? []
        let ck = try TrainingCheckpoint.isOfficial(path: path) ? TrainingCheckpoint.importing(path: path, parts: parts)
            : TrainingCheckpoint.read(path: path, parts: parts, extraEMAs: extraEMA.map { [$0] } ?? [])
        guard let weights = part.map({ ck[$0] }) ?? ck.extraEMAs[extraEMA!] else {
            throw CLIError("\(path): no extra EMA \(extraEMA!) (an official file has none)")
        }
        let model = ck.model
        let K = model.numClasses
        guard K >= 1 else { throw CLIError("\(path): the model has no classes; tvm sample needs a class-conditional checkpoint") }
        var classList = Array(0..<max(K, 1))
        var rng = RandomGenerator(seed: seed)
        let randomClasses = a.string("classes")?.lowercased() == "random"
        if let s = a.string("classes"), !randomClasses {
            let parts = commaSeparated(s).map { Int($0) }
            guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0! >= 0 && $0! < K }) else {
                throw CLIError("--classes must be a comma-separated list of class indices in 0..<\(K), got '\(s)'", usage: true)
            }
            classList = parts.map { $0! }
        }
        let labels = randomClasses ? (0..<n).map { _ in rng.int(below: K) } : (0..<n).map { classList[$0 * classList.count / n] }
        let decoder = try a.string("vae").map { try LatentDecoder(vae: $0, checkpoint: path, training: ck.training, model: model) }
        let net = try DiT(model)
        // The run's own sampling guidance unless given: what its grids and FID used.
        let cfg = givenCFG ?? ck.training["sample_cfg"]?.double ?? 2
        let interval = try a.string("cfg-interval").map { text -> ClosedRange<Double> in
            guard model.guidanceInterval else {
                throw CLIError("--cfg-interval: \(path) has no guidance-interval input (an iMF checkpoint of this version has)", usage: true)
            }
            return try parseGuidanceInterval(text, flag: "cfg-interval")
        } ?? ck.training["sample_cfg_interval"]?.string.flatMap { try? parseGuidanceInterval($0, flag: "cfg-interval") }
        let scaled = ck.training["scaled_param"]?.bool ?? true
        // Each method samples its own way (a flow-matching checkpoint: --nfe Euler steps with classifier-free guidance).
        let methodName = ck.training["method"]?.string ?? Method.tvm.rawValue
        guard let method = Method(rawValue: methodName) else { throw CLIError("\(path): unknown training method '\(methodName)'") }
        let C = model.inChannels, R = model.inputSize, size = C * R * R
        let noise = givenNoise?.floats ?? rng.normalFloats(n * size)
        if let givenNoise, givenNoise.shape != [n, C, R, R] {
            throw CLIError("--noise \(a.string("noise")!): shape \(Checkpoint.shapeText(givenNoise.shape)), the model samples "
                           + "\(Checkpoint.shapeText([n, C, R, R])) for --n \(n)")
        }
        if givenNoise != nil, let k = noise.firstIndex(where: { !$0.isFinite }) {
            throw CLIError("--noise \(a.string("noise")!): a non-finite value at flat index \(k)")
        }
        var samples: [Float] = []
        var decoded: [UInt8] = []
        if decoder == nil { samples.reserveCapacity(n * size) }
        let chunk = 256
        var start = 0
        while start < n {
            let m = min(chunk, n - start)
            let x = Tensor(Array(noise[(start * size)..<((start + m) * size)]), shape: [m, C, R, R])
            let cond = Conditioning.sampling(labels: Array(labels[start..<(start + m)]), classes: K, guidance: cfg, interval: interval)
            let z = sampleModel(trainedBy: method, network: net, params: weights, noise: x, steps: nfe, cond: cond,
                                guidance: cfg, scaledParameterization: scaled)
            if let decoder { decoded += try decoder.pixels(z) } else { samples += z.floats }
            start += m
        }
        // Decoded images: 8-bit pixels, shown and written through the [-1, 1] floats they stand for exactly.
        let (channels, side) = decoder.map { ($0.vae.config.outChannels, R * $0.vae.config.downsamplingFactor) } ?? (C, R)
        if decoder != nil { samples = decoded.map { ImageDataset.byteToUnit[Int($0)] } }
        let shown = decoder == nil ? n : min(n, 100)
        try writeImageGrid(Array(samples[0..<(shown * channels * side * side)]), n: shown, channels: channels, side: side,
                           columns: columns, path: out)
        var wrote = [out]
        if let npy = a.string("npy") {
            if decoder != nil {
                try NPYArray.write(path: npy, shape: [n, channels, side, side], bytes: decoded)
            } else {
                try NPYArray.write(path: npy, shape: [n, C, R, R], floats: samples)
            }
            wrote.append(npy)
        }
        if let folder = a.string("folder") {
            let names = ck.training["class_names"]?.array?.compactMap(\.string)
            try FileSystem.makeDirectories(folder)
            let set = try ImageDataset(images: samples, labels: labels, channels: channels, height: side, width: side, classes: K,
                                       classNames: names?.count == K ? names : nil)
            try set.writePNGFolder(folder)
            wrote.append(folder + "/")
        }
        Console.info("\(n) samples, \(nfe) NFE, cfg \(cfg), \(weightsName) weights of step \(ck.step): wrote \(wrote.joined(separator: ", "))")
    }
}

/// The SD-VAE decoding of a latent run's samples (`tvm sample --vae`): the run's normalisation undone, the decoder,
/// the official conversion to 8-bit pixels.
struct LatentDecoder {
    let vae: AutoencoderKL
    let normalization: LatentNormalization

    init(vae directory: String, checkpoint: String, training: JSONValue, model: DiTConfig) throws {
        guard let normalization = try latentNormalization(recorded: training, source: checkpoint) else {
            throw CLIError("--vae \(directory): \(checkpoint) was trained on images, not latents; there is nothing to decode")
        }
        vae = try AutoencoderKL(directory: directory)
        guard vae.config.latentChannels == model.inChannels, normalization.channels == model.inChannels else {
            throw CLIError("\(directory)/\(AutoencoderKL.configFileName): the VAE has \(vae.config.latentChannels) latent channels, "
                           + "the model of \(checkpoint) \(model.inChannels)")
        }
        self.normalization = normalization
    }

    /// The decoder of a run being trained (`tvm train --vae`), which checks the channels itself.
    init(vae: AutoencoderKL, normalization: LatentNormalization) {
        self.vae = vae
        self.normalization = normalization
    }

    /// Decoded images in [-1, 1] (not clamped) of the network's latents `z` [N, C, h, w].
    func decoded(_ z: Tensor) throws -> Tensor {
        try vae.decode(normalization.denormalized(z))
    }

    /// 8-bit pixels [N, 3, H, W] of the network's latents `z` [N, C, h, w].
    func pixels(_ z: Tensor) throws -> [UInt8] {
        try NN.pixels(fromDecoded: decoded(z))
    }

    /// The 8-bit images of `z`, as FID takes them.
    func images(_ z: Tensor) throws -> ByteImages {
        let side = z.shape[2] * vae.config.downsamplingFactor
        return try ByteImages(pixels: pixels(z), count: z.shape[0], channels: vae.config.outChannels, height: side, width: side)
    }
}

/// A file that `flag` will write: its folder must exist, and it must not itself be a folder.
func checkOutputFile(_ path: String, flag: String) throws {
    if FileSystem.isDirectory(path) { throw CLIError("\(flag) \(path): is a folder, not a file") }
    let folder = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    guard FileSystem.isDirectory(folder.isEmpty ? "/" : folder) else {
        throw CLIError("\(flag) \(path): the folder \(folder) does not exist")
    }
}
