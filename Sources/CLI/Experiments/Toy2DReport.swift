import TensorCore
import NN
import TVM
import Data
import Formats

/// One method trained on 2-D data: its training time and its samples and W2 at each NFE.
struct ToyRunResult {
    var method: Method
    var seconds: Double
    var steps: Int
    var evals: [(nfe: Int, samples: [Float], w2: Double)]
}

/// Trains one method with a progress bar (for `steps`, or `seconds` when that comes first; nil steps: no step
/// limit) and evaluates it against `data`; `log` records every step.
func runToy(_ method: Method, distribution: Toy2D, network: MLPFlowMap, config base: TrainConfig, steps: Int?,
            seconds: Double? = nil, nfes: [Int], data: [Float], log: RunLog? = nil) throws -> ToyRunResult {
    var config = base
    config.method = method
    let bar = ProgressBar(method.displayName.padding(14), total: steps, seconds: seconds)
    let experiment = Toy2DExperiment(distribution: distribution, network: network, config: config, steps: steps ?? Int.max,
                                     seconds: seconds)
    var firstError: Error?
    var stoppedBy: NumericalFault?
    var done = 0
    let trainer = experiment.train { stats in
        done = stats.step
        bar.update(step: stats.step, loss: stats.loss)
        if let fault = stats.fault {
            if stats.stopped { stoppedBy = fault } else { Console.info(fault.description) }
        }
        guard firstError == nil, let log else { return }
        let elapsed = bar.elapsed
        do { try log.step(stats, rate: Double(stats.step) / max(elapsed, 1e-9), elapsed: elapsed) } catch { firstError = error }
    }
    if let firstError { throw firstError }
    if let stoppedBy { throw CLIError("\(method.displayName): \(stoppedBy) (--on-fault stop)") }
    let elapsed = bar.elapsed
    if done < steps ?? Int.max {
        Console.info("\(method.displayName): \(done) steps in the time budget of \(Int((seconds ?? 0).rounded())) s")
    }
    let evals = try Toy2DExperiment.evaluate(trainer, nfes: nfes, data: data, noiseSeed: config.seed &+ 77)
    return ToyRunResult(method: method, seconds: elapsed, steps: done, evals: evals)
}

/// The W2 table of `tvm demo` and 2-D `tvm train`, on stdout.
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

/// The data and each method's 1-NFE samples side by side.
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

/// DIR/data.npy, DIR/samples_<method>_nfe<K>.npy and DIR/results.json.
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
