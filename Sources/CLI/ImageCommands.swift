import TensorCore
import NN
import TVM
import Data
import Formats
#if canImport(Glibc)
import Glibc
#endif

let imageTrainHelp = """
tvm train --data fashion-mnist|mnist|DIR|FILE.npy [--data-dir DIR] [--labels FILE.npy] [--pad 2]
          [--model S/2 | --hidden H --depth D --heads N --patch P] [--cfg W | --cfg-range LO,HI]
          [--label-dropout 0.1] [--no-scaled-param] [--batch 128] [--lr 2e-4] [--steps N] [--time-budget S]
          [--ema power:7|D[,EXTRA...]] [--ema-target 0.99] [--seed N] [--flip] [--out DIR] [--every N] [--resume]
          [--sample-cfg W] [--tf32|--bf16] [--method tvm|fm] [--on-fault zero-rows|skip|stop] [--loss-spike K]
          [--grad-spike K] [--grad-limit X] [--fault-warmup N]
  TVM on images with a DiT (class-conditional, classifier-free guidance); --method fm trains the flow-matching
  baseline on the same network instead (labels dropped at --label-dropout, guidance applied when sampling).
  Data: Fashion-MNIST (from --data-dir,
  default \(ImageDataset.fashionMNISTDirectory)), MNIST (IDX files in --data-dir), a folder of class folders
  of PNGs, or an .npy [n, H, W] / [n, C, H, W] with --labels FILE.npy. IDX images are padded by --pad pixels.
  --model is any DiT size (S/2, B/2, L/2, XL/2, B/4, ...); --hidden/--depth/--heads/--patch override it.
  --steps is the total step count (default 10000; with --time-budget alone, no step limit); --time-budget stops
  after that many seconds of this invocation. Every --every steps (default 1000) and at the end it writes
  DIR/samples_step<N>_nfe<K>.png (fixed noise, one row per class, 1 and 4 NFE, evaluation EMA, guidance
  --sample-cfg, default the training w or the middle of --cfg-range) and DIR/checkpoint.safetensors (atomically);
  DIR/metrics.jsonl gets one JSON line per step. --ema is the evaluation EMA: a fixed decay D, or power:G, a
  window of about step/(G+1) steps; more schedules after it (--ema power:16,power:32,power:8) are kept alongside
  as extra EMAs, saved in the checkpoint, to choose a width after the run (tvm sample --weights ema:power:32).
  --resume continues from DIR/checkpoint.safetensors exactly (same losses as an uninterrupted run); the model
  options must match the checkpoint's. Runs on a GPU when one is found (--device auto, the default for images),
  else on the CPU; --device cpu|cuda forces either.
  A run that cannot save its checkpoint (disk full) stops with one line; the previous checkpoint is intact.

  Data-parallel (every rank draws the global batch's data and noise and evaluates its rows, so the results and
  --resume do not depend on the number of ranks; rank 0 writes the files; replicas compared at every --every):
\(LaunchPlan.help)
  --bucket-mb X   gradients are averaged in buckets of X MB started during backward (default 25)
""" + "\n" + faultHelp

let imageHelpTexts: [String: String] = [
    "sample": """
    tvm sample --checkpoint FILE [--n 100] [--nfe 1] [--cfg 2] [--classes 0,1,2] [--seed N] [--out grid.png]
               [--npy FILE] [--folder DIR] [--weights ema|ema:SCHEDULE|student|teacher] [--columns 10]
      Samples images from a training checkpoint (by default with the evaluation EMA; ema:SCHEDULE picks one of
      the extra EMAs the run kept, e.g. ema:power:32; teacher is the EMA target) in --nfe steps with
      guidance scale --cfg (a flow-matching checkpoint: --nfe Euler steps, each evaluating the class and the null
      class for classifier-free guidance). Classes: --classes, spread over the n samples in blocks (default all classes).
      Writes a PNG grid (--out, default samples.png), and optionally an NPY [n, C, H, W] of values in [-1, 1]
      and a folder with one subfolder of PNGs per class.
    """,
]

/// Whether `tvm train` was given image data (`--data fashion-mnist|mnist|DIR|FILE.npy`).
func isImageTraining(_ args: [String]) -> Bool {
    var value: String?
    for (i, a) in args.enumerated() {
        if a == "--data", i + 1 < args.count { value = args[i + 1] }
        else if a.hasPrefix("--data=") { value = String(a.dropFirst("--data=".count)) }
    }
    guard let v = value else { return false }
    let l = v.lowercased()
    return l == "fashion-mnist" || l == "mnist" || l.hasSuffix(".npy") || FileSystem.isDirectory(v)
}

/// A file that `flag` will write: its folder must exist, and it must not itself be a folder.
private func checkOutputFile(_ path: String, flag: String) throws {
    if FileSystem.isDirectory(path) { throw CLIError("\(flag) \(path): is a folder, not a file") }
    let folder = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    guard FileSystem.isDirectory(folder.isEmpty ? "/" : folder) else {
        throw CLIError("\(flag) \(path): the folder \(folder) does not exist")
    }
}

private func dataError<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as DataError { throw CLIError(e.message) } catch let e as ModelError {
        throw CLIError(e.message)
    } catch let e as FormatError { throw CLIError(e.message) }
}

func loadImageData(_ a: Arguments) throws -> ImageDataset {
    let name = a.string("data", default: "fashion-mnist")
    let pad = try a.int("pad", default: 2, range: 0...1024)
    // Options of another kind of data would be silently ignored; say so instead.
    let idx = ["fashion-mnist", "mnist"].contains(name.lowercased()), npy = name.lowercased().hasSuffix(".npy")
    for (option, applies, kind) in [("data-dir", idx, "IDX data (--data fashion-mnist or mnist)"), ("pad", idx, "IDX data (--data fashion-mnist or mnist)"),
                                    ("labels", npy, "--data FILE.npy"), ("classes", npy, "--data FILE.npy")]
    where !applies && a.string(option) != nil {
        throw CLIError("--\(option) applies only to \(kind), not to --data \(name)", usage: true)
    }
    return try dataError {
        switch name.lowercased() {
        case "fashion-mnist":
            return try ImageDataset.fashionMNIST(directory: a.string("data-dir", default: ImageDataset.fashionMNISTDirectory), pad: pad)
        case "mnist":
            guard let dir = a.string("data-dir") else { throw CLIError("--data mnist needs --data-dir DIR with the IDX files", usage: true) }
            let d = try ImageDataset.fashionMNIST(directory: dir, pad: pad)
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

/// Keeps the lines of a JSON-lines log whose "step" is at most `step` (a resumed run rewrites the rest).
func truncateLog(_ path: String, atStep step: Int) throws {
    guard FileSystem.exists(path) else { return }
    let bytes = try dataError { try AtomicFile.read(path: path) }
    let kept = String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { line in
        guard let v = try? JSONValue.parse(String(line)), let s = v["step"]?.int else { return false }
        return s <= step
    }
    try dataError { try AtomicFile.write(path: path, bytes: Array(kept.map { $0 + "\n" }.joined().utf8)) }
}

/// [n, C, H, W] floats to a PNG grid (`columns` per row); channels other than 1 or 3 show channel 0 in gray.
func writeImageGrid(_ values: [Float], n: Int, channels: Int, side: Int, columns: Int, path: String) throws {
    let size = channels * side * side, plane = side * side
    let shown = channels == 1 || channels == 3 ? channels : 1
    let images = (0..<n).map { i -> [Float] in
        Array(values[(i * size)..<(i * size + shown * plane)])
    }
    try dataError { try imageGrid(images: images, channels: shown, height: side, width: side, columns: columns).writePNG(path: path) }
}

/// One-hot classes and beta = 1 / w for sampling.
func samplingConditioning(labels: [Int], classes: Int, cfg: Double, on device: Device = .default) -> Conditioning {
    var onehot = [Float](repeating: 0, count: labels.count * classes)
    for (i, l) in labels.enumerated() { onehot[i * classes + l] = 1 }
    return Conditioning(classes: Tensor(onehot, shape: [labels.count, classes], on: device),
                        beta: Tensor([Float](repeating: Float(1 / cfg), count: labels.count), shape: [labels.count], on: device))
}

func parseCFGRange(_ s: String) throws -> (Double, Double) {
    let p = commaSeparated(s).map { Double($0) }
    guard p.count == 2, let lo = p[0], let hi = p[1], lo.isFinite, hi.isFinite, lo > 0, lo <= hi else {
        throw CLIError("--cfg-range must be LO,HI with 0 < LO <= HI, got '\(s)'", usage: true)
    }
    return (lo, hi)
}

func runImageTrain(_ args: [String]) throws {
    let a = try Arguments(command: "train", args, options: ([
        "data", "data-dir", "labels", "classes", "pad", "model", "hidden", "depth", "heads", "patch", "cfg", "cfg-range",
        "label-dropout", "batch", "lr", "steps", "time-budget", "ema", "ema-target", "seed", "out", "every",
        "sample-cfg", "method", "bucket-mb",
    ] as Set<String>).union(faultOptionNames), switches: ["no-scaled-param", "flip", "resume", "tf32", "bf16"])
    try a.expectPositional(0, "no positional arguments")
    // TF32 (about 1e-3 relative instead of float32's 1e-6) or bf16 matrix products on the GPU.
    _ = applyProductPrecision(a)
    let methodName = a.string("method", default: "tvm").lowercased()
    guard let method = Method(rawValue: methodName), method != .meanFlow else {
        throw CLIError("image training supports --method tvm or fm (flow matching), got '\(methodName)'", usage: true)
    }
    var config = TrainConfig()
    config.method = method
    config.batch = try a.int("batch", default: 128, range: 1...1_000_000)
    config.lr = try a.double("lr", default: 2e-4, range: 1e-12...10)
    config.seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
    if let ema = a.string("ema") { (config.evalEMA, config.extraEMAs) = try parseEMAList(ema) }
    config.emaTargetDecay = try a.double("ema-target", default: 0.99, range: 0...0.999999999)
    config.faults = try parseFaultOptions(a)
    let cfg = try a.double("cfg", default: 2, range: 1e-6...1e6)
    var sampleCFG = cfg
    let scale: GuidanceConfig.Scale
    if let r = a.string("cfg-range") {
        if a.string("cfg") != nil { throw CLIError("give --cfg or --cfg-range, not both", usage: true) }
        let (lo, hi) = try parseCFGRange(r)
        scale = .uniform(lo, hi)
        sampleCFG = (lo + hi) / 2
    } else {
        scale = .constant(cfg)
    }
    sampleCFG = try a.double("sample-cfg", default: sampleCFG, range: 1e-6...1e6)
    config.guidance = GuidanceConfig(scale: scale, labelDropout: try a.double("label-dropout", default: 0.1, range: 0...1),
                                     scaledParameterization: !a.has("no-scaled-param"))
    let budget = try a.optionalDouble("time-budget", range: 0...1e9)
    let steps = a.string("steps") != nil || budget == nil
        ? try a.int("steps", default: 10000, range: 1...100_000_000) : Int.max
    let every = try a.int("every", default: 1000, range: 1...100_000_000)
    let flip = a.has("flip")
    let dataName = a.string("data", default: "fashion-mnist")

    // Closed where every rank ends together; a rank that fails just exits (closing NCCL waits for the others).
    let session = try DistributedSession.start(bucketMB: try a.double("bucket-mb", default: 25, range: 1e-6...65536))
    if let session, config.batch % session.worldSize != 0 {
        throw CLIError("--batch \(config.batch) must be divisible by the \(session.worldSize) ranks", usage: true)
    }
    // In a data-parallel run rank 0 alone reads the checkpoint and writes files; the others get its state.
    let isRoot = session?.isRoot ?? true
    let data = try loadImageData(a)
    let model = try imageModelConfig(a, data: data)
    let baseName = dataName.split(separator: "/").last.map(String.init) ?? "images"
    let out = a.string("out", default: "runs/\(baseName.lowercased().hasSuffix(".npy") ? String(baseName.dropLast(4)) : baseName)-tvm")
    let checkpointPath = out + "/checkpoint.safetensors", metricsPath = out + "/metrics.jsonl"
    // A fresh run would overwrite another run's log at once and its checkpoint at the first save.
    if !a.has("resume") && FileSystem.exists(checkpointPath) {
        throw CLIError("\(out) already holds a training run (\(checkpointPath)); add --resume to continue it, or pick another --out to start afresh")
    }
    try FileSystem.makeDirectories(out)
    // Writers killed mid-write (a crash, SIGKILL) leave NAME.tmp-PID files; the finished files are intact.
    let stale = AtomicFile.removeStaleTemporaries(in: out)
    if !stale.isEmpty {
        Console.info("removed \(stale.count) unfinished temporary file\(stale.count == 1 ? "" : "s") left by an interrupted run: \(stale.joined(separator: ", "))")
    }
    let net = try dataError { try DiT(model) }
    let trainer = Trainer(network: net, config: config)
    trainer.parallel = session?.parallel
    var sampler = BatchSampler(count: data.count, seed: config.seed &+ 0x5EED)
    var resumedTraining: JSONValue?
    var savedStep: Int?
    if a.has("resume") && isRoot {
        guard FileSystem.exists(checkpointPath) else { throw CLIError("--resume: no checkpoint at \(checkpointPath)") }
        let ck = try dataError { try TrainingCheckpoint.read(path: checkpointPath, expecting: model) }
        try dataError {
            try ck.restore(into: trainer)
            sampler = try ck.sampler(count: data.count)
        }
        try truncateLog(metricsPath, atStep: ck.step)
        Console.info("resumed from \(checkpointPath) at step \(ck.step)")
        savedStep = ck.step
        resumedTraining = ck.training
    } else if isRoot && FileSystem.exists(metricsPath) {
        try truncateLog(metricsPath, atStep: 0)
    }
    try session?.synchronize(trainer, sampler: &sampler)
    if trainer.step >= steps {
        Console.info("already at step \(trainer.step) of \(steps); nothing to do")
        session?.close()
        return
    }

    let scaleText: String
    switch scale {
    case .constant(let w): scaleText = "\(w)"
    case .uniform(let lo, let hi): scaleText = "\(lo),\(hi)"
    default: scaleText = "off"
    }
    let emaText = ([config.evalEMA] + config.extraEMAs).map(\.description).joined(separator: ",")
    let trainingFields: [(String, JSONValue)] = [
        ("method", .string(method.rawValue)), ("data", .string(dataName)), ("count", .number(Double(data.count))),
        ("class_names", .array(data.classNames.map { .string($0) })),
        ("batch", .number(Double(config.batch))), ("lr", .number(config.lr)),
        ("beta1", .number(config.beta1)), ("beta2", .number(config.beta2)), ("weight_decay", .number(config.weightDecay)),
        ("ema", .string(emaText)), ("ema_target", .number(config.emaTargetDecay)),
        ("cfg", .string(scaleText)), ("sample_cfg", .number(sampleCFG)),
        ("label_dropout", .number(config.guidance.labelDropout)),
        ("scaled_param", .bool(config.guidance.scaledParameterization)),
        ("seed", .number(Double(config.seed))), ("flip", .bool(flip)),
    ]
    let trainingJSON = JSONValue.object(trainingFields + faultJSON(config.faults))

    if let saved = resumedTraining?.object {
        // Other options are allowed (e.g. a new learning rate), but the run then differs from an uninterrupted one.
        let now = trainingJSON.object ?? []
        let changed = now.compactMap { key, value -> String? in
            guard let old = saved.first(where: { $0.0 == key })?.1, old != value else { return nil }
            return "\(key) \(old.serialized()) -> \(value.serialized())"
        }
        if !changed.isEmpty { Console.info("note: training options differ from the checkpoint's: " + changed.joined(separator: ", ")) }
    }

    // Fixed noise and classes for the grids: one row of 10 per class (the first 10 classes).
    let perRow = 10, rows = min(data.classes, 10)
    let gridLabels = (0..<(rows * perRow)).map { $0 / perRow }
    var gridRNG = RandomGenerator(seed: config.seed &+ 0x6121D)
    let gridNoise = Tensor.randomNormal([gridLabels.count, data.channels, data.height, data.width], rng: &gridRNG)
    let gridCond = samplingConditioning(labels: gridLabels, classes: data.classes, cfg: sampleCFG)

    var written: [String] = []
    func kept() -> String {
        savedStep.map { "the checkpoint of step \($0) in \(checkpointPath) is intact" } ?? "no checkpoint was saved yet"
    }
    // The checkpoint first: if the disk is full, the state matters more than the pictures.
    func snapshot() throws {
        try session?.checkReplicas(trainer, sampler: sampler)
        guard isRoot else { return }
        do {
            try TrainingCheckpoint(trainer: trainer, samplerState: sampler.state, training: trainingJSON).write(path: checkpointPath)
        } catch let e as ModelError {
            throw CLIError("step \(trainer.step): could not save the checkpoint, so the run stops (\(kept())): \(e.message)")
        }
        savedStep = trainer.step
        for nfe in [1, 4] {
            let x = trainer.sample(noise: gridNoise, steps: nfe, cond: gridCond, weights: trainer.ema,
                                   guidanceScale: sampleCFG).floats
            let path = out + "/samples_step\(trainer.step)_nfe\(nfe).png"
            try writeImageGrid(x, n: gridLabels.count, channels: data.channels, side: data.height, columns: perRow, path: path)
            written.append(path)
        }
    }

    let (total, trainable) = net.parameterCount
    Console.info("TVM on \(dataName): \(data.count) images \(data.channels)x\(data.height)x\(data.width), \(data.classes) classes; "
        + "DiT patch \(model.patch) hidden \(model.hidden) depth \(model.depth) heads \(model.heads) (\(trainable) trainable of \(total)); "
        + "batch \(config.batch), lr \(config.lr), cfg \(scaleText); \(deviceDescription())"
        + (session.map { "; " + $0.description } ?? ""))
    let log = isRoot ? try LineWriter(path: metricsPath, append: true) : nil
    let startStep = trainer.step
    let bar = ProgressBar("TVM".padding(6), total: steps == Int.max ? 0 : steps)
    var lastSnapshot = -1
    while trainer.step < steps {
        // The ranks stop together (each has its own clock).
        if let budget, session?.parallel.anyRank(bar.elapsed >= budget) ?? (bar.elapsed >= budget) { break }
        let stats = imageTrainingStep(trainer, data: data, sampler: &sampler, flip: flip)
        let elapsed = bar.elapsed
        let rate = Double(stats.step - startStep) / max(elapsed, 1e-9)
        if steps != Int.max { bar.update(step: stats.step, loss: stats.loss) } else if stats.step % 10 == 0 {
            Console.info("step \(stats.step) loss \(fmt(stats.loss)) \(fmt(rate, 1)) it/s elapsed \(formatDuration(elapsed))")
        }
        var fields: [(String, JSONValue)] = [("step", .number(Double(stats.step))), ("loss", .number(stats.loss))]
        if let t = stats.terminal { fields.append(("terminal", .number(t))) }
        if let f = stats.flowMatching { fields.append(("fm", .number(f))) }
        fields += [("grad_norm", .number(stats.gradNorm)), ("it/s", .number(rate)), ("elapsed", .number(elapsed))]
        if stats.nanRows > 0 { fields.append(("nan_rows", .number(Double(stats.nanRows)))) }
        if stats.skipped { fields.append(("skipped", .bool(true))) }
        if let fault = stats.fault { fields.append(("fault", .string(fault.description))) }
        try log?.write(JSONValue.object(fields).serialized())
        if let fault = stats.fault {
            guard !stats.stopped else { throw CLIError("\(fault) (--on-fault stop); \(kept())") }
            Console.info(fault.description)
        }
        if stats.step % every == 0 {
            try snapshot()
            lastSnapshot = stats.step
        }
    }
    if lastSnapshot != trainer.step && trainer.step > startStep { try snapshot() }
    session?.close()
    Console.info("step \(trainer.step): wrote \(metricsPath), \(checkpointPath)\(written.isEmpty ? "" : " and \(written.count) sample grids (last \(written.last!))")")
}

func runSample(_ args: [String]) throws {
    let a = try Arguments(command: "sample", args, options: ["checkpoint", "n", "nfe", "cfg", "classes", "seed", "out", "npy",
                                                              "folder", "weights", "columns"])
    try a.expectPositional(0, "no positional arguments (use --checkpoint FILE)")
    guard let path = a.string("checkpoint") else { throw CLIError("tvm sample needs --checkpoint FILE", usage: true) }
    let n = try a.int("n", default: 100, range: 1...1_000_000)
    let nfe = try a.int("nfe", default: 1, range: 1...10_000)
    let cfg = try a.double("cfg", default: 2, range: 1e-6...1e6)
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
    let ck = try dataError { try TrainingCheckpoint.read(path: path, parts: part.map { [$0] } ?? [], extraEMAs: extraEMA.map { [$0] } ?? []) }
    let weights = part.map { ck[$0] } ?? ck.extraEMAs[extraEMA!]!
    let model = ck.model
    let K = model.numClasses
    guard K >= 1 else { throw CLIError("\(path): the model has no classes; tvm sample needs a class-conditional checkpoint") }
    var classList = Array(0..<max(K, 1))
    if let s = a.string("classes") {
        let parts = commaSeparated(s).map { Int($0) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0! >= 0 && $0! < K }) else {
            throw CLIError("--classes must be a comma-separated list of class indices in 0..<\(K), got '\(s)'", usage: true)
        }
        classList = parts.map { $0! }
    }
    let labels = (0..<n).map { classList[$0 * classList.count / n] }
    let net = try dataError { try DiT(model) }
    let scaled = ck.training["scaled_param"]?.bool ?? true
    // A flow-matching checkpoint samples with --nfe Euler steps and classifier-free guidance (2 evaluations a step).
    let flowMatching = ck.training["method"]?.string == Method.flowMatching.rawValue
    let C = model.inChannels, R = model.inputSize, size = C * R * R
    var rng = RandomGenerator(seed: seed)
    let noise = rng.normalFloats(n * size)
    var samples: [Float] = []
    samples.reserveCapacity(n * size)
    let chunk = 256
    var start = 0
    while start < n {
        let m = min(chunk, n - start)
        let x = Tensor(Array(noise[(start * size)..<((start + m) * size)]), shape: [m, C, R, R])
        let cond = samplingConditioning(labels: Array(labels[start..<(start + m)]), classes: K, cfg: cfg)
        if flowMatching {
            samples += sampleEuler(network: net, params: weights, noise: x, steps: nfe, cond: cond, guidance: cfg).floats
        } else {
            samples += sampleFlowMap(network: net, params: weights, noise: x, steps: nfe, cond: cond,
                                     kappa: scaled ? cfg : 1).floats
        }
        start += m
    }
    try writeImageGrid(samples, n: n, channels: C, side: R, columns: columns, path: out)
    var wrote = [out]
    if let npy = a.string("npy") {
        try dataError { try NPYArray.write(path: npy, shape: [n, C, R, R], floats: samples) }
        wrote.append(npy)
    }
    if let folder = a.string("folder") {
        let names = ck.training["class_names"]?.array?.compactMap(\.string)
        try FileSystem.makeDirectories(folder)
        try dataError {
            let set = try ImageDataset(images: samples, labels: labels, channels: C, height: R, width: R, classes: K,
                                       classNames: names?.count == K ? names : nil)
            try set.writePNGFolder(folder)
        }
        wrote.append(folder + "/")
    }
    Console.info("\(n) samples, \(nfe) NFE, cfg \(cfg), \(weightsName) weights of step \(ck.step): wrote \(wrote.joined(separator: ", "))")
}
