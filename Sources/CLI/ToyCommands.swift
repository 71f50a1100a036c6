import TensorCore
import NN
import TVM
import Data
import Eval
import Formats
#if canImport(Glibc)
import Glibc
#endif

let helpTexts: [String: String] = [
    "demo": """
    tvm demo [--out DIR] [--seed N] [--steps N]
      Trains TVM, MeanFlow and flow matching on the checkerboard on the CPU (same MLP, batch, optimizer),
      then prints W2 (exact, 2000 samples) at 1, 2, 4 NFE (and 8, 32 Euler steps for flow matching) with the
      data-vs-data floor, and writes a scatter plot of the 1-NFE samples (tvm-demo.png, or DIR/scatter.png).
      --out DIR   also write results.json and NPY files of the evaluation data and every method's samples
      --steps N   training steps of each method (default 1500)
      --seed N    seed for everything (default 0)
    """,
    "train": """
    tvm train [--data NAME] [--method tvm|meanflow|fm] [--steps N] [--batch N] [--lr X] [--seed N]
              [--width N] [--depth N] [--nfe LIST] [--ema D|power:G] [--time-scale X] [--out DIR]
              [--on-fault zero-rows|skip|stop] [--loss-spike K] [--grad-spike K] [--grad-limit X] [--fault-warmup N]
      Trains one method on a 2-D distribution (checkerboard, 8gaussians, 25gaussians, moons, spirals) and
      reports W2 at each NFE (default 1,2,4) for the evaluation EMA (--ema: a fixed decay, or power:G, a window
      of about step/(G+1) steps; default power:7). Writes DIR/losses.jsonl (one JSON object per step),
      DIR/samples_nfe<N>.npy, DIR/data.npy, DIR/scatter.png and DIR/results.json (default DIR: runs/<data>-<method>).

    """ + imageTrainHelp,
    "bench": """
    tvm bench toy [--method tvm|meanflow|fm] [--batch N] [--width N] [--depth N] [--steps N] [--warmup N]
      Median wall time of one full training step (loss with its JVP, backward, AdamW, both EMAs) of the
      2-D MLP, after a warm-up.
    tvm bench train [--model B/2] [--res 32] [--channels 4] [--classes 1000] [--batch 64] [--steps 20] [--tf32|--bf16]
      A full TVM step of a DiT (JVP, both teacher passes, flow-matching pass, backward, AdamW, both EMAs):
      median step time, images/s and peak GPU memory.
    tvm bench sample [--model B/2] [--batch 256] [--nfe 1] ...   sampling throughput.
    tvm bench attention [--b 64] [--h 12] [--s 256] [--d 64]     the attention primitive with its JVP, and its backward.
    All take --device cuda|cpu|auto (default auto).
    """,
    "w2": """
    tvm w2 A B
      Exact 2-Wasserstein distance between two equal-size point sets (CSV, one point per line, or NPY [n, d]).
    """,
].merging(referenceCheckHelp) { own, _ in own }.merging(imageHelpTexts) { own, _ in own }
    .merging(fidHelpTexts) { own, _ in own }
    .merging(distributedHelpTexts) { own, _ in own }

struct ToyRunResult {
    var method: Method
    var seconds: Double
    var steps: Int
    var evals: [(nfe: Int, samples: [Float], w2: Double)]
}

/// Trains one method with a progress bar and evaluates it against `data`.
func runToy(_ method: Method, distribution: Toy2D, network: MLPFlowMap, config base: TrainConfig, steps: Int,
            nfes: [Int], data: [Float], log: LineWriter? = nil) throws -> ToyRunResult {
    var config = base
    config.method = method
    let bar = ProgressBar(method.displayName.padding(14), total: steps)
    let experiment = Toy2DExperiment(distribution: distribution, network: network, config: config, steps: steps)
    var firstError: Error?
    var stoppedBy: NumericalFault?
    let trainer = experiment.train { stats in
        bar.update(step: stats.step, loss: stats.loss)
        if let fault = stats.fault {
            if stats.stopped { stoppedBy = fault } else { Console.info(fault.description) }
        }
        guard firstError == nil, let log else { return }
        var fields: [(String, JSONValue)] = [("step", .number(Double(stats.step))), ("loss", .number(stats.loss)),
                                             ("grad_norm", .number(stats.gradNorm)), ("time", .number(bar.elapsed))]
        if let t = stats.terminal { fields.append(("terminal", .number(t))) }
        if let f = stats.flowMatching { fields.append(("fm", .number(f))) }
        if stats.nanRows > 0 { fields.append(("nan_rows", .number(Double(stats.nanRows)))) }
        if stats.skipped { fields.append(("skipped", .bool(true))) }
        if let fault = stats.fault { fields.append(("fault", .string(fault.description))) }
        do { try log.write(JSONValue.object(fields).serialized()) } catch { firstError = error }
    }
    if let firstError { throw firstError }
    if let stoppedBy { throw CLIError("\(method.displayName): \(stoppedBy) (--on-fault stop)") }
    let seconds = bar.elapsed
    let evals = try Toy2DExperiment.evaluate(trainer, nfes: nfes, data: data, noiseSeed: config.seed &+ 77)
    return ToyRunResult(method: method, seconds: seconds, steps: steps, evals: evals)
}

func runDemo(_ args: [String]) throws {
    let a = try Arguments(command: "demo", args, options: ["out", "seed", "steps"])
    try a.expectPositional(0, "no positional arguments")
    let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
    let steps = try a.int("steps", default: 1500, range: 1...1_000_000)
    let out = a.string("out")
    if let out { try FileSystem.makeDirectories(out) }

    let network = MLPFlowMap(width: 256, depth: 4)
    var config = TrainConfig()
    config.batch = 1024
    config.lr = 2e-3
    config.seed = seed
    let n = 2000
    var evalRNG = RandomGenerator(seed: seed &+ 1000)
    let data = Toy2D.checkerboard.sample(n, rng: &evalRNG)
    let floor = try Wasserstein.w2(data, Toy2D.checkerboard.sample(n, rng: &evalRNG), dim: 2)
    Console.info("TVM demo: checkerboard, MLP \(network.depth)x\(network.width), batch \(config.batch), AdamW lr \(config.lr) betas (0.9, 0.95), CPU (BLAS: \(CPUBackend.blasName))")

    // The same budget for every method: network, batch, optimizer and number of steps.
    let plan: [(Method, [Int])] = [(.tvm, [1, 2, 4]), (.meanFlow, [1, 2, 4]), (.flowMatching, [1, 2, 4, 8, 32])]
    var results: [ToyRunResult] = []
    for (method, nfes) in plan {
        results.append(try runToy(method, distribution: .checkerboard, network: network, config: config,
                                  steps: steps, nfes: nfes, data: data))
    }
    printTable(results, floor: floor, n: n)
    let png = out.map { $0 + "/scatter.png" } ?? "tvm-demo.png"
    try scatterPlot(results, data: data).writePNG(path: png)
    Console.info("wrote \(png)")
    if let out {
        try writeResults(results, floor: floor, data: data, out: out, extra: [("distribution", .string("checkerboard"))])
        Console.info("wrote \(out)/results.json and NPY files of the data and samples")
    }
}

func runTrain(_ args: [String]) throws {
    if isImageTraining(args) { return try runImageTrain(args) }
    let a = try Arguments(command: "train", args, options: (["data", "method", "steps", "batch", "lr", "seed", "width",
                                                             "depth", "nfe", "out", "eval-samples", "ema", "time-scale"] as Set<String>)
                                                            .union(faultOptionNames))
    try a.expectPositional(0, "no positional arguments")
    let dataName = a.string("data", default: "checkerboard")
    let distribution: Toy2D
    do { distribution = try Toy2D.named(dataName) } catch { throw CLIError("\(error)", usage: true) }
    let methodName = a.string("method", default: "tvm")
    guard let method = Method(rawValue: methodName.lowercased()) else {
        throw CLIError("unknown method '\(methodName)'; choose one of tvm, meanflow, fm", usage: true)
    }
    var config = TrainConfig()
    config.method = method
    config.batch = try a.int("batch", default: 1024, range: 1...1_000_000)
    config.lr = try a.double("lr", default: 2e-3, range: 1e-12...10)
    config.seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
    let steps = try a.int("steps", default: 2000, range: 1...100_000_000)
    if let ema = a.string("ema") { config.evalEMA = try parseEMA(ema) }
    config.faults = try parseFaultOptions(a)
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
    let log = try LineWriter(path: out + "/losses.jsonl")
    let result = try runToy(method, distribution: distribution, network: network, config: config, steps: steps,
                            nfes: nfes, data: data, log: log)
    printTable([result], floor: floor, n: n)
    try scatterPlot([result], data: data).writePNG(path: out + "/scatter.png")
    try writeResults([result], floor: floor, data: data, out: out, extra: [("distribution", .string(distribution.rawValue))])
    Console.info("wrote \(out)/losses.jsonl, results.json, scatter.png and NPY files")
}

/// "0.999" (a fixed decay) or "power:GAMMA" (a window growing with the step count).
func parseEMA(_ s: String) throws -> EMASchedule {
    if s.hasPrefix("power:"), let g = Double(s.dropFirst(6)), g > 0, g.isFinite { return .power(gamma: g, max: 0.9999) }
    if let d = Double(s), d >= 0, d < 1 { return .fixed(d) }
    throw CLIError("--ema must be a decay in [0, 1) or power:GAMMA with GAMMA > 0, got '\(s)'", usage: true)
}

/// "A,B,...": the evaluation EMA, then extra EMAs of other widths kept alongside it (no two the same).
func parseEMAList(_ s: String) throws -> (first: EMASchedule, extra: [EMASchedule]) {
    let schedules = try commaSeparated(s).map(parseEMA)
    var seen = Set<String>()
    for e in schedules where !seen.insert(e.description).inserted {
        throw CLIError("--ema lists \(e.description) twice", usage: true)
    }
    return (schedules[0], Array(schedules.dropFirst()))
}

func runW2(_ args: [String]) throws {
    let a = try Arguments(command: "w2", args, options: [])
    try a.expectPositional(2, "two point files")
    let (pa, da) = try PointFile.read(path: a.positional[0])
    let (pb, db) = try PointFile.read(path: a.positional[1])
    guard da == db else { throw CLIError("the point files have different dimensions (\(da) and \(db))") }
    guard pa.count == pb.count else {
        throw CLIError("the point files have different sizes (\(pa.count / da) and \(pb.count / db) points); exact W2 here needs equal sizes")
    }
    do { Console.out(fmt(try Wasserstein.w2(pa, pb, dim: da), 6)) } catch { throw CLIError("\(error)") }
}

func printTable(_ results: [ToyRunResult], floor: Double, n: Int) {
    let allNFE = Array(Set(results.flatMap { $0.evals.map(\.nfe) })).sorted()
    var header = "method".padding(15) + "steps".padding(7) + "train s".padding(9)
    for k in allNFE { header += ("W2@\(k)").padding(9) }
    Console.out("")
    Console.out(header)
    for r in results {
        var line = r.method.displayName.padding(15) + "\(r.steps)".padding(7) + fmt(r.seconds, 1).padding(9)
        for k in allNFE { line += (r.evals.first { $0.nfe == k }.map { fmt($0.w2, 3) } ?? "-").padding(9) }
        Console.out(line)
    }
    Console.out("data-vs-data floor (n = \(n)): \(fmt(floor, 3))")
}

func scatterPlot(_ results: [ToyRunResult], data: [Float]) -> Image {
    let colors: [RGB] = [.red, .blue, .green]
    var panels: [(title: String, points: [Float], color: RGB)] = [("data", data, RGB(60, 60, 60))]
    for (i, r) in results.enumerated() {
        if let e = r.evals.first(where: { $0.nfe == 1 }) {
            panels.append(("\(r.method.displayName) 1-NFE W2 \(fmt(e.w2, 3))", e.samples, colors[i % colors.count]))
        }
    }
    return scatterGrid(panels: panels, reference: nil, extent: -2.5...2.5, panelSize: 360, columns: panels.count)
}

func writeResults(_ results: [ToyRunResult], floor: Double, data: [Float], out: String, extra: [(String, JSONValue)]) throws {
    let n = data.count / 2
    try NPYArray.write(path: out + "/data.npy", shape: [n, 2], floats: data)
    var methods: [JSONValue] = []
    for r in results {
        var w2: [(String, JSONValue)] = []
        for e in r.evals {
            try NPYArray.write(path: out + "/samples_\(r.method.rawValue)_nfe\(e.nfe).npy", shape: [n, 2], floats: e.samples)
            w2.append(("\(e.nfe)", .number(e.w2)))
        }
        methods.append(.object([("method", .string(r.method.rawValue)), ("steps", .number(Double(r.steps))),
                                ("train_seconds", .number(r.seconds)), ("w2_by_nfe", .object(w2))]))
    }
    let json = JSONValue.object(extra + [("samples", .number(Double(n))), ("floor", .number(floor)), ("methods", .array(methods))])
    try AtomicFile.write(path: out + "/results.json", bytes: Array(json.serialized(pretty: true).utf8))
}

