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
        uniform(out * fanIn, bound: (6.0 / Double(fanIn + out)).squareRoot(), rng: &rng)
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

    /// U(-bound, bound).
    public static func uniform(_ count: Int, bound: Double, rng: inout RandomGenerator) -> [Double] {
        rng.uniformFloats(count).map { (2 * Double($0) - 1) * bound }
    }

    /// The largest singular value, exactly enough for a normalisation (relative error about 1e-10).
    /// Random matrices have close top singular values, so plain power iteration converges slowly; instead the
    /// Gram matrix G = W W^T (the smaller side) is squared five times, widening the ratio of its top two
    /// eigenvalues to (sigma2/sigma1)^64, and power iteration on that finds the top eigenvector in a few dozen
    /// steps. All products go through the CPU's BLAS in float64.
    public static func largestSingularValue(_ w: [Double], rows: Int, cols: Int, rng: inout RandomGenerator) -> Double {
        let W = Tensor(w, shape: [rows, cols], dtype: .float64, on: .cpu)
        return withoutGrad {
            let gram = rows <= cols ? W.matmul(W, transposeOther: true) : W.matmul(W, transposeSelf: true)
            let k = gram.shape[0]
            var sharp = gram
            for _ in 0..<5 {
                sharp = sharp.matmul(sharp)
                sharp = sharp / max(sharp.square().sum().item.squareRoot(), .leastNormalMagnitude)
            }
            var v = Tensor(rng.normalFloats(k).map(Double.init), shape: [k, 1], dtype: .float64, on: .cpu)
            var previous = 0.0
            for _ in 0..<200 {
                v = sharp.matmul(v)
                v = v / max(v.square().sum().item.squareRoot(), .leastNormalMagnitude)
                let rayleigh = (v * gram.matmul(v)).sum().item
                if abs(rayleigh - previous) <= 1e-13 * rayleigh { break }
                previous = rayleigh
            }
            return (v * gram.matmul(v)).sum().item.squareRoot()
        }
    }
}
