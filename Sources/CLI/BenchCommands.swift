import TensorCore
import NN
import TVM
import Data
#if canImport(Glibc)
import Glibc
#endif

/// `tvm bench <what>`: timings of whole training steps and kernels, median over repeats after a warm-up.
func runBench(_ args: [String]) throws {
    guard let what = args.first else { throw CLIError("'tvm bench' needs what to time: toy (see 'tvm help bench')", usage: true) }
    switch what {
    case "toy": try benchToy(Array(args.dropFirst()))
    default: throw CLIError("unknown benchmark '\(what)'; choose toy", usage: true)
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The CPU TVM step of `tvm train` on 2-D data (the comparison with scripts/bench_torch_cpu.py).
func benchToy(_ args: [String]) throws {
    let a = try Arguments(command: "bench toy", args, options: ["batch", "width", "depth", "steps", "warmup", "method"])
    let batch = try a.int("batch", default: 1024, range: 1...1_000_000)
    let steps = try a.int("steps", default: 100, range: 1...100_000), warmup = try a.int("warmup", default: 10, range: 0...10_000)
    let methodName = a.string("method", default: "tvm")
    guard let method = Method(rawValue: methodName) else { throw CLIError("unknown method '\(methodName)'; choose one of tvm, meanflow, fm", usage: true) }
    let network = MLPFlowMap(width: try a.int("width", default: 256, range: 1...65536), depth: try a.int("depth", default: 4, range: 1...64))
    var config = TrainConfig()
    config.method = method
    config.batch = batch
    config.lr = 2e-3
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
    Console.out("\(method.displayName) step, MLP \(network.depth)x\(network.width), batch \(batch), CPU (\(onlineCores()) cores, BLAS: \(CPUBackend.blasName)): median \(fmt(m * 1000, 2)) ms/step, \(fmt(1 / m, 1)) it/s over \(steps) steps")
}

func onlineCores() -> Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
