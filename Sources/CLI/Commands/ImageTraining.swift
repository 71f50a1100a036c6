import TensorCore
import NN
import TVM
import Data
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// The image half of `tvm train`'s help.
let imageTrainingHelp = """
tvm train --data fashion-mnist|mnist|DIR|FILE.npy|LATENTS.zip [--data-dir DIR] [--labels FILE.npy] [--pad 2]
          [--model S/2 | --hidden H --depth D --heads N --patch P] [--cfg W | --cfg-range LO,HI]
          [--label-dropout 0.1] [--no-scaled-param] [--batch 128] [--lr 2e-4] [--steps N] [--time-budget S]
          [--ema power:7|D[,EXTRA...]] [--ema-target 0.99] [--seed N] [--flip] [--out DIR] [--every N] [--resume]
          [--resume-from FILE]
          [--sample-cfg W] [--tf32|--bf16] [--method tvm|meanflow|imf|fm] [--cfg-kappa K] [--cfg-interval LO,HI]
          [--sample-cfg-interval LO,HI] [--time-sampler X,..]
          [optimizer options] [FID options] [fault options]
          [--config FILE] [--preset NAME]
  TVM on images with a DiT (class-conditional, classifier-free guidance); --method fm trains the flow-matching
  baseline on the same network instead (labels dropped at --label-dropout, guidance applied when sampling),
  --method meanflow MeanFlow and --method imf improved MeanFlow (docs/METHODS.md gives all four side by side).
\(meanFlowGuidanceHelp)
\(timeSamplerHelp)
  Data: Fashion-MNIST (from --data-dir,
  default \(ImageDataset.fashionMNISTDirectory)), MNIST (IDX files in --data-dir), a folder of class folders
  of PNGs (./NAME for a folder named like a 2-D distribution: the distribution's name wins), or an .npy
  [n, H, W] / [n, C, H, W] with --labels FILE.npy. IDX images are padded by --pad pixels.
  --model is any DiT size (S/2, B/2, L/2, XL/2, B/4, ...); --hidden/--depth/--heads/--patch override it.
  --time-spec-init gives the timestep MLPs the spectral initialisation too (the official time_specinit).
  --in-context also feeds every condition as learned tokens ahead of the patches (iMF's in-context conditioning:
  class 8, guidance 4, interval 2 + 2 with iMF, t 4, gap 4 tokens), besides the adaLN vector.
  --steps is the total step count (default 10000; with --time-budget alone, no step limit); --time-budget stops
  after that many seconds of this invocation. Every --every steps (default 1000) and at the end it writes
  DIR/samples_step<N>_nfe<K>.png (fixed noise, one row per class, 1 and 4 NFE, evaluation EMA, guidance
  --sample-cfg, default the training w or the middle of --cfg-range; the grids of the first snapshot and of the
  last --keep-grids, default 5, are kept) and DIR/checkpoint.safetensors (atomically);
  DIR/metrics.jsonl gets one JSON line per step; TensorBoard event files in DIR (tensorboard --logdir DIR) get
  the same figures (loss terms, gradient norm, learning rate, images/s, skipped steps, FID), the grids and the
  options. At the start the run writes its options, defaults included, to DIR/config.json: tvm train --config
  DIR/config.json --out OTHER repeats it, and with --resume continues it.
  --ema is the evaluation EMA: a fixed decay D, or power:G, a window of about step/(G+1) steps; more schedules
  after it (--ema power:16,power:32,power:8) are kept alongside as extra EMAs, saved in the checkpoint, to choose
  a width after the run (tvm sample --weights ema:power:32).
  --resume continues from DIR/checkpoint.safetensors exactly (same losses as an uninterrupted run); the model
  options must match the checkpoint's. --resume-from FILE starts a new run from the networks, AdamW state and
  step of FILE: a checkpoint of another run, or an official network pickle (.pkl) or training state (.pt), read
  as tvm import reads it; the model is FILE's (no --model options), the data order and random stream this
  run's (--seed), and --steps counts on from FILE's step; with --resume the run's own checkpoint continues.
  Runs on a GPU when one is found (--device auto, the default for images),
  else on the CPU; --device cpu|cuda forces either.
  A run that cannot save its checkpoint (disk full) stops with one line; the previous checkpoint is intact.
  SIGINT (Ctrl-C) or SIGTERM (preemption) stops the run after the current step: it saves the checkpoint (no
  FID), says so in one line and exits with status 130 or 143; a second signal ends it at once.
  --config FILE takes options from a JSON object whose keys are the option names ({"lr": 2e-4, "flip": true,
  "model": "S/2"}); --preset NAME takes a named recipe (tvm models lists them; "preset" in a file does too). The
  command line overrides the file, which overrides the preset; a key that is no option here is an error.

  Data-parallel (every rank draws the global batch's data and noise and evaluates its rows, so the results and
  --resume do not depend on the number of ranks; rank 0 writes the files; replicas compared at every --every):
\(LaunchPlan.help)
  --bucket-mb X   gradients are averaged in buckets of X MB started during backward (default 25)

  Latents (--data LATENTS.zip, made by tvm prepare --vae; the paper's ImageNet setting): every time an image is
  used, its latent is drawn afresh from its posterior, x = mean + std * eps, and normalised per channel,
  (x - raw_mean) / raw_std * final_std + final_mean, as the official encoder does:
  --latent-mean M1,M2,..  raw_mean (default ImageNet 256's: 0.86488,-0.27787343,0.21616915,0.3738409)
  --latent-std S1,S2,..   raw_std (default 4.85503674,5.31922414,3.93725398,3.9870003); tvm prepare --stats
                          prints both for a set
  --latent-final-mean X   (default 0)    --latent-final-std X   (default 1)
  --vae DIR               decode the sample grids with this SD-VAE (diffusers folder); without it the grids
                          show the latents' first channel. FID while training decodes its samples too (below)
  The presets im256-w2, im256-w1p75, im512-w2p5 and im512-w2p25 are the official configs (tvm models lists them).
""" + "\n\n" + [optimizerHelp, fidHelp, faultHelp].joined(separator: "\n\n")

/// The flags of `tvm train` on images (a config file's keys are the same names).
let imageTrainingOptionNames = OptionNames(options: ([
    "data", "data-dir", "labels", "classes", "pad", "model", "hidden", "depth", "heads", "patch", "cfg", "cfg-range",
    "label-dropout", "batch", "lr", "steps", "time-budget", "ema", "ema-target", "seed", "out", "every", "time-sampler",
    "sample-cfg", "method", "bucket-mb", "resume-from", "fid-every", "fid-samples", "fid-nfe", "fid-weights", "fid-dataset", "fid-ref",
    "keep-grids", "vae",
] as Set<String>).union(faultOptionNames).union(optimizerOptionNames).union(meanFlowOptionNames).union(improvedMeanFlowOptionNames)
    .union(latentOptionNames),
    switches: ["no-scaled-param", "flip", "resume", "tf32", "bf16", "keep-best", "time-spec-init", "in-context"])

/// `tvm train` on images: the options become a `TrainingLoop`, which resumes, trains, logs and snapshots.
func trainOnImages(_ args: [String]) throws {
    let a = try Arguments(command: "train", args, imageTrainingOptionNames)
    try a.expectPositional(0, "no positional arguments")
    // FID needs the Inception weights: without them, say so before anything else happens.
    let fidSettings = try FIDOptions.parse(a)
    // TF32 (about 1e-3 relative instead of float32's 1e-6) or bf16 matrix products on the GPU.
    _ = applyProductPrecision(a)
    let methodName = a.string("method", default: "tvm").lowercased()
    guard let method = Method(rawValue: methodName) else {
        let names = Method.allCases.map(\.rawValue).joined(separator: ", ")
        throw CLIError("unknown --method '\(methodName)'; choose one of \(names)", usage: true)
    }
    var config = TrainConfig()
    config.method = method
    config.batch = try a.int("batch", default: 128, range: 1...1_000_000)
    config.lr = try a.double("lr", default: 2e-4, range: 1e-12...10)
    config.seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
    if let ema = a.string("ema") { (config.evalEMA, config.extraEMAs) = try parseEMAList(ema) }
    config.emaTargetDecay = try a.double("ema-target", default: 0.99, range: 0...0.999999999)
    config.faults = try parseFaultOptions(a)
    let scale: GuidanceConfig.Scale
    var sampleCFG: Double
    if let r = a.string("cfg-range") {
        if a.string("cfg") != nil { throw CLIError("give --cfg or --cfg-range, not both", usage: true) }
        let (lo, hi) = try parseCFGRange(r)
        scale = .uniform(lo, hi)
        sampleCFG = (lo + hi) / 2
    } else if method == .improvedMeanFlow && a.string("cfg") == nil {
        // iMF's official guidance range.
        scale = .uniform(1, 8)
        sampleCFG = 4.5
    } else {
        let cfg = try a.double("cfg", default: 2, range: 1e-6...1e6)
        scale = .constant(cfg)
        sampleCFG = cfg
    }
    sampleCFG = try a.double("sample-cfg", default: sampleCFG, range: 1e-6...1e6)
    let labelDropout = try a.double("label-dropout", default: 0.1, range: 0...1)
    config.guidance = GuidanceConfig(scale: scale, labelDropout: labelDropout, scaledParameterization: !a.has("no-scaled-param"))
    var methodJSON = try applyMethodGuidance(a, method: method, scale: scale, labelDropout: labelDropout, into: &config)
    methodJSON += try applyTimeSampler(a, into: &config)
    let budget = try a.optionalDouble("time-budget", range: 0...1e9)
    let steps = a.string("steps") != nil || budget == nil ? try a.int("steps", default: 10000, range: 1...100_000_000) : nil
    try parseOptimizerOptions(a, into: &config, steps: steps)
    let every = try a.int("every", default: 1000, range: 1...100_000_000)
    let dataName = a.string("data", default: "fashion-mnist")

    // Closed where every rank ends together; a rank that fails just exits (closing NCCL waits for the others).
    let session = try DistributedSession.start(bucketMB: try a.double("bucket-mb", default: 25, range: 1e-6...65536))
    if session != nil && method != .tvm {
        throw CLIError("data-parallel training supports --method tvm only", usage: true)
    }
    if let session, config.batch % session.worldSize != 0 {
        throw CLIError("--batch \(config.batch) must be divisible by the \(session.worldSize) ranks", usage: true)
    }
    let data = try loadImageData(a)
    let initial = try a.string("resume-from").map { try startingCheckpoint($0, a, data: data, config: config) }
    var model = try initial?.model ?? imageModelConfig(a, data: data)
    let sampleInterval = try applyGuidanceInterval(a, method: method, model: &model, fresh: initial == nil, into: &config)
    if let sampleInterval { methodJSON.append(("sample_cfg_interval", .string("\(sampleInterval.lowerBound),\(sampleInterval.upperBound)"))) }
    let latent = try data.latentDraw.map { _ in try latentNormalization(a) }
    if let vaeDirectory = a.string("vae"), latent == nil {
        throw CLIError("--vae \(vaeDirectory) decodes latents; --data \(dataName) holds images", usage: true)
    }
    if latent != nil {
        if a.has("flip") { throw CLIError("--flip applies to images, not to latents (the official ImageNet configs do not flip)", usage: true) }
        if let fidSettings {
            guard a.string("vae") != nil else {
                throw CLIError("--fid-every on latents measures the decoded samples: give --vae DIR (the VAE of the latent set)",
                               usage: true)
            }
            if case .trainingImages = fidSettings.reference {
                throw CLIError("--fid-every on latents compares decoded samples with RGB images: give --fid-dataset RGB.zip (the cropped "
                               + "set of tvm prepare without --vae) or --fid-ref img256.pkl", usage: true)
            }
        }
    }
    let baseName = dataName.split(separator: "/").last.map(String.init) ?? "images"
    var plan = TrainingLoop.Plan(directory: a.string("out", default: "runs/\([".npy", ".zip"].contains { baseName.lowercased().hasSuffix($0) } ? String(baseName.dropLast(4)) : baseName)-tvm"))
    plan.resume = a.has("resume")
    plan.initial = initial
    plan.steps = steps
    plan.snapshotEvery = every
    plan.timeBudget = budget
    plan.flip = a.has("flip")
    plan.sampleGuidance = sampleCFG
    plan.sampleGuidanceInterval = sampleInterval
    plan.keepGrids = try a.int("keep-grids", default: 5, range: 0...100_000_000)
    var decoder: LatentDecoder?
    if let latent, let vaeDirectory = a.string("vae") {
        let vae = try AutoencoderKL(directory: vaeDirectory)
        guard vae.config.latentChannels == data.channels else {
            throw CLIError("\(vaeDirectory)/\(AutoencoderKL.configFileName): the VAE has \(vae.config.latentChannels) latent channels, "
                           + "the latents of \(dataName) have \(data.channels)")
        }
        let latentDecoder = LatentDecoder(vae: vae, normalization: latent.normalization)
        plan.decodeSamples = latentDecoder.decoded
        decoder = latentDecoder
    }
    let scaleText: String
    switch scale {
    case .constant(let w): scaleText = "\(w)"
    case .uniform(let lo, let hi): scaleText = "\(lo),\(hi)"
    default: scaleText = "off"
    }
    let emaText = ([config.evalEMA] + config.extraEMAs).map(\.description).joined(separator: ",")
    plan.description = .object([
        ("method", .string(method.rawValue)), ("data", .string(dataName)), ("count", .number(Double(data.count))),
        ("class_names", .array(data.classNames.map { .string($0) })),
        ("batch", .number(Double(config.batch))), ("lr", .number(config.lr)),
    ] + optimizerJSON(config) + [
        ("ema", .string(emaText)), ("ema_target", .number(config.emaTargetDecay)),
        ("cfg", .string(scaleText)), ("sample_cfg", .number(sampleCFG)),
        ("label_dropout", .number(config.guidance.labelDropout)),
        ("scaled_param", .bool(config.guidance.scaledParameterization)),
    ] + methodJSON + [
        ("seed", .number(Double(config.seed))), ("flip", .bool(plan.flip)),
    ] + faultJSON(config.faults) + (latent?.record ?? []))
    // Every option read by now: how it runs (--resume, --device, --gpus) is not part of what it computes.
    plan.options = a.resolvedOptions(leavingOut: ["resume"])

    do {
        let loop = try TrainingLoop(model: model, config: config, data: data, plan: plan, parallel: session?.parallel,
                                    observer: TrainingProgress(label: method.displayName), clock: now)
        guard try loop.start() else {
            session?.close()
            return
        }
        if let fidSettings, loop.isRoot {
            loop.fid = try fidSettings.tracking(data: data, named: dataName, seed: config.seed, guidance: sampleCFG,
                                                interval: sampleInterval, decoder: decoder)
        }
        let (total, trainable) = loop.trainer.net.parameterCount
        Console.info("\(method.displayName) on \(dataName): \(data.count) images \(data.channels)x\(data.height)x\(data.width), \(data.classes) classes; "
            + "DiT patch \(model.patch) hidden \(model.hidden) depth \(model.depth) heads \(model.heads) (\(trainable) trainable of \(total)); "
            + "batch \(config.batch), lr \(config.lr), cfg \(scaleText); \(deviceDescription())"
            + (session.map { "; " + $0.description } ?? ""))
        loop.stopRequested = StopSignal.install()
        try loop.run()
        if loop.interrupted, let signal = StopSignal.received {
            session?.close()
            Console.info("stopped by \(signal.name) after step \(loop.trainer.step), checkpoint saved: add --resume to continue")
            exit(128 + signal.number)
        }
    } catch let e as TrainingLoopError {
        throw CLIError(inOptionTerms: e)
    }
    session?.close()
}

/// The state `--resume-from FILE` starts a run from; its model must fit the data and its parameterization the run.
/// It stays among the run's options (config.json), where with --resume it gives the model and the run's own
/// checkpoint the state.
func startingCheckpoint(_ path: String, _ a: Arguments, data: ImageDataset, config: TrainConfig) throws -> TrainingCheckpoint {
    if let flag = ["model", "hidden", "depth", "heads", "patch"].first(where: { a.string($0) != nil }) ?? (a.has("in-context") ? "in-context" : nil) {
        throw CLIError("--\(flag): with --resume-from the model is the checkpoint's", usage: true)
    }
    guard FileSystem.isRegularFile(path) else { throw CLIError("--resume-from \(path): no such file") }
    let ck = try TrainingCheckpoint.isOfficial(path: path) ? TrainingCheckpoint.importing(path: path) : TrainingCheckpoint.read(path: path)
    let m = ck.model
    guard m.inputSize == data.height, data.height == data.width, m.inChannels == data.channels, m.numClasses == data.classes else {
        throw CLIError("--resume-from \(path): its model takes \(m.inputSize)x\(m.inputSize)x\(m.inChannels) images of \(m.numClasses) "
                       + "classes, the data are \(data.width)x\(data.height)x\(data.channels) of \(data.classes)")
    }
    if let scaled = ck.training["scaled_param"]?.bool, scaled != config.guidance.scaledParameterization {
        throw CLIError("--resume-from \(path): its model was trained with the scaled parameterization \(scaled ? "on" : "off"); "
                       + (scaled ? "drop --no-scaled-param" : "add --no-scaled-param"))
    }
    return ck
}

extension CLIError {
    /// A training loop's failure, in the words of `tvm train`'s options.
    init(inOptionTerms e: TrainingLoopError) {
        switch e {
        case .runExists: self.init("\(e); add --resume to continue it, or pick another --out to start afresh")
        case .noCheckpoint(let path): self.init("--resume: no checkpoint at \(path)")
        case .stoppedByFault(let fault, let kept): self.init("\(fault) (--on-fault stop); \(kept)")
        case .checkpointNotSaved: self.init(e.description)
        }
    }
}

/// A training loop's notes on stderr, and its progress: a bar toward the step count or the time budget.
final class TrainingProgress: TrainingObserver {
    /// The method's name, which the bar starts with.
    let label: String
    private var bar: ProgressBar?

    init(label: String) { self.label = label }

    func note(_ line: String) { Console.info(line) }

    func starting(at step: Int, steps: Int?, seconds: Double?) {
        bar = ProgressBar(label.padding(6), total: steps, seconds: seconds, from: step)
    }

    func stepped(_ stats: StepStats, rate: Double, elapsed: Double) {
        bar?.update(step: stats.step, loss: stats.loss)
    }
}
