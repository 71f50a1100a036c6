import XCTest
import TensorCore

/// The fused attention primitive (output and tangent in one pass, VJP for both) against the decomposed
/// reference and against finite differences.
final class AttentionTests: XCTestCase {
    var gc = GradCheck()

    func testFiniteDifferences() {
        let q = gc.random([2, 3, 5, 4]), k = gc.random([2, 3, 5, 4]), v = gc.random([2, 3, 5, 4])
        gc.check("attention", [q, k, v]) { attention($0[0], $0[1], $0[2]) }
    }

    func testMatchesDecomposedReferenceToSecondOrder() {
        for shape in [[1, 1, 7, 3], [2, 2, 6, 8], [3, 16, 5]] {
            let x = (0..<3).map { _ in gc.random(shape) }
            let u = (0..<3).map { _ in gc.random(shape) }
            let w = gc.random(shape)
            func probe(_ f: @escaping ([Tensor]) -> Tensor) -> (out: [Double], tangent: [Double], grads: [[Double]]) {
                let (outs, tans) = jvp({ [f($0)] }, primals: x, tangents: u)
                // The gradient of a loss of both the output and its tangent, through the JVP.
                let (_, grads) = valueAndGradient(x) { xs in
                    let (o, t) = jvp({ [f($0)] }, primals: xs, tangents: u)
                    return (o[0] * w).sum() + (t[0] * t[0]).sum()
                }
                return (outs[0].doubles, tans[0].doubles, grads.map(\.doubles))
            }
            let fused = probe { attention($0[0], $0[1], $0[2]) }
            let reference = probe { decomposedAttention($0[0], $0[1], $0[2]) }
            XCTAssertLessThan(GradCheck.relErr(fused.out, reference.out), 1e-12, "output \(shape)")
            XCTAssertLessThan(GradCheck.relErr(fused.tangent, reference.tangent), 1e-12, "tangent \(shape)")
            for i in 0..<3 {
                XCTAssertLessThan(GradCheck.relErr(fused.grads[i], reference.grads[i]), 1e-11, "gradient \(i) \(shape)")
            }
        }
    }

    func testPartialTangentsAndFloat32() {
        // Only q carries a tangent (k and v are constants of the JVP), in float32.
        var rng = RandomGenerator(seed: 9)
        let q = Tensor.randomNormal([2, 4, 8, 16], rng: &rng), k = Tensor.randomNormal([2, 4, 8, 16], rng: &rng)
        let v = Tensor.randomNormal([2, 4, 8, 16], rng: &rng), tq = Tensor.randomNormal([2, 4, 8, 16], rng: &rng)
        let fused = jvp({ [attention($0[0], k, v)] }, primals: [q], tangents: [tq]).tangents[0].floats
        let reference = jvp({ [decomposedAttention($0[0], k, v)] }, primals: [q], tangents: [tq]).tangents[0].floats
        XCTAssertLessThan(GradCheck.relErr(fused.map(Double.init), reference.map(Double.init)), 1e-5)
    }
}
