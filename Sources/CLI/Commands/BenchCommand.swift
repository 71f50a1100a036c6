import TensorCore
import NN
import TVM
import Data
#if canImport(Glibc)
import Glibc
#endif

/// `tvm bench <what>`: timings of whole training steps and kernels, median over repeats after a warm-up.
struct BenchCommand: Command {
    let name = "bench"
    let summary = "time training steps and kernels (toy: the CPU TVM step on 2-D data)"
    let help = """
        tvm bench toy [--method tvm|meanflow|imf|fm] [--batch N] [--width N] [--depth N] [--steps N] [--warmup N]
          Median wall time of one full training step (loss with its JVP, backward, AdamW, both EMAs) of the
          2-D MLP, after a warm-up.
        tvm bench train [--model B/2] [--res 32] [--channels 4] [--classes 1000] [--batch 64] [--steps 20] [--tf32|--bf16]
                        [--method tvm|meanflow|imf|fm]
          A full training step of a DiT (TVM: JVP, both teacher passes, flow-matching pass, backward, AdamW, both
          EMAs; another --method: its own loss, as `tvm train` runs it): median step time, images/s, peak GPU memory.
        tvm bench sample [--model B/2] [--batch 256] [--nfe 1] ...   sampling throughput.
        tvm bench attention [--b 64] [--h 12] [--s 256] [--d 64]     the attention primitive, with its JVP, and its backward.
        tvm bench vae [--res 256] [--batch 8] [--steps 5]    SD-VAE-sized encoder and decoder (random weights): images/s.
        All take --device cuda|cpu|auto (default auto).
        """

    func run(_ args: [String]) throws {
        guard let what = args.first else { throw CLIError("'tvm bench' needs what to time: toy, train, sample, attention or vae", usage: true) }
        switch what {
        case "toy": try benchToy(Array(args.dropFirst()))
        case "train": try benchTrain(Array(args.dropFirst()))
        case "sample": try benchSample(Array(args.dropFirst()))
        case "attention": try benchAttention(Array(args.dropFirst()))
        case "vae": try benchVAE(Array(args.dropFirst()))
        default: throw CLIError("unknown benchmark '\(what)'; choose toy, train, sample, attention or vae", usage: true)
        }
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The CPU TVM step of `tvm train` on 2-D data (the comparison with scripts/bench_torch_cpu.py).
func benchToy(_ args: [String]) throws {
    let a = try Arguments(command: "bench toy", args, options: ["batch", "width", "depth", "steps", "warmup", "method"])
    try a.expectPositional(0, "no positional arguments")
    let batch = try a.int("batch", default: 1024, range: 1...1_000_000)
    let steps = try a.int("steps", default: 100, range: 1...100_000), warmup = try a.int("warmup", default: 10, range: 0...10_000)
    let methodName = a.string("method", default: "tvm")
    guard let method = Method(rawValue: methodName) else { throw CLIError("unknown method '\(methodName)'; choose one of tvm, meanflow, imf, fm", usage: true) }
    let network = MLPFlowMap(width: try a.int("width", default: 256, range: 1...65536), depth: try a.int("depth", default: 4, range: 1...64))
    var config = TrainConfig()
    config.method = method
    config.batch = batch
    config.lr = 2e-3
    if let note = CPUBackend.blasNotice { Console.info(note) }
    let trainer = Trainer(network: network, config: config)
    var rng = RandomGenerator(seed: 5)
    var times: [Double] = []
    for i in 0..<(warmup + steps) {
        let x0 = Tensor(Toy2D.checkerboard.sample(batch, rng: &rng), shape: [batch, 2])
        let t0 = now()
        _ = trainer.train(x0: x0)
        if i >= warmup { times.append(now() - t0) }
    }
    let m = median(times)
    Console.out("\(method.displayName) step, MLP \(network.depth)x\(network.width), batch \(batch), \(deviceDescription()): median \(fmt(m * 1000, 2)) ms/step, \(fmt(1 / m, 1)) it/s over \(steps) steps")
}

func onlineCores() -> Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

/// Times `body` `steps` times after `warmup` runs, synchronising the device around each.
func timeRepeated(steps: Int, warmup: Int, _ body: () throws -> Void) rethrows -> [Double] {
    var times: [Double] = []
    for i in 0..<(warmup + steps) {
        Device.default.backend.synchronize()
        let t0 = now()
        try body()
        Device.default.backend.synchronize()
        if i >= warmup { times.append(now() - t0) }
    }
    return times
}

func ditFromArguments(_ a: Arguments) throws -> DiT {
    var config: DiTConfig
    do {
        config = try DiTConfig.named(a.string("model", default: "B/2"), res: try a.int("res", default: 32, range: 1...4096),
                                     channels: try a.int("channels", default: 4, range: 1...64),
                                     classes: try a.int("classes", default: 1000, range: 0...1_000_000))
        // Speed does not depend on the initial values; Xavier-uniform skips the spectral norms' power iterations.
        config.initialization = .xavierUniform
        return try DiT(config)
    } catch let e as ModelError { throw CLIError(e.description, usage: true) }
}

/// The TVM_CUDA_PROFILE table: device time per kernel (and launch grid, under =grid) and step, largest first.
func printProfile(_ rows: [(name: String, calls: Int, ms: Double)], steps: Int) {
    let total = rows.reduce(0) { $0 + $1.ms }
    Console.out("device time per step: \(fmt(total / Double(steps), 1)) ms in \(rows.reduce(0) { $0 + $1.calls } / steps) launches")
    for r in rows.prefix(activeCUDA?.profilesByGrid == true ? 200 : 60) {
        Console.out("  \(fmt(r.ms / Double(steps), 2)) ms  \(fmt(100 * r.ms / total, 1))%  \(r.calls / steps)x  \(r.name)")
    }
}

/// Under TVM_CUDA_PROFILE, `body` run `runs` more times and its kernels' table printed (after `title` when given);
/// nothing without the profiler.
func printKernelProfile(of runs: Int, title: String? = nil, _ body: () throws -> Void) rethrows {
    guard activeCUDA?.profileReport(reset: true) != nil else { return }
    _ = try timeRepeated(steps: runs, warmup: 0, body)
    if let title { Console.out(title) }
    printProfile(activeCUDA?.profileReport() ?? [], steps: runs)
}

func memoryFigure() -> String {
    guard let cuda = activeCUDA else { return "" }
    return ", peak GPU memory \(fmt(Double(cuda.peakBytes) / 1_073_741_824, 2)) GiB"
}

/// A full TVM step of a DiT: the JVP, both teacher passes, the flow-matching pass, backward, AdamW, both EMAs.
func benchTrain(_ args: [String]) throws {
    let a = try Arguments(command: "bench train", args, options: ["model", "res", "channels", "classes", "batch", "steps", "warmup", "cfg", "method"],
                          switches: ["tf32", "bf16"])
    try a.expectPositional(0, "no positional arguments")
    var dit = try ditFromArguments(a)
    let batch = try a.int("batch", default: 64, range: 1...1_000_000)
    let steps = try a.int("steps", default: 20, range: 1...100_000), warmup = try a.int("warmup", default: 3, range: 0...1000)
    let precision = applyProductPrecision(a)
    var config = TrainConfig()
    config.batch = batch
    config.lr = 1e-4
    let methodName = a.string("method", default: "tvm")
    guard let method = Method(rawValue: methodName) else { throw CLIError("unknown method '\(methodName)'; choose one of tvm, meanflow, imf, fm", usage: true) }
    config.method = method
    let cfg = try a.double("cfg", default: 2, range: 1...100)
    config.guidance = GuidanceConfig(scale: .constant(cfg), labelDropout: 0.1)
    config.meanFlow.setGuidance(scale: cfg, kappa: config.meanFlow.kappa)
    if method == .improvedMeanFlow && dit.config.numClasses > 0 {
        // As tvm train makes iMF's DiT: with the guidance-interval input, the interval drawn per row.
        var c = dit.config
        c.guidanceInterval = true
        dit = try DiT(c)
        config.improvedMeanFlow.interval = .init()
    }
    let trainer = Trainer(network: dit, config: config)
    let c = dit.config
    var rng = RandomGenerator(seed: 11)
    activeCUDA?.resetPeakBytes()
    // Batches are uploaded from the host every step, as training's are, with their checks made there; drawn before
    // the timing (a few, used in turn), so that the host's random numbers are not timed as the step.
    let batches = (0..<4).map { _ in
        let values = rng.normalFloats(batch * c.inChannels * c.inputSize * c.inputSize)
        return (values: values, figures: BatchFigures(rows: batch, values: values))
    }
    var drawn = 0
    func step() throws {
        let (values, figures) = batches[drawn % batches.count]
        drawn += 1
        let x0 = Tensor(values, shape: [batch, c.inChannels, c.inputSize, c.inputSize])
        let labels = (0..<batch).map { _ in c.numClasses > 0 ? rng.int(below: c.numClasses) : 0 }
        let cond = config.guidance.conditioning(labels: labels, classes: max(c.numClasses, 1), rng: &rng, on: .default)
        let stats = trainer.train(x0: x0, cond: cond, data: figures)
        guard stats.loss.isFinite else { throw CLIError("the loss became \(stats.loss) at step \(stats.step)") }
    }
    let times = try timeRepeated(steps: steps, warmup: warmup, step)
    try printKernelProfile(of: 2, step)
    let m = median(times)
    Console.out("\(method.displayName) train step, DiT-\(a.string("model", default: "B/2")) (\(dit.parameterCount.total) parameters), \(c.inputSize)x\(c.inputSize)x\(c.inChannels), \(c.numClasses) classes, batch \(batch), \(deviceDescription())\(precision): median \(fmt(m * 1000, 1)) ms/step, \(fmt(Double(batch) / m, 1)) img/s over \(steps) steps\(memoryFigure())")
}

/// n-step sampling throughput with the flow map.
func benchSample(_ args: [String]) throws {
    let a = try Arguments(command: "bench sample", args, options: ["model", "res", "channels", "classes", "batch", "nfe", "steps", "warmup", "cfg"],
                          switches: ["tf32", "bf16"])
    try a.expectPositional(0, "no positional arguments")
    let dit = try ditFromArguments(a)
    let batch = try a.int("batch", default: 256, range: 1...1_000_000), nfe = try a.int("nfe", default: 1, range: 1...1000)
    let steps = try a.int("steps", default: 10, range: 1...100_000), warmup = try a.int("warmup", default: 2, range: 0...1000)
    let precision = applyProductPrecision(a)
    let w = try a.double("cfg", default: 2, range: 1...100)
    var rng = RandomGenerator(seed: 3)
    let params = dit.initialParameters(rng: &rng, on: .default)
    let c = dit.config
    let classes = max(c.numClasses, 1)
    var onehot = [Float](repeating: 0, count: batch * classes)
    if c.numClasses > 0 { for i in 0..<batch { onehot[i * classes + i % classes] = 1 } }
    let cond = Conditioning(classes: Tensor(onehot, shape: [batch, classes]), beta: Tensor.full(1 / w, shape: [batch]))
    activeCUDA?.resetPeakBytes()
    func batchOfSamples() {
        let noise = Tensor.randomNormal([batch, c.inChannels, c.inputSize, c.inputSize], rng: &rng)
        _ = sampleFlowMap(network: dit, params: params, noise: noise, steps: nfe, cond: cond, kappa: w).floats
    }
    let times = timeRepeated(steps: steps, warmup: warmup, batchOfSamples)
    printKernelProfile(of: 2, batchOfSamples)
    let m = median(times)
    Console.out("\(nfe)-NFE sampling, DiT-\(a.string("model", default: "B/2")), batch \(batch), \(deviceDescription())\(precision): median \(fmt(m * 1000, 1)) ms/batch, \(fmt(Double(batch) / m, 1)) img/s\(memoryFigure())")
}

/// The attention primitive alone (as sampling and the teacher passes run it), under a JVP (output and tangent together)
/// and its backward for both cotangents, on
/// token-major [B, S, H, D] tensors as DiT runs it: q, k, v and their tangents come with bf16 copies under bf16 products,
/// as DiT's q and k norms and v's linear layer make them, here from RMS norms over the head dim (untimed); the flash
/// kernels read the copies. (Until the eighteenth session v and its tangent came without copies.)
func benchAttention(_ args: [String]) throws {
    let a = try Arguments(command: "bench attention", args, options: ["b", "h", "s", "d", "steps", "warmup"],
                          switches: ["tf32", "bf16"])
    try a.expectPositional(0, "no positional arguments")
    let precision = applyProductPrecision(a)
    let (b, h) = (try a.int("b", default: 64, range: 1...65536), try a.int("h", default: 12, range: 1...4096))
    let (s, d) = (try a.int("s", default: 256, range: 1...1_048_576), try a.int("d", default: 64, range: 1...65536))
    let steps = try a.int("steps", default: 20, range: 1...100_000), warmup = try a.int("warmup", default: 3, range: 0...1000)
    var rng = RandomGenerator(seed: 4)
    let shape = [b, s, h, d]
    let ones = Tensor.ones([d])
    let x = (0..<6).map { _ in Tensor.randomNormal(shape, rng: &rng).rmsNormalized(eps: 1e-6, scale: ones, products: .also) }
    var plain: [Double] = [], forward: [Double] = [], backward: [Double] = []
    for i in 0..<(warmup + steps) {
        let leaves = x.prefix(3).map { $0.detached().requiringGrad() }
        Device.default.backend.synchronize()
        let tp = now()
        _ = attention(x[0], x[1], x[2], layout: .tokenMajor)
        Device.default.backend.synchronize()
        let t0 = now()
        let (o, t) = jvp({ [attention($0[0], $0[1], $0[2], layout: .tokenMajor)] }, primals: leaves, tangents: Array(x[3...]))
        Device.default.backend.synchronize()
        let t1 = now()
        _ = gradients(of: (o[0] * x[3]).sum() + (t[0] * x[4]).sum(), wrt: leaves)
        Device.default.backend.synchronize()
        let t2 = now()
        if i >= warmup {
            plain.append(t0 - tp)
            forward.append(t1 - t0)
            backward.append(t2 - t1)
        }
    }
    // The products' work: each S x S x D product is 2 B H S^2 D flops; the forward has two, with its tangent five.
    let product = 2 * Double(b * h) * Double(s) * Double(s) * Double(d)
    func rate(_ products: Double, _ seconds: Double) -> String {
        let flops = products * product / seconds
        return flops >= 1e12 ? "\(fmt(flops / 1e12, 1)) TFLOP/s" : "\(fmt(flops / 1e9, 1)) GFLOP/s"
    }
    let (p, f) = (median(plain), median(forward))
    Console.out("attention B=\(b) H=\(h) S=\(s) D=\(d), \(deviceDescription())\(precision): forward median \(fmt(p * 1000, 3)) ms "
        + "(\(rate(2, p))), forward+JVP median \(fmt(f * 1000, 3)) ms (\(rate(5, f))), backward (both cotangents, incl. the "
        + "loss ops) median \(fmt(median(backward) * 1000, 3)) ms")
}

/// The SD-VAE's encoder (to the posterior) and decoder at its real size (block widths 128, 256, 512, 512) with
/// random weights: what `tvm prepare` and decoded sampling spend their time in. Set side by side with diffusers'
/// AutoencoderKL by scripts/bench_vae_diffusers.py.
func benchVAE(_ args: [String]) throws {
    let a = try Arguments(command: "bench vae", args, options: ["res", "batch", "steps", "warmup"], switches: ["tf32", "bf16"])
    try a.expectPositional(0, "no positional arguments")
    let precision = applyProductPrecision(a)
    let config = VAEConfig.stableDiffusion
    let res = try a.int("res", default: 256, range: config.downsamplingFactor...4096)
    let batch = try a.int("batch", default: 8, range: 1...4096)
    let steps = try a.int("steps", default: 5, range: 1...100_000), warmup = try a.int("warmup", default: 1, range: 0...1000)
    let vae = AutoencoderKL(randomWeightsFor: config, seed: 2)
    var rng = RandomGenerator(seed: 5)
    let images = Tensor(rng.uniformFloats(batch * 3 * res * res).map { $0 * 2 - 1 }, shape: [batch, 3, res, res])
    let latents = try vae.encode(images).mean
    if let note = activeCUDA?.cudnnNotice { Console.info(note) }
    activeCUDA?.resetPeakBytes()
    let encode = median(try timeRepeated(steps: steps, warmup: warmup) { _ = try vae.encode(images).std.floats })
    let decode = median(try timeRepeated(steps: steps, warmup: warmup) { _ = try vae.decode(latents).floats })
    try printKernelProfile(of: 1, title: "encode:") { _ = try vae.encode(images).std.floats }
    try printKernelProfile(of: 1, title: "decode:") { _ = try vae.decode(latents).floats }
    if let failure = activeCUDA?.cudnnPlanFailure { Console.info("note: cuDNN declined a convolution (im2col path): \(failure)") }
    let convolutions = activeCUDA.map { $0.cudnnVersion.map { ", cuDNN \($0)" } ?? ", no cuDNN" } ?? ""
    Console.out("SD-VAE size, \(res)x\(res), batch \(batch), \(deviceDescription())\(precision)\(convolutions): encode median \(fmt(encode * 1000, 1)) ms, "
                + "\(fmt(Double(batch) / encode, 1)) img/s; decode median \(fmt(decode * 1000, 1)) ms, \(fmt(Double(batch) / decode, 1)) img/s\(memoryFigure())")
}
