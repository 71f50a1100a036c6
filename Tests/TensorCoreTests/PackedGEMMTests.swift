import XCTest
@testable import TensorCore

/// The packed AVX2/FMA product against float64 sums, on shapes that cross every edge of its blocking: partial
/// 6-row blocks and 16-column panels, depths around the 256 block, a few columns (the dot-product path),
/// transposed operands, alpha and beta, and batches split either way over the cores.
final class PackedGEMMTests: XCTestCase {
    var rng = RandomGenerator(seed: 11)

    func testMatchesFloat64SumsOnEveryEdge() throws {
        try XCTSkipUnless(AVX2.isAvailable, "the processor has no AVX2 and FMA (or TVM_NO_AVX2 is set)")
        let shapes = [(1, 1, 1), (5, 3, 7), (6, 16, 256), (7, 17, 257), (13, 2, 66), (50, 33, 513), (12, 7, 255), (97, 48, 40)]
        for (m, n, k) in shapes {
            for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta): (Float, Float) in [(1, 0), (0.5, 2)] {
                    for batch in [1, 3] {
                        check(batch: batch, m: m, n: n, k: k, transA: transA, transB: transB, alpha: alpha, beta: beta)
                    }
                }
            }
        }
        // Large enough to be split over the cores by blocks of rows, and by batch entries.
        check(batch: 1, m: 300, n: 70, k: 600, transA: true, transB: false, alpha: 1, beta: 0)
        check(batch: 2 * Parallel.cores, m: 40, n: 40, k: 300, transA: false, transB: true, alpha: 1, beta: 1)
    }

    func check(batch: Int, m: Int, n: Int, k: Int, transA: Bool, transB: Bool, alpha: Float, beta: Float,
               file: StaticString = #filePath, line: UInt = #line) {
        let a = rng.normalFloats(batch * m * k), b = rng.normalFloats(batch * k * n), y0 = rng.normalFloats(batch * m * n)
        var y = y0
        a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in y.withUnsafeMutableBufferPointer { py in
            PackedGEMM.multiply(pa.baseAddress!, pb.baseAddress!, py.baseAddress!, batch: batch, m: m, n: n, k: k,
                                transA: transA, transB: transB, strideA: m * k, strideB: k * n, alpha: alpha, beta: beta)
        } } }
        var worst = 0.0
        for e in 0..<batch {
            let ea = e * m * k, eb = e * k * n, ey = e * m * n
            for i in 0..<m { for j in 0..<n {
                var s = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let x = Double(transA ? a[ea + p * m + i] : a[ea + i * k + p]), w = Double(transB ? b[eb + j * k + p] : b[eb + p * n + j])
                    s += x * w
                    magnitude += abs(x * w)
                }
                let expected = Double(alpha) * s + Double(beta) * Double(y0[ey + i * n + j])
                // float32 rounding of k products and their sum, relative to the sum of magnitudes.
                worst = max(worst, abs(Double(y[ey + i * n + j]) - expected) / (abs(Double(alpha)) * magnitude + abs(Double(beta * y0[ey + i * n + j])) + 1e-30))
            }}
        }
        XCTAssertLessThan(worst, 1e-5, "batch \(batch) m \(m) n \(n) k \(k) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta)",
                          file: file, line: line)
    }

    func testTheTensorProductUsesItAndAgreesWithThePortableOne() throws {
        try XCTSkipUnless(AVX2.isAvailable, "the processor has no AVX2 and FMA (or TVM_NO_AVX2 is set)")
        let savedBLAS = CPUBackend.useBLAS
        defer { CPUBackend.useBLAS = savedBLAS; CPUBackend.useAVX2 = true }
        CPUBackend.useBLAS = false
        let x = Tensor.randomNormal([1024, 66], rng: &rng), w = Tensor.randomNormal([256, 66], rng: &rng)
        CPUBackend.useAVX2 = true
        XCTAssertEqual(CPUBackend.blasName, "built-in AVX2/FMA")
        let packed = x.matmul(w, transposeOther: true).doubles
        CPUBackend.useAVX2 = false
        XCTAssertEqual(CPUBackend.blasName, "built-in")
        let portable = x.matmul(w, transposeOther: true).doubles
        XCTAssertLessThan(GradCheck.relErr(packed, portable), 1e-6)
    }
}
