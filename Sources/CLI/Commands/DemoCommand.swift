import TensorCore
import NN
import TVM
import Data
import Eval
import Formats

/// `tvm demo`: the methods on the checkerboard, same network, batch, optimizer and steps, compared by W2.
struct DemoCommand: Command {
    let name = "demo"
    let summary = "train TVM, MeanFlow and flow matching (iMF too) on the checkerboard and compare W2 at 1-4 NFE"
    let help = """
        tvm demo [--methods LIST|all] [--out DIR] [--seed N] [--steps N] [--budget S]
          Trains TVM, MeanFlow and flow matching (--methods all adds iMF) on the checkerboard on the CPU (same MLP,
          batch, optimizer), then prints W2 (exact, 2000 samples) at 1, 2, 4 NFE (and 8, 32 Euler steps for flow
          matching) with the data-vs-data floor, and writes a scatter plot of the 1-NFE samples (tvm-demo.png, or
          DIR/scatter.png). Each method trains for --steps or its share of --budget, whichever ends first: on a fast
          machine every method gets the same steps (and the results repeat exactly), on a slow one training still
          ends in time.
          --methods    some of tvm,meanflow,imf,fm, or all (default tvm,meanflow,fm)
          --out DIR    also write results.json and NPY files of the evaluation data and every method's samples
          --steps N    training steps of each method at most (default 1500)
          --budget S   training seconds of the methods together at most (default \(Int(DemoCommand.defaultBudget)) for the default three,
                       more for more methods; 0: no limit), shared as their step costs are: \(DemoCommand.shareText)
          --seed N     seed for everything (default 0)
        """

    /// The methods in the order they train, with the NFEs evaluated and their weight in the time budget: about the
    /// ratio of their step times (34, 19 and 11 ms on the 2-core machine, docs/BENCHMARKS.md; iMF's JVP is
    /// MeanFlow's), TVM's a little more, so that on that machine idle every method runs its 1500 steps and a busy
    /// one cuts all alike. The weights of the default three add up to 1.
    static let plan: [(method: Method, nfes: [Int], weight: Double)] = [
        (.tvm, [1, 2, 4], 0.55), (.meanFlow, [1, 2, 4], 0.29), (.improvedMeanFlow, [1, 2, 4], 0.29),
        (.flowMatching, [1, 2, 4, 8, 32], 0.16),
    ]
    static let defaultMethods: [Method] = [.tvm, .meanFlow, .flowMatching]
    /// Training seconds of the default three: with the evaluation (about 14 s), the demo ends within 2 minutes.
    static let defaultBudget = 105.0

    static var shareText: String {
        plan.map { "\($0.method.displayName) \(fmt($0.weight, 2))" }.joined(separator: ", ")
    }

    /// Defined on the CPU: its budget is for the 2-core machine.
    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "demo", args, options: ["out", "seed", "steps", "budget", "methods"])
        try a.expectPositional(0, "no positional arguments")
        let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        let steps = try a.int("steps", default: 1500, range: 1...1_000_000)
        let methods = try parseMethodList(a.string("methods", default: Self.defaultMethods.map(\.rawValue).joined(separator: ",")))
        let plan = Self.plan.filter { methods.contains($0.method) }
        let weight = plan.map(\.weight).reduce(0, +)
        let budget = try a.double("budget", default: Self.defaultBudget * weight, range: 0...1e9)
        let out = a.string("out")
        // Before minutes of training: the folder the results go to (the current one for tvm-demo.png) takes files.
        if let out { try FileSystem.makeDirectories(out) }
        try FileSystem.checkWritable(directory: out ?? ".")

        let network = MLPFlowMap(width: 256, depth: 4)
        var config = TrainConfig()
        // Batch 512: TVM's 1-NFE W2 after 1500 steps is 0.195 (0.178 with 1024, at twice the time; BENCHMARKS.md).
        config.batch = 512
        config.lr = 2e-3
        config.seed = seed
        let n = 2000
        var evalRNG = RandomGenerator(seed: seed &+ 1000)
        let data = Toy2D.checkerboard.sample(n, rng: &evalRNG)
        let floor = try Wasserstein.w2(data, Toy2D.checkerboard.sample(n, rng: &evalRNG), dim: 2)
        if let note = CPUBackend.blasNotice { Console.info(note) }
        Console.info("TVM demo: checkerboard, MLP \(network.depth)x\(network.width), batch \(config.batch), AdamW lr \(config.lr) betas (0.9, 0.95), CPU (BLAS: \(CPUBackend.blasName))")
        if budget > 0 {
            let shares = plan.map { "\($0.method.displayName) \(Int(($0.weight / weight * budget).rounded())) s" }.joined(separator: ", ")
            Console.info("expected time: at most about \(formatDuration(budget + 14)) (\(steps) steps each or at most \(shares) of training, "
                         + "then the W2 evaluation)")
        }

        // The same network, batch, optimizer and number of steps for every method, unless the time budget ends one first.
        var results: [ToyRunResult] = []
        for (method, nfes, w) in plan {
            results.append(try runToy(method, distribution: .checkerboard, network: network, config: config,
                                      steps: steps, seconds: budget > 0 ? w / weight * budget : nil, nfes: nfes, data: data))
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
