import TensorCore
import NN
import TVM
import Data
import Eval
import Formats

/// `tvm demo`: the three methods on the checkerboard, same network, batch, optimizer and steps, compared by W2.
struct DemoCommand: Command {
    let name = "demo"
    let summary = "train TVM, MeanFlow and flow matching on the checkerboard and compare W2 at 1-4 NFE"
    let help = """
        tvm demo [--out DIR] [--seed N] [--steps N] [--budget S]
          Trains TVM, MeanFlow and flow matching on the checkerboard on the CPU (same MLP, batch, optimizer),
          then prints W2 (exact, 2000 samples) at 1, 2, 4 NFE (and 8, 32 Euler steps for flow matching) with the
          data-vs-data floor, and writes a scatter plot of the 1-NFE samples (tvm-demo.png, or DIR/scatter.png).
          Each method trains for --steps or its share of --budget, whichever ends first: on a fast machine every
          method gets the same steps (and the results repeat exactly), on a slow one training still ends in time.
          --out DIR    also write results.json and NPY files of the evaluation data and every method's samples
          --steps N    training steps of each method at most (default 1500)
          --budget S   training seconds of the three together at most (default \(Int(DemoCommand.defaultBudget)); 0: no limit),
                       shared as their step costs are: TVM \(DemoCommand.percent(0)), MeanFlow \(DemoCommand.percent(1)), flow matching \(DemoCommand.percent(2))
          --seed N     seed for everything (default 0)
        """

    /// The methods in the order they train, with the NFEs evaluated and their share of the time budget: about the
    /// ratio of their step times (34, 19 and 11 ms on the 2-core machine, docs/BENCHMARKS.md), TVM's a little more,
    /// so that on that machine idle every method runs its 1500 steps and a busy one cuts all three alike.
    static let plan: [(method: Method, nfes: [Int], share: Double)] = [
        (.tvm, [1, 2, 4], 0.55), (.meanFlow, [1, 2, 4], 0.29), (.flowMatching, [1, 2, 4, 8, 32], 0.16),
    ]
    /// Training seconds of all three: with the evaluation (about 14 s), the demo ends within 2 minutes.
    static let defaultBudget = 105.0

    static func percent(_ i: Int) -> String { "\(Int((plan[i].share * 100).rounded()))%" }

    /// Defined on the CPU: its budget is for the 2-core machine.
    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "demo", args, options: ["out", "seed", "steps", "budget"])
        try a.expectPositional(0, "no positional arguments")
        let seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        let steps = try a.int("steps", default: 1500, range: 1...1_000_000)
        let budget = try a.double("budget", default: Self.defaultBudget, range: 0...1e9)
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
            let shares = Self.plan.map { "\($0.method.displayName) \(Int(($0.share * budget).rounded())) s" }.joined(separator: ", ")
            Console.info("expected time: at most about \(formatDuration(budget + 14)) (\(steps) steps each or at most \(shares) of training, "
                         + "then the W2 evaluation)")
        }

        // The same network, batch, optimizer and number of steps for every method, unless the time budget ends one first.
        var results: [ToyRunResult] = []
        for (method, nfes, share) in Self.plan {
            results.append(try runToy(method, distribution: .checkerboard, network: network, config: config,
                                      steps: steps, seconds: budget > 0 ? share * budget : nil, nfes: nfes, data: data))
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
