import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// Weight initialisations. Values are generated on the host in float64 and then moved to the device,
/// so a seed gives the same model on every backend.
public enum Init {
    /// Xavier (Glorot) normal: std = sqrt(2 / (fanIn + fanOut)).
    public static func xavierNormal(out: Int, in fanIn: Int, rng: inout RandomGenerator) -> [Double] {
        let std = (2.0 / Double(fanIn + out)).squareRoot()
        return rng.normalFloats(out * fanIn).map { Double($0) * std }
    }

    /// Xavier (Glorot) uniform: U(-a, a), a = sqrt(6 / (fanIn + fanOut)).
    public static func xavierUniform(out: Int, in fanIn: Int, rng: inout RandomGenerator) -> [Double] {
        let a = (6.0 / Double(fanIn + out)).squareRoot()
        return rng.uniformFloats(out * fanIn).map { (2 * Double($0) - 1) * a }
    }

    /// Xavier normal divided by the largest singular value: every linear map starts 1-Lipschitz.
    public static func spectral(out: Int, in fanIn: Int, rng: inout RandomGenerator) -> [Double] {
        let w = xavierNormal(out: out, in: fanIn, rng: &rng)
        let sigma = largestSingularValue(w, rows: out, cols: fanIn, rng: &rng)
        return w.map { $0 / sigma }
    }

    public static func normal(_ count: Int, std: Double, rng: inout RandomGenerator) -> [Double] {
        rng.normalFloats(count).map { Double($0) * std }
    }

    /// Power iteration on W^T W. Random matrices have close top singular values, so it runs until the
    /// estimate is stable to 1e-10 (or 2000 iterations).
    public static func largestSingularValue(_ w: [Double], rows: Int, cols: Int, rng: inout RandomGenerator) -> Double {
        var v = rng.normalFloats(cols).map(Double.init)
        var u = [Double](repeating: 0, count: rows)
        var sigma = 0.0
        func normalize(_ x: inout [Double]) -> Double {
            let n = x.reduce(0) { $0 + $1 * $1 }.squareRoot()
            if n > 0 { for i in x.indices { x[i] /= n } }
            return n
        }
        _ = normalize(&v)
        for _ in 0..<2000 {
            w.withUnsafeBufferPointer { W in
                for r in 0..<rows {
                    var s = 0.0
                    for c in 0..<cols { s += W[r * cols + c] * v[c] }
                    u[r] = s
                }
            }
            let su = normalize(&u)
            var next = [Double](repeating: 0, count: cols)
            w.withUnsafeBufferPointer { W in
                for r in 0..<rows {
                    let ur = u[r]
                    for c in 0..<cols { next[c] += W[r * cols + c] * ur }
                }
            }
            let sv = normalize(&next)
            v = next
            let estimate = (su * sv).squareRoot()
            if abs(estimate - sigma) <= 1e-10 * estimate { return estimate }
            sigma = estimate
        }
        return sigma
    }
}
