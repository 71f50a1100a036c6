import TensorCore
import NN
import TVM
import Data
import Eval
import Formats

/// `tvm demo`: the methods on the checkerboard, same network, batch, optimizer and steps, compared by W2.
struct DemoCommand: Command {
    let name = "demo"
    let summary = "train TVM, MeanFlow, iMF and flow matching on the checkerboard and compare W2 at 1-4 NFE"
    let help = """
        tvm demo [--methods all|LIST] [--out DIR] [--seed N] [--steps N]
          Trains TVM, MeanFlow, iMF and flow matching on the checkerboard on the CPU (same MLP, batch, optimizer),
          then prints W2 (exact, 2000 samples) at 1, 2, 4 NFE (and 8, 32 Euler steps for flow matching) with the
          data-vs-data floor, and writes a scatter plot of the 1-NFE samples (tvm-demo.png, or DIR/scatter.png).
          --out DIR   also write results.json and NPY files of the evaluation data and every method's samples
          --methods   all (the default) or some of tvm,meanflow,imf,fm
          --steps N   training steps of each method (default 1500)
          --seed N    seed for everything (default 0)
        """

    /// Defined on the CPU: its budget is for the 2-core machine.
    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "demo", args, options: ["out", "seed", "steps", "methods"])
        try a.expectPositional(0, "no positional arguments")
        let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        let steps = try a.int("steps", default: 1500, range: 1...1_000_000)
        let methods = try parseMethodList(a.string("methods", default: "all"))
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
        var results: [ToyRunResult] = []
        for method in methods {
            let nfes = method == .flowMatching ? [1, 2, 4, 8, 32] : [1, 2, 4]
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
}

/// `all`, or a comma-separated list of method names (in `Method`'s order, each once).
func parseMethodList(_ text: String) throws -> [Method] {
    if text.lowercased() == "all" { return Method.allCases }
    let names = commaSeparated(text).map { $0.lowercased() }
    let methods = names.compactMap(Method.init(rawValue:))
    guard !names.isEmpty, methods.count == names.count else {
        let known = Method.allCases.map(\.rawValue).joined(separator: ",")
        throw CLIError("--methods must be all or a comma-separated list of \(known), got '\(text)'", usage: true)
    }
    return Method.allCases.filter(methods.contains)
}
