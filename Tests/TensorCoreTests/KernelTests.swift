import XCTest
import TensorCore

/// CPU kernels against naive loops, the RNG against its published test vector and statistics.
final class KernelTests: XCTestCase {
    var rng = RandomGenerator(seed: 42)

    func testPhiloxKnownAnswer() {
        // Random123's known-answer test for Philox4x32-10: counter 0, key 0.
        let b = Philox.block(seed: 0, counter: 0)
        XCTAssertEqual([b.0, b.1, b.2, b.3], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
    }

    func testRandomStreamsAreReproducibleAndWellDistributed() {
        var a = RandomGenerator(seed: 7), b = RandomGenerator(seed: 7)
        XCTAssertEqual(a.normalFloats(1001), b.normalFloats(1001))
        XCTAssertEqual(a.offset, 251)
        // Device tensors draw the same numbers as host arrays with the same generator state.
        var c = RandomGenerator(seed: 7), d = RandomGenerator(seed: 7)
        XCTAssertEqual(Tensor.randomNormal([5, 7], rng: &c).floats, d.normalFloats(35))
        var r = RandomGenerator(seed: 3)
        let n = r.normalFloats(200_000).map(Double.init)
        let mean = n.reduce(0, +) / Double(n.count)
        let variance = n.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n.count)
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.01)
        let u = r.uniformFloats(100_000)
        XCTAssertTrue(u.allSatisfy { $0 >= 0 && $0 < 1 })
        XCTAssertEqual(Double(u.reduce(0, +)) / 100_000, 0.5, accuracy: 0.01)
        XCTAssertNotEqual(RandomGenerator(seed: 1).split(1).seed, RandomGenerator(seed: 1).split(2).seed)
    }

    func testBroadcastingBinaryMatchesNaiveLoops() {
        let a = Tensor.randomNormal([3, 1, 5], rng: &rng), b = Tensor.randomNormal([4, 1], rng: &rng)
        let y = (a * b + a).floats, av = a.floats, bv = b.floats
        XCTAssertEqual(y.count, 3 * 4 * 5)
        for i in 0..<3 { for j in 0..<4 { for k in 0..<5 {
            let x = av[i * 5 + k]
            XCTAssertEqual(y[(i * 4 + j) * 5 + k], x * bv[j] + x, accuracy: 1e-6)
        } } }
    }

    func testReductionsOverAxesMatchNaiveLoops() {
        let x = Tensor.randomNormal([4, 3, 6], rng: &rng)
        let v = x.floats
        let s02 = x.sum(axes: [0, 2]).floats, m1 = x.max(axes: [1]).floats
        for j in 0..<3 {
            var s: Float = 0
            for i in 0..<4 { for k in 0..<6 { s += v[(i * 3 + j) * 6 + k] } }
            XCTAssertEqual(s02[j], s, accuracy: 1e-4)
        }
        for i in 0..<4 { for k in 0..<6 {
            XCTAssertEqual(m1[i * 6 + k], (0..<3).map { v[(i * 3 + $0) * 6 + k] }.max()!)
        } }
        XCTAssertEqual(x.mean().item, Double(v.reduce(0, +)) / 72, accuracy: 1e-5)
        // Large contiguous sums stay accurate in float32 (several partial sums).
        let ones = Tensor.ones([1 << 20])
        XCTAssertEqual(ones.sum().item, Double(1 << 20))
    }

    func testPermuteSliceConcatLayout() {
        let x = Tensor((0..<24).map(Float.init), shape: [2, 3, 4])
        XCTAssertEqual(x.permuted([2, 0, 1]).floats.prefix(6), [0, 4, 8, 12, 16, 20])
        XCTAssertEqual(x.slice(axis: 2, start: 1, length: 2).floats, [1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22])
        let parts = x.split(axis: 1, sizes: [1, 2])
        XCTAssertEqual(concat(parts, axis: 1).floats, x.floats)
        XCTAssertEqual(x.padded(axis: 0, before: 1, total: 4).floats, [Float](repeating: 0, count: 12) + x.floats + [Float](repeating: 0, count: 12))
        XCTAssertEqual(x.gatherRows(Tensor([1, 0], shape: [2])).floats, Array(x.floats[12...]) + Array(x.floats[..<12]))
    }

    func testBuiltInMatmulMatchesBLASAndNaive() {
        defer { CPUBackend.useBLAS = true }
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = Tensor.randomNormal(ta ? [37, 19] : [19, 37], rng: &rng)
            let b = Tensor.randomNormal(tb ? [23, 37] : [37, 23], rng: &rng)
            CPUBackend.useBLAS = true
            let y1 = a.matmul(b, transposeSelf: ta, transposeOther: tb).floats
            CPUBackend.useBLAS = false
            let y2 = a.matmul(b, transposeSelf: ta, transposeOther: tb).floats
            let av = a.floats, bv = b.floats
            for i in 0..<19 { for j in 0..<23 {
                var s: Float = 0
                for k in 0..<37 { s += (ta ? av[k * 19 + i] : av[i * 37 + k]) * (tb ? bv[j * 37 + k] : bv[k * 23 + j]) }
                XCTAssertEqual(y1[i * 23 + j], s, accuracy: 1e-4)
                XCTAssertEqual(y2[i * 23 + j], s, accuracy: 1e-4)
            } }
        }
        // Batched and shared-weight products, large enough to be split across cores.
        let a = Tensor.randomNormal([3, 64, 96], rng: &rng), w = Tensor.randomNormal([80, 96], rng: &rng)
        CPUBackend.useBLAS = true
        let yb = a.matmul(w, transposeOther: true)
        CPUBackend.useBLAS = false
        let yp = a.matmul(w, transposeOther: true)
        XCTAssertLessThan(GradCheck.relErr(yb.doubles, yp.doubles), 1e-6)
        let per = (0..<3).map { a.slice(axis: 0, start: $0, length: 1).reshaped([64, 96]).matmul(w, transposeOther: true) }
        XCTAssertLessThan(GradCheck.relErr(yb.doubles, concat(per, axis: 0).doubles), 1e-6)
    }

    /// A BLAS's products with a long inner dimension and few result rows (weight gradients) are split over the
    /// cores by depth, the shares summed at the end: against float64 sums, with alpha and beta, every transpose.
    func testBLASProductSplitByDepthMatchesNaive() throws {
        try XCTSkipIf(CPUBackend.blasName.hasPrefix("built-in"), "no BLAS library found")
        for (m, n, k) in [(40, 70, 300), (3, 200, 1001), (256, 66, 1024)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = rng.normalFloats(m * k), b = rng.normalFloats(k * n), y0 = rng.normalFloats(m * n)
                let ya = Tensor(a, shape: [m * k]), yb = Tensor(b, shape: [k * n]), y = Tensor(y0, shape: [m * n])
                CPUBackend.shared.matmul(ya.storage, yb.storage, y.storage, batch: 1, m: m, n: n, k: k, transA: ta, transB: tb,
                                         strideA: 0, strideB: 0, alpha: 0.5, beta: 2)
                let out = y.floats
                var worst = 0.0
                for i in 0..<m { for j in 0..<n {
                    var sum = 0.0, magnitude = 0.0
                    for p in 0..<k {
                        let product = Double(ta ? a[p * m + i] : a[i * k + p]) * Double(tb ? b[j * k + p] : b[p * n + j])
                        sum += product
                        magnitude += abs(product)
                    }
                    let expected = 0.5 * sum + 2 * Double(y0[i * n + j])
                    worst = max(worst, abs(Double(out[i * n + j]) - expected) / (0.5 * magnitude + 2 * abs(Double(y0[i * n + j]))))
                } }
                XCTAssertLessThan(worst, 1e-5, "m \(m) n \(n) k \(k) transA \(ta) transB \(tb)")
            }
        }
    }

    func testFastExpAndActivationsAccuracyInFloat32() {
        let xs = (0..<2001).map { Float($0 - 1000) * 0.05 }   // -50 ... 50
        let x = Tensor(xs, shape: [xs.count])
        let e = x.exp().floats, s = x.silu().floats, g = x.gelu().floats
        for (i, v) in xs.enumerated() {
            let d = Double(v)
            let ref = libmExp(d)
            XCTAssertEqual(Double(e[i]), ref, accuracy: 3e-7 * ref)
            XCTAssertEqual(Double(s[i]), d / (1 + libmExp(-d)), accuracy: 1e-6 * max(1, abs(d)))
            let gref = 0.5 * d * (1 + libmTanh(0.7978845608028654 * (d + 0.044715 * d * d * d)))
            XCTAssertEqual(Double(g[i]), gref, accuracy: 1e-6 * max(1, abs(d)))
        }
        let special = Tensor([Float.nan, .infinity, -.infinity, 100, -100], shape: [5]).exp().floats
        XCTAssertTrue(special[0].isNaN)
        XCTAssertEqual(Array(special[1...]), [.infinity, 0, .infinity, 0])
    }

    func testNonFiniteValuesAreDetectedAndContained() {
        let x = Tensor([1, .nan, 3, .infinity], shape: [4])
        XCTAssertEqual(x.isFinite().floats, [1, 0, 1, 0])
        XCTAssertTrue(x.maximum(Tensor.zeros([4])).floats[1].isNaN)
        XCTAssertTrue(x.sum().item.isNaN)
    }
}

#if canImport(Glibc)
import Glibc
func libmExp(_ x: Double) -> Double { Glibc.exp(x) }
func libmTanh(_ x: Double) -> Double { Glibc.tanh(x) }
#endif
