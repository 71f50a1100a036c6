import TensorCore
import Distributed
import NN
import TVM
import Data
#if canImport(Glibc)
import Glibc
#endif

/// `tvm dist-check`: data-parallel training end to end across processes, against one process.
struct DistCheckCommand: Command {
    let name = "dist-check"
    let summary = "check data-parallel training across processes: broadcast, averaged gradients, replicas"
    let help = """
        tvm dist-check --gpus N | --procs N [--comm nccl|socket] [--batch B] [--bucket-mb X] [--seed N]
          Checks data-parallel training end to end on this machine: the ranks start from different weights, rank 0's
          are broadcast and the replicas compared (hashes of student, teacher, EMA, Adam moments, RNG, sampler);
          then each rank takes its share of a B-row batch (default 4 per rank) of a small DiT's TVM loss, its
          gradients are averaged in buckets of X MB (default 0.01, so that there are several) started during
          backward, and compared with the gradient of the whole batch computed in one process; last, two training
          steps and another replica check. Prints the largest relative difference of each rank and fails above 1e-5.
        \(LaunchPlan.help)
        """

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "dist-check", args, options: ["batch", "bucket-mb", "seed"])
        try a.expectPositional(0, "no positional arguments")
        guard let session = try DistributedSession.start(bucketMB: try a.double("bucket-mb", default: 0.01, range: 1e-6...65536)) else {
            throw CLIError("tvm dist-check runs as several processes: give --gpus N or --procs N", usage: true)
        }
        let W = session.worldSize, rank = session.rank
        let batch = try a.int("batch", default: 4 * W, range: 1...1_000_000)
        guard batch % W == 0 else { throw CLIError("--batch \(batch) must be divisible by the \(W) ranks", usage: true) }
        var config = TrainConfig()
        config.batch = batch
        config.lr = 1e-3
        config.seed = UInt64(try a.int("seed", default: 0, range: 0...Int(Int32.max)))
        config.guidance = GuidanceConfig(scale: .uniform(1, 3), labelDropout: 0.1)
        let classes = 3
        let net = try DiT(DiTConfig(patch: 2, hidden: 32, depth: 2, heads: 2, inputSize: 8, inChannels: 1, numClasses: classes))
        let trainer = Trainer(network: net, config: config)
        Console.info("dist-check: \(session.description), \(deviceDescription())")

        // 1. Different weights on every rank, then rank 0's everywhere.
        if rank != 0 { for name in trainer.student.names { trainer.student[name] = trainer.student[name] * Double(1 + rank) } }
        var sampler = BatchSampler(count: 4 * batch, seed: config.seed)
        try onRank(rank) { try trainer.synchronize(sampler: &sampler, over: session.communicator) }
        Console.info(try onRank(rank) { try trainer.checkReplicas(sampler: sampler, over: session.communicator) })

        // 2. This rank's share of a batch, gradients averaged in buckets, against the whole batch's gradient.
        var dataRNG = RandomGenerator(seed: config.seed).split(3)
        let x0 = Tensor.randomNormal([batch, 1, 8, 8], rng: &dataRNG)
        let cond = config.guidance.conditioning(labels: (0..<batch).map { $0 % classes }, classes: classes, rng: &dataRNG,
                                                on: .default)
        let objective = TVMObjective(guidance: config.guidance, timeSampler: config.timeSampler)
        // The trainer's evaluation: this rank's rows with averaged gradients, then the whole batch alone.
        func gradients(rows: Range<Int>?, backward: TVMObjective.Backward?) -> [Tensor] {
            var rng = RandomGenerator(seed: config.seed).split(4)
            let leaves = trainer.student.leaves()
            return objective.termsAndGradients(network: net, student: leaves, teacher: trainer.teacher,
                                               objective.inputs(x0: x0, cond: cond, rng: &rng, rows: rows), wrt: leaves.all,
                                               backward: backward).gradients
        }
        let averaged = gradients(rows: session.parallel.rows(ofBatch: batch)) {
            session.parallel.averagedGradients(of: $0, wrt: $1, initial: $2)
        }
        let full = gradients(rows: nil, backward: nil)
        var maxDiff = 0.0, maxValue = 0.0
        for (g, f) in zip(averaged, full) {
            for (u, v) in zip(g.floats, f.floats) {
                maxDiff = max(maxDiff, Double(abs(u - v)))
                maxValue = max(maxValue, Double(abs(v)))
            }
        }
        let relative = maxDiff / max(maxValue, 1e-30)
        let everyRank = try onRank(rank) { try session.communicator.allGather([relative]) }.map { $0[0] }
        let buckets = session.parallel.lastBucketCount, early = session.parallel.lastBucketsStartedDuringBackward
        Console.info("gradients of a \(batch)-row batch (\(batch / W) per rank), \(averaged.count) tensors in \(buckets) "
                     + "buckets, \(early) started during backward; largest difference from the whole batch's gradient, "
                     + "relative to its largest entry: " + everyRank.enumerated().map { "rank \($0) \(sci($1))" }.joined(separator: ", "))

        // 3. Two training steps through the trainer, then the replicas again.
        trainer.parallel = session.parallel
        for _ in 0..<2 {
            let indices = sampler.next(batch)
            let images = Tensor(indices.flatMap { i in (0..<64).map { Float((i * 64 + $0) % 97) / 48 - 1 } },
                                shape: [batch, 1, 8, 8])
            let c = config.guidance.conditioning(labels: indices.map { $0 % classes }, classes: classes, rng: &trainer.rng,
                                                 on: .default)
            let stats = trainer.train(x0: images, cond: c)
            Console.info("step \(stats.step): loss \(fmt(stats.loss, 6)), gradient norm \(fmt(stats.gradNorm, 6))")
        }
        Console.info(try onRank(rank) { try trainer.checkReplicas(sampler: sampler, over: session.communicator) })
        session.close()
        if let worst = everyRank.max(), worst > 1e-5 {
            throw CLIError("averaged gradients differ from the whole batch's gradient by \(sci(worst)) (more than 1e-5)")
        }
    }
}

private func sci(_ v: Double) -> String {
    guard v > 0 else { return "0" }
    let e = Int(log10(v).rounded(.down))
    return "\(fmt(v / pow(10, Double(e)), 2))e\(e)"
}
