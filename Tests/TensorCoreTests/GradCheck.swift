import XCTest
import TensorCore

/// Finite-difference checks in float64 of a function built from tensor ops:
/// - JVP: the tangent against (f(x + e u) - f(x - e u)) / 2e,
/// - VJP: <gradient of sum(f * w), u> against the same difference of sum(f * w),
/// - second order: the gradient of sum(jvp(f)(x, u) * w) against its finite difference along r,
///   which exercises the VJP of every op the JVP rule used (reverse over forward, as TVM needs).
struct GradCheck {
    var rng = RandomGenerator(seed: 1234)
    let eps = 1e-6

    mutating func random(_ shape: [Int]) -> Tensor {
        Tensor.randomNormal(shape, rng: &rng, dtype: .float64)
    }

    static func axpy(_ x: [Tensor], _ u: [Tensor], _ e: Double) -> [Tensor] {
        zip(x, u).map { (a, b) in (a + b * e).detached() }
    }

    static func dot(_ a: Tensor, _ b: Tensor) -> Double { (a * b).sum().item }

    static func relErr(_ a: [Double], _ b: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += (x - y) * (x - y); den += y * y }
        return (num.squareRoot()) / max(den.squareRoot(), 1e-12)
    }

    /// Checks `f` at `inputs` (float64 tensors); `differentiable` marks which inputs get perturbed.
    mutating func check(_ name: String, _ inputs: [Tensor], differentiable: [Bool]? = nil,
                        secondOrder: Bool = true, tolerance: Double = 1e-6,
                        file: StaticString = #filePath, line: UInt = #line, _ f: ([Tensor]) -> Tensor) {
        let diff = differentiable ?? inputs.map { _ in true }
        let x = inputs.map { $0.detached() }
        let u = zip(x, diff).map { t, d in d ? random(t.shape) : t.zerosLike() }
        let y = f(x)
        let w = random(y.shape)

        // JVP against central differences.
        let (_, tangents) = jvp({ [f($0)] }, primals: x, tangents: u)
        let fd = ((f(Self.axpy(x, u, eps)) - f(Self.axpy(x, u, -eps))) / (2 * eps)).doubles
        let jvpErr = Self.relErr(tangents[0].doubles, fd)
        XCTAssertLessThan(jvpErr, tolerance, "\(name): JVP relative error \(jvpErr)", file: file, line: line)

        // VJP: directional derivative of sum(f * w) along u.
        let (_, grads) = valueAndGradient(x) { (f($0) * w).sum() }
        let analytic = zip(grads, u).reduce(0.0) { $0 + Self.dot($1.0, $1.1) }
        let numeric = (Self.dot(f(Self.axpy(x, u, eps)), w) - Self.dot(f(Self.axpy(x, u, -eps)), w)) / (2 * eps)
        let vjpErr = abs(analytic - numeric) / max(abs(numeric), 1e-8)
        XCTAssertLessThan(vjpErr, tolerance, "\(name): VJP error \(vjpErr) (\(analytic) vs \(numeric))", file: file, line: line)

        guard secondOrder else { return }
        // Gradient of a function of the JVP, along a fresh direction r.
        let r = zip(x, diff).map { t, d in d ? random(t.shape) : t.zerosLike() }
        func g(_ xs: [Tensor]) -> Tensor {
            let (_, t) = jvp({ [f($0)] }, primals: xs, tangents: u)
            return (t[0] * w).sum()
        }
        let (_, grads2) = valueAndGradient(x, g)
        let analytic2 = zip(grads2, r).reduce(0.0) { $0 + Self.dot($1.0, $1.1) }
        let numeric2 = (g(Self.axpy(x, r, eps)).item - g(Self.axpy(x, r, -eps)).item) / (2 * eps)
        let err2 = abs(analytic2 - numeric2) / max(abs(numeric2), 1e-8)
        XCTAssertLessThan(err2, tolerance * 10, "\(name): second-order error \(err2) (\(analytic2) vs \(numeric2))",
                          file: file, line: line)
    }
}
