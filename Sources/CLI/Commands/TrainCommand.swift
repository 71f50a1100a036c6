import TensorCore
import NN
import TVM
import Data
import Eval
import Formats

/// `tvm train`: one method on a 2-D distribution, or TVM (or flow matching) on images (`ImageTraining.swift`).
struct TrainCommand: Command {
    let name = "train"
    let summary = "train one method on a 2-D distribution, or TVM on images (Fashion-MNIST, MNIST, PNG folders, NPY)"
    let help = """
        tvm train [--data NAME] [--method tvm|meanflow|imf|fm] [--steps N] [--time-budget S] [--batch N] [--lr X] [--seed N]
                  [--width N] [--depth N] [--nfe LIST] [--ema D|power:G] [--time-scale X] [--time-sampler X,..] [--out DIR]
                  [optimizer options] [fault options] [--config FILE] [--preset NAME]
          Trains one method on a 2-D distribution (checkerboard, 8gaussians, 25gaussians, moons, spirals) and
          reports W2 at each NFE (default 1,2,4) for the evaluation EMA (--ema: a fixed decay, or power:G, a window
          of about step/(G+1) steps; default power:7). It trains --steps (default 2000) or, with --time-budget, for S
          seconds (no step limit unless --steps is given too: the same seconds for every method is an equal-budget
          comparison). Writes DIR/config.json (the options, defaults included; tvm
          train --config DIR/config.json repeats the run), DIR/losses.jsonl (one JSON object per step, as
          metrics.jsonl below), TensorBoard event files (the same figures and the scatter plot),
          DIR/samples_<method>_nfe<N>.npy, DIR/data.npy, DIR/scatter.png and DIR/results.json (default DIR: runs/<data>-<method>).
          The optimizer, fault and --time-sampler options are those of image training, below.

        """ + imageTrainingHelp

    /// Its defaults start a long run: bare `tvm train` prints the usage.
    let needsArguments = true

    /// A small MLP on 2-D data runs on the CPU; images use a GPU when there is one.
    func defaultDevice(_ args: [String]) -> DeviceChoice { isImageTraining(args) ? .auto : .cpu }

    func configurableOptions(_ args: [String]) -> OptionNames? {
        isImageTraining(args) ? imageTrainingOptionNames : pointTrainingOptionNames
    }

    /// The flags of `tvm train` on 2-D data.
    let pointTrainingOptionNames = OptionNames(options: (["data", "method", "steps", "batch", "lr", "seed", "width", "depth", "nfe",
                                                          "out", "eval-samples", "ema", "time-scale", "time-sampler", "time-budget"] as Set<String>)
                                                        .union(faultOptionNames).union(optimizerOptionNames))

    func run(_ args: [String]) throws {
        try isImageTraining(args) ? trainOnImages(args) : trainOnPoints(args)
    }

    func trainOnPoints(_ args: [String]) throws {
        let a = try Arguments(command: "train", args, pointTrainingOptionNames)
        try a.expectPositional(0, "no positional arguments")
        let dataName = a.string("data", default: "checkerboard")
        let distribution: Toy2D
        do { distribution = try Toy2D.named(dataName) } catch { throw CLIError("\(error)", usage: true) }
        let methodName = a.string("method", default: "tvm")
        guard let method = Method(rawValue: methodName.lowercased()) else {
            throw CLIError("unknown method '\(methodName)'; choose one of tvm, meanflow, imf, fm", usage: true)
        }
        var config = TrainConfig()
        config.method = method
        config.batch = try a.int("batch", default: 1024, range: 1...1_000_000)
        config.lr = try a.double("lr", default: 2e-3, range: 1e-12...10)
        config.seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        let budget = try a.optionalDouble("time-budget", range: 0...1e9)
        let steps = a.string("steps") != nil || budget == nil ? try a.int("steps", default: 2000, range: 1...100_000_000) : nil
        if let ema = a.string("ema") { config.evalEMA = try parseEMA(ema) }
        config.faults = try parseFaultOptions(a)
        try parseOptimizerOptions(a, into: &config, steps: steps)
        _ = try applyTimeSampler(a, into: &config)
        let network = MLPFlowMap(width: try a.int("width", default: 256, range: 1...65536),
                                 depth: try a.int("depth", default: 4, range: 1...64),
                                 timeScale: try a.double("time-scale", default: MLPFlowMap().timeScale, range: 1e-6...1e6))
        let nfes = try a.intList("nfe", default: [1, 2, 4])
        let n = try a.int("eval-samples", default: 2000, range: 2...20000)
        let out = a.string("out", default: "runs/\(distribution.rawValue)-\(method.rawValue)")
        try FileSystem.makeDirectories(out)

        var evalRNG = RandomGenerator(seed: config.seed &+ 1000)
        let data = distribution.sample(n, rng: &evalRNG)
        let floor = try Wasserstein.w2(data, distribution.sample(n, rng: &evalRNG), dim: 2)
        let options = a.resolvedOptions()
        try AtomicFile.write(path: out + "/config.json", bytes: Array((options.serialized(pretty: true) + "\n").utf8))
        let log = try RunLog(directory: out, metricsPath: out + "/losses.jsonl", after: 0, batch: config.batch, options: options)
        let result = try runToy(method, distribution: distribution, network: network, config: config, steps: steps,
                                seconds: budget, nfes: nfes, data: data, log: log)
        printTable([result], floor: floor, n: n)
        let scatter = scatterPlot([result], data: data)
        try scatter.writePNG(path: out + "/scatter.png")
        try log.image("scatter", scatter, step: result.steps)
        try log.close()
        try writeResults([result], floor: floor, data: data, out: out, extra: [("distribution", .string(distribution.rawValue))])
        Console.info("wrote \(out)/config.json, losses.jsonl, TensorBoard events, results.json, scatter.png and NPY files")
    }
}
