import XCTest
@testable import CLI
import TensorCore
import NN
import TVM
import Data
import Eval

/// The 2-D experiment behind `tvm demo` and 2-D `tvm train`, run in-process.
final class Toy2DExperimentTests: XCTestCase {
    /// A short TVM run on 8 Gaussians: 1-step samples move from noise to close to the data (W2 0.99 for the
    /// noise itself; two samples of the data are 0.42 apart at this size, so 0.6x the noise is near the floor).
    func testShortTrainingImprovesOneStepW2() throws {
        var config = TrainConfig()
        config.batch = 256
        config.lr = 2e-3
        config.seed = 4
        let experiment = Toy2DExperiment(distribution: .eightGaussians, network: MLPFlowMap(width: 64, depth: 3),
                                         config: config, steps: 1000)
        var losses: [Double] = []
        let trainer = experiment.train { losses.append($0.loss) }
        var rng = RandomGenerator(seed: 99)
        let data = Toy2D.eightGaussians.sample(500, rng: &rng)
        let noise = Tensor.randomNormal([500, 2], rng: &rng).floats
        let before = try Wasserstein.w2(noise, data, dim: 2)
        let after = try Toy2DExperiment.evaluate(trainer, nfes: [1], data: data, noiseSeed: 5)[0].w2
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        XCTAssertLessThan(after, 0.6 * before, "1-NFE W2 \(after) vs noise \(before)")
        XCTAssertLessThan(losses.suffix(100).reduce(0, +) / 100, losses.prefix(100).reduce(0, +) / 100)
    }
}
