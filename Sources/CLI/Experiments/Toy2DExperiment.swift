import TensorCore
import NN
import TVM
import Data
import Eval
import Dispatch

/// Training and evaluation of one method on a 2-D distribution: what `tvm demo` and `tvm train` run.
struct Toy2DExperiment {
    var distribution: Toy2D
    var network: MLPFlowMap
    var config: TrainConfig
    var steps: Int
    /// Seconds of training at most (nil: none), checked before every step after the first.
    var seconds: Double?

    init(distribution: Toy2D, network: MLPFlowMap, config: TrainConfig, steps: Int, seconds: Double? = nil) {
        self.distribution = distribution
        self.network = network
        self.config = config
        self.steps = steps
        self.seconds = seconds
    }

    /// Trains, calling `onStep` after every step; ends early after a step that the `stop` fault policy
    /// stopped, or when the time budget is spent. The data stream is seeded apart from the model's randomness.
    func train(onStep: (StepStats) -> Void = { _ in }) -> Trainer<MLPFlowMap> {
        let trainer = Trainer(network: network, config: config)
        var dataRNG = RandomGenerator(seed: config.seed).split(3)
        let start = now()
        for step in 0..<steps {
            if let seconds, step > 0, now() - start >= seconds { break }
            let x0 = Tensor(distribution.sample(config.batch, rng: &dataRNG), shape: [config.batch, 2])
            let stats = trainer.train(x0: x0)
            onStep(stats)
            if stats.stopped { break }
        }
        return trainer
    }

    /// Samples at each NFE from the same noise, and their exact W2 to `data`.
    static func evaluate(_ trainer: Trainer<MLPFlowMap>, nfes: [Int], data: [Float], noiseSeed: UInt64)
        throws -> [(nfe: Int, samples: [Float], w2: Double)] {
        let n = data.count / 2
        var rng = RandomGenerator(seed: noiseSeed)
        let noise = Tensor.randomNormal([n, 2], rng: &rng)
        let samples = nfes.map { trainer.sample(noise: noise, steps: $0).floats }
        // The exact assignments dominate evaluation and are independent: one per core.
        var distances = [Result<Double, Error>](repeating: .success(0), count: nfes.count)
        distances.withUnsafeMutableBufferPointer { out in
            DispatchQueue.concurrentPerform(iterations: nfes.count) { i in
                out[i] = Result { try Wasserstein.w2(samples[i], data, dim: 2) }
            }
        }
        return try nfes.indices.map { (nfes[$0], samples[$0], try distances[$0].get()) }
    }
}
