import TensorCore
import NN
import Data
import Formats

/// `tvm prepare`: the official dataset tool's `convert` (images to the cropped RGB set), `encode` (to the latent
/// set, with an SD-VAE) and `getstats` (the latent statistics `tvm train` normalises with).
struct PrepareCommand: Command {
    let name = "prepare"
    let summary = "images -> cropped RGB data set (ZIP of PNGs) or SD-VAE latent data set; latent statistics"
    let help = """
        tvm prepare SOURCE --out FILE.zip [--size 256] [--vae DIR [--bf16|--tf32]] [--batch N] [--on-bad-image skip|stop]
                    [--labels FILE] [--class-map FILE] [--max-images N]
        tvm prepare --stats LATENTS.zip [--seed 0]
          SOURCE is a folder of class folders (the ImageNet train layout, n01440764/*.JPEG; classes in sorted folder
          order, or numbered by --class-map FILE, JSON {"name": index} or CSV), a folder with a labels file (--labels,
          or dataset.json in it), or a data set ZIP in the official format (PNGs with dataset.json). JPEG and PNG.
          Every image is made RGB and cropped with the ADM center crop to --size x --size (the official
          --transform=center-crop-dhariwal; an image already of that size is kept as it is).
          Without --vae, FILE.zip is the cropped RGB set in the official format (uncompressed ZIP of PNGs,
          00000/img00000000.png, and dataset.json {"labels": [[name, class], ...]}): what latents are made from and
          what FID reference statistics are computed from (tvm fid --dataset FILE.zip).
          With --vae DIR (a diffusers AutoencoderKL folder: config.json and diffusion_pytorch_model.safetensors, e.g.
          stabilityai/sd-vae-ft-ema), FILE.zip is the latent set of the official `dataset_tool.py encode`: per image
          the posterior mean and std as one float32 NPY [8, size/8, size/8] (00000/img-mean-std-00000000.npy), with
          dataset.json; the VAE runs on the GPU (--device auto) in batches of --batch images (default 32 on a GPU, 4
          on the CPU), decoding and cropping spread over the CPU cores; --bf16 (or --tf32) makes its matrix products
          bf16 (TF32) on the GPU, as the official encoder runs the VAE in reduced precision (fp16); the default is
          float32. At the end it prints the latent statistics.
          The archive grows in FILE.zip.partial and becomes FILE.zip when complete: a run that was killed continues
          where it stopped when the same command is run again. A bad image (truncated, not an image, empty) is named
          and left out (--on-bad-image skip, the default; counted at the end) or stops the run (stop; the images done
          are kept for the next run).
          --stats LATENTS.zip: the official getstats of a latent set: per channel the mean of the posterior means and
          the standard deviation of latents drawn from the posteriors (mean + std * eps, one draw per image, --seed),
          printed as the tvm train options --latent-mean and --latent-std.
        """

    func defaultDevice(_ args: [String]) -> DeviceChoice {
        args.contains { $0 == "--vae" || $0.hasPrefix("--vae=") } ? .auto : .cpu
    }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "prepare", args, options: ["out", "size", "vae", "batch", "on-bad-image", "labels", "class-map",
                                                                  "max-images", "stats", "seed"], switches: ["bf16", "tf32"])
        if let stats = a.string("stats") {
            try a.expectPositional(0, "no positional arguments with --stats")
            for other in ["out", "size", "vae", "batch", "on-bad-image", "labels", "class-map", "max-images", "bf16", "tf32"]
            where a.string(other) != nil || a.has(other) {
                throw CLIError("--stats reads a latent set; --\(other) does not apply", usage: true)
            }
            let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
            guard FileSystem.isRegularFile(stats) else { throw CLIError("\(stats): no such file") }
            printStatistics(try LatentStatistics(path: stats, seed: seed), of: stats)
            return
        }
        try a.expectPositional(1, "one source: a folder of images or a data set ZIP")
        guard let out = a.string("out") else { throw CLIError("tvm prepare needs --out FILE.zip", usage: true) }
        guard out.lowercased().hasSuffix(".zip") else { throw CLIError("--out \(out): the data set format is a .zip archive", usage: true) }
        try checkOutputFile(out, flag: "--out")
        let size = try a.int("size", default: 256, range: 1...16384)
        let policyName = a.string("on-bad-image", default: "skip")
        guard let policy = DatasetPreparation.BadImagePolicy(rawValue: policyName.lowercased()) else {
            throw CLIError("--on-bad-image must be skip or stop, got '\(policyName)'", usage: true)
        }
        if a.string("vae") == nil, let flag = ["bf16", "tf32"].first(where: a.has) {
            throw CLIError("--\(flag) sets the precision of the VAE's products: it goes with --vae DIR", usage: true)
        }
        let limit = a.string("max-images") == nil ? nil : try a.int("max-images", default: 1, range: 1...Int.max)
        let batch = try a.int("batch", default: activeCUDA != nil ? 32 : 4, range: 1...65536)
        let sourcePath = a.positional[0]
        let source = try ImageSource.open(sourcePath, labels: a.string("labels"), classMap: a.string("class-map"))

        // Everything that decides the entries' bytes: a partial archive made otherwise is not continued.
        var settings = "tvm prepare\nsource \(sourcePath)\nimages \(source.count)\nsize \(size)\nlimit \(limit.map(String.init) ?? "all")\n"
        let encode: DatasetPreparation.Encoder
        let prep: DatasetPreparation
        let intro: String
        if let vaeDirectory = a.string("vae") {
            // The precision changes the latents' bytes, so it is one of the settings a partial archive must share.
            let precision = applyProductPrecision(a)
            let vae = try AutoencoderKL(directory: vaeDirectory)
            let configBytes = try AtomicFile.read(path: vaeDirectory + "/" + AutoencoderKL.configFileName)
            let weightsBytes = FileSystem.size(vaeDirectory + "/" + AutoencoderKL.weightsFileName) ?? 0
            settings += "latents of the VAE \(vaeDirectory) (weights \(weightsBytes) bytes, config checksum "
                + "\(Checksum.crc32(configBytes)))\(precision)\n"
            guard vae.config.inChannels == 3 else {
                throw CLIError("\(vaeDirectory)/\(AutoencoderKL.configFileName): the VAE encodes \(vae.config.inChannels) channels; "
                               + "tvm prepare encodes RGB images")
            }
            encode = { images in try encodeLatents(images, with: vae) }
            prep = DatasetPreparation(source: source, destination: out, size: size, batch: batch, policy: policy, limit: limit,
                                      entryName: DatasetPreparation.latentName)
            intro = "prepare: \(source.count) images of \(sourcePath) -> SD-VAE latents (\(vaeDirectory)) of the \(size)x\(size) "
                + "crops, batch \(batch); \(deviceDescription())\(precision)" + (activeCUDA?.cudnnNotice.map { "\n" + $0 } ?? "")
        } else {
            settings += "RGB PNGs\n"
            encode = { images in try images.map { try $0.pngBytes() } }
            prep = DatasetPreparation(source: source, destination: out, size: size, batch: batch, policy: policy, limit: limit,
                                      entryName: DatasetPreparation.pngName)
            intro = "prepare: \(source.count) images of \(sourcePath) -> \(size)x\(size) RGB crops"
        }
        // The first lines wait until the work starts, so that a run refused at once prints its error line alone.
        var bar: ProgressBar?
        let report = try prep.run(settings: settings, encode: encode, progress: { done, pending in
            if let bar { bar.update(images: done) } else {
                Console.info(intro)
                bar = ProgressBar("prepare", total: pending)
            }
        }, note: { Console.info("prepare: " + $0) })
        Console.info("prepare: wrote \(out): \(report.total) images (\(report.written) now"
            + (report.resumed > 0 ? ", \(report.resumed) by the interrupted run" : "") + "), \(report.bad.count) bad images skipped")
        if a.string("vae") != nil { printStatistics(try LatentStatistics(path: out), of: out) }
    }

    private func printStatistics(_ s: LatentStatistics, of path: String) {
        func list(_ v: [Double]) -> String { v.map { "\(Float($0))" }.joined(separator: ",") }
        Console.info("latent statistics of the \(s.count) images of \(path) (the official getstats):")
        Console.out("--latent-mean \(list(s.mean)) --latent-std \(list(s.std))")
    }
}

/// One NPY entry per image: the VAE posterior's mean and std as float32 [2C, H/8, W/8], as `dataset_tool.py encode`
/// stores them (pixels as `x / 127.5 - 1`).
func encodeLatents(_ images: [Image], with vae: AutoencoderKL) throws -> [[UInt8]] {
    let (h, w) = (images[0].height, images[0].width)
    var pixels = [UInt8](repeating: 0, count: images.count * 3 * h * w)
    for (n, image) in images.enumerated() {
        // Interleaved RGB to planes (NCHW).
        for c in 0..<3 {
            for k in 0..<(h * w) { pixels[(n * 3 + c) * h * w + k] = image.pixels[k * 3 + c] }
        }
    }
    let posterior = try vae.encode(vaeInput(pixels: pixels, shape: [images.count, 3, h, w]))
    let shape = posterior.mean.shape, size = shape[1] * shape[2] * shape[3]
    let mean = posterior.mean.floats, std = posterior.std.floats
    return try (0..<images.count).map { n in
        try NPYArray(shape: [2 * shape[1], shape[2], shape[3]],
                     floats: Array(mean[(n * size)..<((n + 1) * size)]) + Array(std[(n * size)..<((n + 1) * size)])).serialized()
    }
}
