import XCTest
import TensorCore
import NN

/// Packed parameter sets (one buffer per set, each tensor a view of it): AdamW and the EMA update as one pass over
/// the buffer must give, bit for bit, what the per-tensor updates give.
final class PackedOptimizerTests: XCTestCase {
    /// Odd sizes, so that ranges end off the 512-byte boundaries and gaps lie between them.
    let shapes = [[3, 5], [7], [1], [130], [2, 2, 33], [128], [4, 129]]

    func parameters(_ dtype: DType, _ rng: inout RandomGenerator) -> ParameterSet {
        ParameterSet(shapes.enumerated().map { i, shape in
            ("layer\(i).weight", Tensor(rng.normalFloats(Shape.count(shape)).map(Double.init), shape: shape, dtype: dtype))
        })
    }

    func gradients(_ dtype: DType, _ rng: inout RandomGenerator, scale: Double) -> [Tensor] {
        shapes.map { Tensor(rng.normalFloats(Shape.count($0)).map { Double($0) * scale }, shape: $0, dtype: dtype) }
    }

    func assertBitIdentical(_ a: ParameterSet, _ b: ParameterSet, _ label: String) {
        XCTAssertEqual(a.names, b.names, label)
        for name in a.names {
            XCTAssertEqual(a[name].shape, b[name].shape, "\(label) \(name)")
            let same = zip(a[name].doubles, b[name].doubles).allSatisfy { $0.bitPattern == $1.bitPattern }
            XCTAssertTrue(same, "\(label) \(name): \(a[name].doubles.prefix(4)) vs \(b[name].doubles.prefix(4))")
        }
    }

    func testPackedAdamWAndEMAMatchPerTensorBitForBit() {
        for dtype in [DType.float32, .float64] {
            var rng = RandomGenerator(seed: 41)
            let initial = parameters(dtype, &rng)
            let plain = initial.copy()
            let packed = initial.copy()
            packed.pack()
            XCTAssertNil(plain.packed, "a set is packed only when asked")
            XCTAssertNotNil(packed.packed, "\(dtype)")
            assertBitIdentical(packed, plain, "\(dtype) values after packing")
            // Teacher and an evaluation EMA as the trainer keeps them: copies of the student, packed like it.
            let (plainTeacher, packedTeacher) = (plain.copy(), packed.copy())
            let (plainEMA, packedEMA) = (plain.copy(), packed.copy())
            XCTAssertNotNil(packedTeacher.packed, "a copy of a packed set is packed")
            XCTAssertFalse(packedTeacher.packed!.buffer.storage === packed.packed!.buffer.storage, "a copy has its own buffer")
            let make = { (set: ParameterSet) in
                AdamW(for: set, lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1)
            }
            let (plainAdam, packedAdam) = (make(plain), make(packed))
            XCTAssertNotNil(packedAdam.m.packed, "the moments take the parameters' packing")
            XCTAssertNil(plainAdam.m.packed)
            for step in 1...4 {
                // Large gradients on some steps, so that clipping scales them.
                let grads = gradients(dtype, &rng, scale: step % 2 == 0 ? 10 : 0.01)
                let norm = globalNorm(grads)
                let packedNorm = Gradients(grads, of: packed).norm()
                XCTAssertEqual(packedNorm, norm, accuracy: norm * (dtype == .float32 ? 1e-5 : 1e-12),
                               "\(dtype) step \(step): the norm in one reduction over the packed gradients")
                plainAdam.update(plain, grads: grads, norm: norm)
                packedAdam.update(packed, gradients: Gradients(grads, of: packed), norm: norm)
                emaUpdate(plainTeacher, toward: plain, decay: 0.99)
                emaUpdate(packedTeacher, toward: packed, decay: 0.99)
                emaUpdate(plainEMA, toward: plain, decay: 0.999 - 0.01 * Double(step))
                emaUpdate(packedEMA, toward: packed, decay: 0.999 - 0.01 * Double(step))
                assertBitIdentical(packed, plain, "\(dtype) step \(step) parameters")
                assertBitIdentical(packedAdam.m, plainAdam.m, "\(dtype) step \(step) first moments")
                assertBitIdentical(packedAdam.v, plainAdam.v, "\(dtype) step \(step) second moments")
                assertBitIdentical(packedTeacher, plainTeacher, "\(dtype) step \(step) teacher")
                assertBitIdentical(packedEMA, plainEMA, "\(dtype) step \(step) EMA")
            }
            XCTAssertNotEqual(packed["layer0.weight"].doubles, initial["layer0.weight"].doubles, "the updates went through the views")
            for set in [packed, packedAdam.m, packedAdam.v, packedTeacher, packedEMA] {
                let (buffer, layout) = set.packed!
                let values = buffer.doubles
                var inRanges = [Bool](repeating: false, count: layout.count)
                for (offset, shape) in zip(layout.offsets, layout.shapes) {
                    for i in offset..<(offset + Shape.count(shape)) { inRanges[i] = true }
                }
                XCTAssertTrue(values.indices.allSatisfy { inRanges[$0] || values[$0] == 0 }, "\(dtype): the gaps stay zero")
            }
        }
    }

    func testLayoutAlignsEveryRange() {
        for dtype in [DType.float32, .float64] {
            let layout = PackedLayout(shapes: shapes, dtype: dtype)
            let alignment = 512 / dtype.byteSize
            XCTAssertEqual(layout.offsets.first, 0)
            for (i, offset) in layout.offsets.enumerated() {
                XCTAssertEqual(offset % alignment, 0, "\(dtype) range \(i) starts on a 512-byte boundary")
                let end = offset + Shape.count(shapes[i])
                XCTAssertLessThanOrEqual(end, i + 1 < shapes.count ? layout.offsets[i + 1] : layout.count, "ranges do not overlap")
            }
            XCTAssertEqual(layout.count % alignment, 0)
        }
    }

    func testReplacingATensorUnpacksAndUpdatesGoPerTensor() {
        var rng = RandomGenerator(seed: 43)
        let unpacked = parameters(.float32, &rng)
        unpacked.pack()
        let fused = unpacked.copy()
        let adamUnpacked = AdamW(for: unpacked, lr: 1e-2, weightDecay: 0.05)
        let adamFused = AdamW(for: fused, lr: 1e-2, weightDecay: 0.05)
        let grads = gradients(.float32, &rng, scale: 1)
        // The moments stay packed, the parameters not: AdamW takes the per-tensor path, with the fused path's result.
        unpacked["layer3.weight"] = unpacked["layer3.weight"].detached() * 1.0
        XCTAssertNil(unpacked.packed, "a replaced tensor is not in the buffer: the set is no longer packed")
        XCTAssertNotNil(fused.packed)
        adamUnpacked.update(unpacked, grads: grads)
        adamFused.update(fused, grads: grads)
        assertBitIdentical(unpacked, fused, "per-tensor fallback")
        // Packing again puts the values back into one buffer.
        unpacked.pack()
        XCTAssertNotNil(unpacked.packed)
        assertBitIdentical(unpacked, fused, "packed again")
    }
}
