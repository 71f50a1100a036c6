import XCTest
import TensorCore
import NN
import TVM
import Data

/// The trainer keeps its sets packed (one buffer each, one pass per update). Against the per-tensor path that it
/// took before packing (a student whose tensors were replaced is not packed, and then every update goes per
/// tensor), a few steps must leave every value bit for bit the same.
final class PackedTrainingTests: XCTestCase {
    func trainer(method: Method, maxGradNorm: Double?) -> Trainer<MLPFlowMap> {
        var config = TrainConfig()
        config.method = method
        config.batch = 16
        config.seed = 5
        config.lr = 3e-3
        config.weightDecay = 0.01
        config.maxGradNorm = maxGradNorm
        config.extraEMAs = [.power(gamma: 7, max: 0.999)]
        return Trainer(network: MLPFlowMap(width: 24, depth: 2), config: config)
    }

    func sets(_ t: Trainer<MLPFlowMap>) -> [(String, ParameterSet)] {
        [("student", t.student), ("teacher", t.teacher), ("ema", t.ema), ("m", t.optimizer.m), ("v", t.optimizer.v),
         ("extra EMA", t.extraEMAs[0])]
    }

    /// Steps `packed` and `perTensor` (same seed) on the same batches; the largest relative difference of any value
    /// (0 only where every value is the same).
    func largestDifference(method: Method, maxGradNorm: Double?, steps: Int = 4) -> (Double, [Double], [Double]) {
        let packed = trainer(method: method, maxGradNorm: maxGradNorm)
        let perTensor = trainer(method: method, maxGradNorm: maxGradNorm)
        for (_, set) in sets(packed) { XCTAssertNotNil(set.packed) }
        for name in perTensor.student.names { perTensor.student[name] = perTensor.student[name] }
        XCTAssertNil(perTensor.student.packed, "a replaced tensor unpacks the student: every update goes per tensor")
        var rng = RandomGenerator(seed: 9)
        var norms: ([Double], [Double]) = ([], [])
        for _ in 0..<steps {
            let x0 = Tensor(Toy2D.twoMoons.sample(16, rng: &rng), shape: [16, 2])
            norms.0.append(packed.train(x0: x0).gradNorm)
            norms.1.append(perTensor.train(x0: x0).gradNorm)
        }
        var worst = 0.0
        for ((name, a), (_, b)) in zip(sets(packed), sets(perTensor)) {
            XCTAssertEqual(a.names, b.names, name)
            for key in a.names {
                // Relative to the value, or for values near zero to a thousandth of the tensor's largest.
                let ys = b[key].doubles, floor = 1e-3 * (ys.map { Swift.abs($0) }.max() ?? 0)
                for (x, y) in zip(a[key].doubles, ys) {
                    worst = Swift.max(worst, x == y ? 0 : Swift.abs(x - y) / Swift.max(Swift.abs(y), floor, 1e-30))
                }
            }
        }
        return (worst, norms.0, norms.1)
    }

    func testPackedStepsMatchPerTensorStepsBitForBit() {
        // Without clipping the norm does not enter the update: every value of every set is the same, bit for bit.
        for method in [Method.tvm, .flowMatching] {
            let (worst, packedNorms, perTensorNorms) = largestDifference(method: method, maxGradNorm: nil)
            XCTAssertEqual(worst, 0, "\(method): packed and per-tensor steps differ")
            // The norm is one reduction over the packed gradients instead of per-tensor sums: the same but for rounding.
            for (a, b) in zip(packedNorms, perTensorNorms) { XCTAssertEqual(a, b, accuracy: 1e-5 * b, "\(method) gradient norm") }
        }
    }

    func testPackedStepsWithClippingAgreeToRounding() {
        // Clipping scales by max / norm: the norm's rounding reaches the update, within float32 rounding.
        let (worst, _, _) = largestDifference(method: .tvm, maxGradNorm: 1e-3)
        XCTAssertLessThan(worst, 1e-4)
    }

    /// The DiT's fixed position table is not trained: torch's AdamW never sees it, so weight decay must not shrink
    /// it either; the trained tensors do move (those that start at zero with a zero first gradient may not).
    func testWeightDecayLeavesTheFixedPositionTableAlone() throws {
        let net = try DiT(DiTConfig(patch: 2, hidden: 16, depth: 1, heads: 2, inputSize: 4, inChannels: 1, numClasses: 3))
        var config = TrainConfig()
        config.batch = 4
        config.seed = 3
        config.lr = 1e-2
        config.weightDecay = 0.5
        let t = Trainer(network: net, config: config)
        XCTAssertEqual(t.optimizer.frozen, ["pos_embed"])
        XCTAssertNotNil(t.student.packed)
        let before = t.student.copy()
        var rng = RandomGenerator(seed: 1)
        let x0 = Tensor.randomNormal([4, 1, 4, 4], rng: &rng)
        _ = t.train(x0: x0, cond: Conditioning(classes: Tensor([1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0], shape: [4, 3])))
        XCTAssertEqual(t.student["pos_embed"].floats, before["pos_embed"].floats)
        let moved = net.trainableNames.filter { t.student[$0].floats != before[$0].floats }
        XCTAssertGreaterThan(moved.count, net.trainableNames.count / 2, "the trained tensors moved")
    }
}
