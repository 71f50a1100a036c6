import XCTest
@testable import TensorCore

/// A backend with the core operations alone: the CPU's kernels behind `Backend`'s requirements and none of the
/// capability protocols, so every fused tensor op takes its fallback composed from core operations. Its storages
/// wrap CPU storages, so a tensor on it never reaches the CPU backend's fused kernels.
final class CoreOnlyBackend: Backend {
    static let shared = CoreOnlyBackend()
    private let cpu = CPUBackend.shared
    var name: String { "core-only" }
    var device: Device { Device(backend: self) }

    final class Wrapped: Storage {
        let inner: Storage
        init(_ inner: Storage, on backend: CoreOnlyBackend) {
            self.inner = inner
            super.init(count: inner.count, dtype: inner.dtype, backend: backend)
        }
    }

    private func wrap(_ s: Storage) -> Storage { Wrapped(s, on: self) }
    private func inner(_ s: Storage) -> Storage {
        guard let w = s as? Wrapped else { preconditionFailure("a \(s.backend.name) tensor was given to the core-only backend") }
        return w.inner
    }
    private func inner(_ s: Storage?) -> Storage? { s.map { inner($0) } }

    func allocate(_ count: Int, _ dtype: DType) -> Storage { wrap(cpu.allocate(count, dtype)) }
    func upload(_ values: [Double], dtype: DType) -> Storage { wrap(cpu.upload(values, dtype: dtype)) }
    func upload(_ values: [Float]) -> Storage { wrap(cpu.upload(values)) }
    func download(_ s: Storage) -> [Double] { cpu.download(inner(s)) }
    func downloadFloats(_ s: Storage) -> [Float] { cpu.downloadFloats(inner(s)) }
    func fill(_ s: Storage, value: Double) { cpu.fill(inner(s), value: value) }
    func convert(_ x: Storage, to dtype: DType) -> Storage { wrap(cpu.convert(inner(x), to: dtype)) }
    func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage) { cpu.unary(op, inner(x), inner(y)) }
    func affine(_ x: Storage, _ y: Storage, a: Double, b: Double) { cpu.affine(inner(x), inner(y), a: a, b: b) }
    func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView, _ y: Storage,
                shape: [Int]) {
        cpu.binary(op, inner(a), av, inner(b), bv, inner(y), shape: shape)
    }
    func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage) {
        cpu.select(inner(cond), inner(a), inner(b), inner(y))
    }
    func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner count: Int) {
        cpu.reduce(op, inner(x), inner(y), outer: outer, n: n, inner: count)
    }
    func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int]) {
        cpu.copy(inner(x), xv, inner(y), yv, shape: shape)
    }
    func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int, transA: Bool, transB: Bool,
                strideA: Int, strideB: Int, alpha: Double, beta: Double) {
        cpu.matmul(inner(a), inner(b), inner(y), batch: batch, m: m, n: n, k: k, transA: transA, transB: transB,
                   strideA: strideA, strideB: strideB, alpha: alpha, beta: beta)
    }
    func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int) { cpu.softmax(inner(x), inner(y), rows: rows, cols: cols) }
    func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int) {
        cpu.gatherRows(inner(table), inner(index), inner(y), rows: rows, cols: cols)
    }
    func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int) {
        cpu.scatterAddRows(inner(x), inner(index), inner(table), rows: rows, cols: cols)
    }
    func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64) {
        cpu.random(inner(y), normal: normal, seed: seed, counter: counter)
    }
    func synchronize() {}
}

/// The fallbacks of the capability protocols (composed from core operations, differentiated through their rules)
/// against the CPU backend's fused kernels and hand-written rules: values, JVPs, VJPs and gradients through JVPs.
final class CoreBackendTests: XCTestCase {
    private let core = CoreOnlyBackend.shared.device

    func testCoreOnlyBackendHasNoCapabilities() {
        let b: any Backend = CoreOnlyBackend.shared
        XCTAssertNil(b as? any NormBackend)
        XCTAssertNil(b as? any ScaledSumBackend)
        XCTAssertNil(b as? any ActivationBackend)
        XCTAssertNil(b as? any LinearBackend)
        XCTAssertNil(b as? any AttentionBackend)
        XCTAssertNil(b as? any OptimizerBackend)
        let cpu: any Backend = CPUBackend.shared
        XCTAssertNotNil(cpu as? any NormBackend)
        XCTAssertNotNil(cpu as? any ScaledSumBackend)
        XCTAssertNotNil(cpu as? any ActivationBackend)
        XCTAssertNotNil(cpu as? any LinearBackend)
        XCTAssertNotNil(cpu as? any AttentionBackend)
        XCTAssertNotNil(cpu as? any OptimizerBackend)
    }

    /// Max-norm relative difference.
    private func difference(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count)
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) {
            num = Swift.max(num, abs(x - y))
            den = Swift.max(den, abs(y))
        }
        return num / Swift.max(den, 1e-30)
    }

    /// Runs `f` on the CPU backend (fused) and on the core-only backend (composed) from the same random inputs of
    /// `shapes`, and compares: the output, its JVP along random tangents, the VJP of a random weighting of the
    /// output, and the gradients of a weighting of output and tangent together (reverse over forward, TVM's loss).
    private func compare(_ label: String, _ shapes: [[Int]], dtypes: [DType] = [.float64, .float32],
                         file: StaticString = #filePath, line: UInt = #line, _ f: @escaping ([Tensor]) -> Tensor) {
        for dtype in dtypes {
            var rng = RandomGenerator(seed: 7)
            let x = shapes.map { Tensor.randomNormal($0, rng: &rng, dtype: dtype) }
            let t = shapes.map { Tensor.randomNormal($0, rng: &rng, dtype: dtype) }
            let outShape = withoutGrad { f(x) }.shape
            let w = Tensor.randomNormal(outShape, rng: &rng, dtype: dtype)
            let wt = Tensor.randomNormal(outShape, rng: &rng, dtype: dtype)

            func run(_ device: Device) -> [(String, [Double])] {
                let on = { (ts: [Tensor]) in ts.map { $0.to(device) } }
                let (w, wt) = (w.to(device), wt.to(device))
                let value = withoutGrad { f(on(x)) }
                let leaves = on(x).map { $0.requiringGrad() }
                let vjp = gradients(of: (f(leaves) * w).sum(), wrt: leaves)
                let leaves2 = on(x).map { $0.requiringGrad() }
                let (outs, tangents) = jvp({ [f($0)] }, primals: leaves2, tangents: on(t))
                let throughJVP = gradients(of: (outs[0] * w).sum() + (tangents[0] * wt).sum(), wrt: leaves2)
                return [("value", value.doubles), ("JVP", tangents[0].doubles)]
                    + vjp.enumerated().map { ("VJP \($0)", $1.doubles) }
                    + throughJVP.enumerated().map { ("gradient through the JVP \($0)", $1.doubles) }
            }
            let fused = run(.cpu), composed = run(core)
            let tolerance = dtype == .float64 ? 1e-10 : 1e-4
            for ((what, a), (_, b)) in zip(composed, fused) {
                let d = difference(a, b)
                XCTAssertLessThanOrEqual(d, tolerance, "\(label) [\(dtype)] \(what): relative difference \(d)", file: file, line: line)
            }
        }
    }

    func testRMSNormFallback() {
        compare("rmsNormalized", [[3, 5, 8]]) { $0[0].rmsNormalized(eps: 1e-6) }
        compare("rmsNormalized scale shift", [[3, 5, 8], [3, 1, 8], [3, 1, 8]]) {
            $0[0].rmsNormalized(eps: 1e-6, scale: $0[1], shift: $0[2])
        }
        compare("rmsNormalized weight", [[4, 6, 8], [8]]) { $0[0].rmsNormalized(eps: 1e-6, scale: $0[1]) }
    }

    func testScaledSumFallback() {
        compare("scaledSum a s", [[2, 5, 6], [2, 1, 6]]) { Tensor.scaledSum($0[0], $0[1]) }
        compare("scaledSum full c", [[2, 5, 6], [2, 1, 6], [2, 5, 6], [2, 1, 6], [2, 5, 6]]) {
            Tensor.scaledSum($0[0], $0[1], $0[2], $0[3], plus: $0[4])
        }
        compare("scaledSum column c", [[2, 5, 6], [2, 6], [2, 1, 6]]) { Tensor.scaledSum($0[0], $0[1], plus: $0[2]) }
    }

    func testActivationFallback() {
        compare("silu", [[4, 7]]) { $0[0].silu() }
        compare("gelu", [[4, 7]]) { $0[0].gelu() }
        // Activations of activations: the composed rules differentiate their own derivative ops.
        compare("gelu of silu", [[3, 5]]) { ($0[0].silu() * 1.5).gelu() }
    }

    func testLinearFallback() {
        compare("linear", [[2, 3, 5], [4, 5], [4]]) { $0[0].linear($0[1], bias: $0[2]) }
        compare("linear without bias", [[6, 5], [4, 5]]) { $0[0].linear($0[1]) }
        compare("linearGELU", [[2, 3, 5], [4, 5], [4]]) { $0[0].linearGELU($0[1], bias: $0[2]) }
    }

    func testAttentionFallback() {
        compare("attention head-major", [[2, 3, 6, 4], [2, 3, 6, 4], [2, 3, 6, 4]]) { attention($0[0], $0[1], $0[2]) }
        compare("attention token-major", [[2, 6, 3, 4], [2, 6, 3, 4], [2, 6, 3, 4]]) {
            attention($0[0], $0[1], $0[2], layout: .tokenMajor, scale: 0.3)
        }
    }

    /// A transformer block's chain of fused ops, where each fallback feeds the next.
    func testBlockFallback() {
        let (b, n, heads, dim) = (2, 5, 2, 4), width = heads * dim
        compare("block", [[b, n, width], [3 * width, width], [3 * width], [b, 1, width], [b, 1, width], [b, 1, width]]) { p in
            let h = p[0].rmsNormalized(eps: 1e-6, scale: p[3], shift: p[4])
            let qkv = h.linear(p[1], bias: p[2]).silu().chunked(3, axis: -1).map { $0.reshaped([b, n, heads, dim]) }
            let o = attention(qkv[0], qkv[1], qkv[2], layout: .tokenMajor).reshaped([b, n, width])
            return Tensor.scaledSum(o, p[5], plus: p[0])
        }
    }

    func testOptimizerFallback() {
        for dtype in [DType.float64, .float32] {
            var rng = RandomGenerator(seed: 3)
            let state = (0..<4).map { _ in Tensor.randomNormal([5, 3], rng: &rng, dtype: dtype) }
            func run(_ device: Device) -> [[Double]] {
                let p = state[0].to(device) * 1, g = state[1].to(device), m = state[2].to(device) * 0.1
                let v = (state[3].to(device) * 0.1).square(), ema = state[1].to(device) * 1
                for step in 1...3 {
                    p.adamwUpdate(gradient: g, m: m, v: v, lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1,
                                  step: step, gradScale: 0.5)
                    ema.emaUpdate(toward: p, decay: 0.9)
                }
                return [p, m, v, ema].map(\.doubles)
            }
            let fused = run(.cpu), composed = run(core)
            for (i, (a, b)) in zip(composed, fused).enumerated() {
                let d = difference(a, b)
                XCTAssertLessThanOrEqual(d, dtype == .float64 ? 1e-12 : 1e-5, "optimizer [\(dtype)] output \(i): \(d)")
            }
        }
    }
}
