import XCTest
import TensorCore
import NN
import TVM
import Data
import Eval

final class MethodTests: XCTestCase {
    func testNormalQuantileInvertsTheCDF() {
        for p in [1e-12, 1e-6, 0.01, 0.02425, 0.1, 0.5, 0.9, 0.97575, 0.999999] {
            XCTAssertEqual(Normal.cdf(Normal.quantile(p)), p, accuracy: 1e-12 + 1e-9 * p)
        }
        XCTAssertEqual(Normal.quantile(0.975), 1.959963984540054, accuracy: 1e-12)
    }

    func testGapTimeSamplerRespectsItsSupport() {
        var rng = RandomGenerator(seed: 8)
        let times = GapTimeSampler().sample(20_000, rng: &rng)
        var atOne = 0  // rows clipped to t = 1
        for i in 0..<20_000 {
            let (t, s, sp) = (times.t[i], times.s[i], times.sPrime[i])
            XCTAssertTrue(s >= 0 && s <= t && t <= 1, "s \(s) t \(t)")
            XCTAssertTrue(sp > 0 && sp < 1)
            if t == 1 { atOne += 1 }
        }
        // t = min(s + len, 1): the truncation keeps s + len <= 1 up to the CDF's rounding, so t = 1 is rare
        // but the gap distribution reaches it; s' is logit-normal(-0.4, 1) with median sigmoid(-0.4).
        let medianSp = times.sPrime.sorted()[10_000]
        XCTAssertEqual(medianSp, 1 / (1 + libmExp(0.4)), accuracy: 0.01)
        let meanGap = zip(times.t, times.s).map { $0 - $1 }.reduce(0, +) / 20_000
        XCTAssertGreaterThan(meanGap, 0.2)
        XCTAssertLessThan(meanGap, 0.45)
        XCTAssertLessThan(atOne, 200)
    }

    /// The sampler's parameters move its draws: s' is logit-normal(muS, sigmaS) and a larger muG lengthens the gaps.
    func testGapTimeSamplerFollowsItsParameters() {
        var sampler = GapTimeSampler()
        (sampler.muS, sampler.sigmaS, sampler.muG, sampler.sigmaG) = (0.5, 0.5, 1.0, 0.5)
        var rng = RandomGenerator(seed: 9)
        let times = sampler.sample(20_000, rng: &rng)
        XCTAssertEqual(times.sPrime.sorted()[10_000], 1 / (1 + libmExp(-0.5)), accuracy: 0.01)
        // The quartiles of logit-normal(0.5, 0.5): sigmoid(0.5 -+ 0.6745 * 0.5).
        XCTAssertEqual(times.sPrime.sorted()[5_000], 1 / (1 + libmExp(-0.5 + 0.6745 * 0.5)), accuracy: 0.01)
        var defaultRNG = RandomGenerator(seed: 9)
        let defaults = GapTimeSampler().sample(20_000, rng: &defaultRNG)
        func meanGap(_ t: GapTimeSampler.Times) -> Double { zip(t.t, t.s).map { $0 - $1 }.reduce(0, +) / 20_000 }
        XCTAssertGreaterThan(meanGap(times), meanGap(defaults) + 0.2)
        for i in 0..<20_000 { XCTAssertTrue(times.s[i] >= 0 && times.s[i] <= times.t[i] && times.t[i] <= 1) }
    }

    func testEvaluationEMAHorizonGrowsWithTheStep() {
        let ema = EMASchedule.power(gamma: 7, max: 0.9999)
        XCTAssertEqual(ema.decay(step: 1), 0)
        XCTAssertLessThan(ema.decay(step: 100), ema.decay(step: 1000))
        XCTAssertEqual(ema.decay(step: 10_000_000), 0.9999)
        XCTAssertEqual(EMASchedule.fixed(0.99).decay(step: 5), 0.99)
    }
}

#if canImport(Glibc)
import Glibc
func libmExp(_ x: Double) -> Double { Glibc.exp(x) }
#endif

final class NumericalFaultTests: XCTestCase {
    /// A NaN in the data: its loss row is zeroed and counted (as the official code does), and since the
    /// gradient is still not finite the step leaves weights, optimizer state and both EMAs untouched.
    func testNaNBatchSkipsTheUpdateAndKeepsWeightsClean() {
        var config = TrainConfig()
        config.batch = 8
        config.seed = 2
        let trainer = Trainer(network: MLPFlowMap(width: 16, depth: 2), config: config)
        var rng = RandomGenerator(seed: 1)
        let clean = Tensor(Toy2D.twoMoons.sample(8, rng: &rng), shape: [8, 2])
        let first = trainer.train(x0: clean)
        XCTAssertFalse(first.skipped)
        let before = [trainer.student, trainer.teacher, trainer.ema, trainer.optimizer.m, trainer.optimizer.v]
            .map { $0.all.map(\.floats) }
        var values = Toy2D.twoMoons.sample(8, rng: &rng)
        values[2] = .nan
        let stats = trainer.train(x0: Tensor(values, shape: [8, 2]))
        XCTAssertEqual(stats.nanRows, 1)
        XCTAssertTrue(stats.loss.isFinite, "the NaN row is zeroed in the loss")
        XCTAssertTrue(stats.skipped)
        XCTAssertFalse(stats.gradNorm.isFinite)
        let after = [trainer.student, trainer.teacher, trainer.ema, trainer.optimizer.m, trainer.optimizer.v]
            .map { $0.all.map(\.floats) }
        XCTAssertEqual(after, before)
        XCTAssertEqual(trainer.optimizer.step, 1)
        // Training goes on normally afterwards.
        let next = trainer.train(x0: clean)
        XCTAssertFalse(next.skipped)
        XCTAssertTrue(trainer.student.all.allSatisfy { $0.floats.allSatisfy(\.isFinite) })
    }
}

/// The flow-matching baseline on a class-conditional DiT: guided Euler sampling is v_null + w (v_class - v_null).
final class FlowMatchingSamplerTests: XCTestCase {
    func testGuidedEulerCombinesClassAndNullVelocities() throws {
        let net = try DiT(DiTConfig(patch: 2, hidden: 16, depth: 1, heads: 2, inputSize: 4, inChannels: 1, numClasses: 3))
        var rng = RandomGenerator(seed: 3)
        let params = net.initialParameters(rng: &rng, on: .default)
        let noise = Tensor.randomNormal([2, 1, 4, 4], rng: &rng)
        let classes = Tensor([1, 0, 0, 0, 0, 1], shape: [2, 3])
        let w = 2.5
        let guided = sampleEuler(network: net, params: params, noise: noise, steps: 1, cond: Conditioning(classes: classes), guidance: w)
        // One Euler step from t = 1 to 0 by hand, each half evaluated on its own.
        func velocity(_ c: Tensor) -> Tensor {
            net(params, x: noise, t: Tensor.ones([2]), gap: Tensor.zeros([2]), cond: Conditioning(classes: c))
        }
        let vc = velocity(classes), vu = velocity(classes.zerosLike())
        let expected = (noise - (vu + (vc - vu) * w)).doubles
        for (a, b) in zip(guided.doubles, expected) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        // w = 1 is the plain conditional velocity (one evaluation per step).
        let plain = sampleEuler(network: net, params: params, noise: noise, steps: 1, cond: Conditioning(classes: classes), guidance: 1)
        for (a, b) in zip(plain.doubles, (noise - vc).doubles) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    }
}

