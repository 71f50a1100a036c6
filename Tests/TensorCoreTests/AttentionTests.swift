import XCTest
import TensorCore

/// The fused attention primitive (output and tangent in one pass, VJP for both) against the decomposed
/// reference and against finite differences, in both layouts.
final class AttentionTests: XCTestCase {
    var gc = GradCheck()

    /// Output, JVP tangent and the gradients of a loss of both (gradients through the JVP: second order) of
    /// `f` at `x` along `u`, the loss weighting the output by `w`.
    static func probe(_ x: [Tensor], _ u: [Tensor], _ w: Tensor, _ f: @escaping ([Tensor]) -> Tensor)
        -> (out: [Double], tangent: [Double], grads: [[Double]]) {
        let (outs, tans) = jvp({ [f($0)] }, primals: x, tangents: u)
        let (_, grads) = valueAndGradient(x) { xs in
            let (o, t) = jvp({ [f($0)] }, primals: xs, tangents: u)
            return (o[0] * w).sum() + (t[0] * t[0]).sum()
        }
        return (outs[0].doubles, tans[0].doubles, grads.map(\.doubles))
    }

    func testFiniteDifferences() {
        let q = gc.random([2, 3, 5, 4]), k = gc.random([2, 3, 5, 4]), v = gc.random([2, 3, 5, 4])
        gc.check("attention", [q, k, v]) { attention($0[0], $0[1], $0[2]) }
        gc.check("token-major attention", [q, k, v]) { attention($0[0], $0[1], $0[2], layout: .tokenMajor) }
    }

    func testMatchesDecomposedReferenceToSecondOrder() {
        for shape in [[1, 1, 7, 3], [2, 2, 6, 8], [3, 16, 5]] {
            let x = (0..<3).map { _ in gc.random(shape) }
            let u = (0..<3).map { _ in gc.random(shape) }
            let w = gc.random(shape)
            let fused = Self.probe(x, u, w) { attention($0[0], $0[1], $0[2]) }
            let reference = Self.probe(x, u, w) { decomposedAttention($0[0], $0[1], $0[2]) }
            XCTAssertLessThan(GradCheck.relErr(fused.out, reference.out), 1e-12, "output \(shape)")
            XCTAssertLessThan(GradCheck.relErr(fused.tangent, reference.tangent), 1e-12, "tangent \(shape)")
            for i in 0..<3 {
                XCTAssertLessThan(GradCheck.relErr(fused.grads[i], reference.grads[i]), 1e-11, "gradient \(i) \(shape)")
            }
        }
    }

    /// Token-major [..., seq, heads, dim] against the heads permuted out ([..., heads, seq, dim]) through the
    /// decomposed reference and permuted back, and against the fused head-major primitive on the permuted
    /// tensors (the same per-head arithmetic in another layout: equal to the last bit).
    func testTokenMajorMatchesPermutedReferenceToSecondOrder() {
        // [B, N, H, Dh] with one and several heads, [N, H, Dh] (no batch axis), [B1, B2, N, H, Dh].
        for shape in [[2, 5, 3, 4], [1, 7, 1, 3], [3, 6, 4, 8], [9, 2, 5], [2, 2, 4, 3, 2]] {
            let r = shape.count
            // Swaps the seq and heads axes (its own inverse).
            var perm = Array(0..<r)
            perm.swapAt(r - 3, r - 2)
            func headMajor(_ f: @escaping (Tensor, Tensor, Tensor) -> Tensor) -> ([Tensor]) -> Tensor {
                { f($0[0].permuted(perm), $0[1].permuted(perm), $0[2].permuted(perm)).permuted(perm) }
            }
            let x = (0..<3).map { _ in gc.random(shape) }
            let u = (0..<3).map { _ in gc.random(shape) }
            let w = gc.random(shape)
            let tokenMajor = Self.probe(x, u, w) { attention($0[0], $0[1], $0[2], layout: .tokenMajor) }
            let reference = Self.probe(x, u, w, headMajor { decomposedAttention($0, $1, $2) })
            let fused = Self.probe(x, u, w, headMajor { attention($0, $1, $2) })
            XCTAssertLessThan(GradCheck.relErr(tokenMajor.out, reference.out), 1e-12, "output \(shape)")
            XCTAssertLessThan(GradCheck.relErr(tokenMajor.tangent, reference.tangent), 1e-12, "tangent \(shape)")
            XCTAssertEqual(tokenMajor.out, fused.out, "output \(shape) against head-major")
            XCTAssertEqual(tokenMajor.tangent, fused.tangent, "tangent \(shape) against head-major")
            for i in 0..<3 {
                XCTAssertLessThan(GradCheck.relErr(tokenMajor.grads[i], reference.grads[i]), 1e-11, "gradient \(i) \(shape)")
                XCTAssertEqual(tokenMajor.grads[i], fused.grads[i], "gradient \(i) \(shape) against head-major")
            }
        }
    }

    /// Plain attention (no JVP) in the token-major layout: output and first-order gradients, with a scale.
    func testTokenMajorWithoutTangent() {
        let shape = [2, 6, 3, 5]
        let x = (0..<3).map { _ in gc.random(shape) }, w = gc.random(shape)
        let perm = [0, 2, 1, 3]
        let (out, grads) = valueAndGradient(x) { (attention($0[0], $0[1], $0[2], layout: .tokenMajor, scale: 0.3) * w).sum() }
        let (ref, refGrads) = valueAndGradient(x) { xs in
            let o = decomposedAttention(xs[0].permuted(perm), xs[1].permuted(perm), xs[2].permuted(perm), scale: 0.3)
            return (o.permuted(perm) * w).sum()
        }
        XCTAssertEqual(out.item, ref.item, accuracy: 1e-12 * max(1, abs(ref.item)))
        for i in 0..<3 { XCTAssertLessThan(GradCheck.relErr(grads[i].doubles, refGrads[i].doubles), 1e-12, "gradient \(i)") }
    }

    func testPartialTangentsAndFloat32() {
        // Only q carries a tangent (k and v are constants of the JVP), in float32.
        var rng = RandomGenerator(seed: 9)
        let q = Tensor.randomNormal([2, 4, 8, 16], rng: &rng), k = Tensor.randomNormal([2, 4, 8, 16], rng: &rng)
        let v = Tensor.randomNormal([2, 4, 8, 16], rng: &rng), tq = Tensor.randomNormal([2, 4, 8, 16], rng: &rng)
        let fused = jvp({ [attention($0[0], k, v)] }, primals: [q], tangents: [tq]).tangents[0].floats
        let reference = jvp({ [decomposedAttention($0[0], k, v)] }, primals: [q], tangents: [tq]).tangents[0].floats
        XCTAssertLessThan(GradCheck.relErr(fused.map(Double.init), reference.map(Double.init)), 1e-5)
        // The same tensors read token-major ([2, 4, 8, 16] as [B, N, H, Dh]) with only k's tangent.
        let perm = [0, 2, 1, 3]
        let tokenMajor = jvp({ [attention(q, $0[0], v, layout: .tokenMajor)] }, primals: [k], tangents: [tq]).tangents[0].floats
        let permuted = jvp({ [decomposedAttention(q.permuted(perm), $0[0].permuted(perm), v.permuted(perm)).permuted(perm)] },
                           primals: [k], tangents: [tq]).tangents[0].floats
        XCTAssertLessThan(GradCheck.relErr(tokenMajor.map(Double.init), permuted.map(Double.init)), 1e-5)
    }

    /// The backend's forward writes the row means of the tangent scores, mu_i = sum_j P_ij tS_ij with
    /// tS = scale (tq k^T + q tk^T), which GPU backwards read instead of computing the forward again: against the
    /// decomposed formula, token-major with several heads ([batch, heads, seq] as lse).
    func testRowMeansOfTangentScores() throws {
        let backend = try XCTUnwrap(CPUBackend.shared as? any AttentionBackend)
        let shape = [2, 7, 3, 4], perm = [0, 2, 1, 3], scale = 0.4
        let x = (0..<6).map { _ in gc.random(shape) }
        let g = AttentionGeometry(batch: 2, seq: 7, heads: 3, dim: 4, scale: scale)
        let o = Tensor.zeros(shape, dtype: .float64), to = Tensor.zeros(shape, dtype: .float64)
        let lse = Tensor.zeros([g.rows], dtype: .float64), mu = Tensor.zeros([g.rows], dtype: .float64)
        backend.attention(q: x[0].storage, k: x[1].storage, v: x[2].storage, tq: x[3].storage, tk: x[4].storage,
                          tv: x[5].storage, o: o.storage, to: to.storage, lse: lse.storage, mu: mu.storage, geometry: g)
        let (q, k, tq, tk) = (x[0].permuted(perm), x[1].permuted(perm), x[3].permuted(perm), x[4].permuted(perm))
        let p = (q.matmul(k, transposeOther: true) * scale).softmax()
        let ts = (tq.matmul(k, transposeOther: true) + q.matmul(tk, transposeOther: true)) * scale
        let reference = (p * ts).sum(axes: [3])
        XCTAssertLessThan(GradCheck.relErr(mu.doubles, reference.doubles), 1e-13)
    }
}
