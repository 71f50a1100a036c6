import XCTest
import TensorCore
import CUDABackend
import NN
import TVM

/// Packed parameter sets on the GPU: AdamW and the EMA updates as one kernel over the whole buffer against one
/// kernel per tensor (the same arithmetic per element: bit for bit), the bf16 operand copies of views when their
/// buffer changes, and the one device read of a training step.
final class CUDAPackedOptimizerTests: XCTestCase {
    func testPackedUpdatesMatchPerTensorUpdates() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        // Odd sizes: ranges end off the vector packs, so per tensor the kernels' scalar tails run, packed not.
        let shapes = [[3, 5], [7], [1], [130], [2, 2, 33], [128], [37, 129], [1000]]
        for dtype in [DType.float32, .float64] {
            let plain = ParameterSet(shapes.enumerated().map { i, s in
                ("p\(i)", Tensor(r.normals(Shape.count(s)), shape: s, dtype: dtype, on: cuda.device))
            })
            let packed = plain.copy()
            packed.pack()
            XCTAssertNotNil(packed.packed, "the CUDA backend makes views")
            let (plainEMA, packedEMA) = (plain.copy(), packed.copy())
            let make = { (set: ParameterSet) in AdamW(for: set, lr: 3e-3, weightDecay: 0.1, maxGradNorm: 1) }
            let (plainAdam, packedAdam) = (make(plain), make(packed))
            for step in 1...3 {
                let grads = shapes.map { Tensor(r.normals(Shape.count($0), scale: step == 2 ? 10 : 0.01), shape: $0, dtype: dtype,
                                                on: cuda.device) }
                let norm = globalNorm(grads)
                let packedNorm = Gradients(grads, of: packed).norm()
                XCTAssertEqual(packedNorm, norm, accuracy: norm * (dtype == .float32 ? 1e-5 : 1e-12), "\(dtype) norm, seed=\(r.seed)")
                plainAdam.update(plain, grads: grads, norm: norm)
                packedAdam.update(packed, gradients: Gradients(grads, of: packed), norm: norm)
                emaUpdate(plainEMA, toward: plain, decay: 0.99)
                emaUpdate(packedEMA, toward: packed, decay: 0.99)
                for (what, a, b) in [("parameters", packed, plain), ("m", packedAdam.m, plainAdam.m), ("v", packedAdam.v, plainAdam.v),
                                     ("EMA", packedEMA, plainEMA)] {
                    for name in a.names {
                        let (x, y) = (a[name].doubles, b[name].doubles)
                        let worst = zip(x, y).map { Swift.abs($0 - $1) }.max() ?? 0
                        XCTAssertTrue(zip(x, y).allSatisfy { $0.bitPattern == $1.bitPattern },
                                      "\(dtype) step \(step) \(what) \(name): packed differs from per tensor by up to \(worst), seed=\(r.seed)")
                    }
                }
            }
        }
    }

    /// A product reads a weight through its cached bf16 copy; the weight is a view of a packed buffer, and an
    /// update of the buffer must drop the view's copy, or the next product would read the old weight.
    func testBF16CopiesOfViewsFollowBufferUpdates() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { cuda.bf16Products = false }
        var r = TestRandom()
        let (rows, inF, outF) = (33, 64, 48)
        let set = ParameterSet([("w", Tensor(r.normals(outF * inF), shape: [outF, inF], dtype: .float32, on: cuda.device)),
                                ("b", Tensor(r.normals(outF), shape: [outF], dtype: .float32, on: cuda.device))])
        set.pack()
        let x = Tensor(r.normals(rows * inF), shape: [rows, inF], dtype: .float32, on: cuda.device)
        let before = x.linear(set["w"]).doubles
        let target = set.copy()
        for name in target.names { target[name] = target[name] * 0.5 + 1 }
        target.pack()
        emaUpdate(set, toward: target, decay: 0.5)
        let fresh = set["w"].detached() * 1.0
        let after = x.linear(set["w"]).doubles
        XCTAssertNotEqual(after, before, "the update changed the product")
        XCTAssertEqual(after, x.linear(fresh).doubles, "the product reads the updated weight, not a stale bf16 copy")
    }

    /// A TVM step reads the device once: its figures with the gradient norm, in one transfer (the data checks are
    /// made on the host, and whether rows are excluded is one of the figures).
    func testTrainingStepReadsTheDeviceOnce() throws {
        let cuda = try cudaOrSkip()
        let model = DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 4, numClasses: 3)
        var config = TrainConfig()
        config.batch = 4
        config.maxGradNorm = 1
        config.guidance = GuidanceConfig(scale: .uniform(1, 3), labelDropout: 0.2)
        let trainer = Trainer(network: try DiT(model), config: config, on: cuda.device)
        XCTAssertNotNil(trainer.student.packed)
        var rng = RandomGenerator(seed: 7)
        var reads: [Int] = []
        for _ in 0..<3 {
            let values = rng.normalFloats(4 * 4 * 8 * 8)
            let x0 = Tensor(values, shape: [4, 4, 8, 8], on: cuda.device)
            let cond = config.guidance.conditioning(labels: [0, 1, 2, 0], classes: 3, rng: &rng, on: cuda.device)
            let start = cuda.hostReads
            let stats = trainer.train(x0: x0, cond: cond, data: BatchFigures(rows: 4, values: values))
            reads.append(cuda.hostReads - start)
            XCTAssertTrue(stats.loss.isFinite && stats.gradNorm.isFinite, "\(stats.loss) \(stats.gradNorm)")
        }
        print("CUDA: device reads per TVM step \(reads)")
        XCTAssertEqual(reads, [1, 1, 1])
    }
}
