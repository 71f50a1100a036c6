import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// The paper's "gap" sampler for (s, t) and the independent flow-matching time s' (TVM.md).
/// Times are drawn on the host in float64: a batch is a few thousand numbers.
public struct GapTimeSampler {
    public var muS = -0.4, sigmaS = 1.0, muG = -0.8, sigmaG = 1.0
    public init() {}

    public struct Times {
        public var t: [Double]
        public var s: [Double]
        public var sPrime: [Double]
    }

    public func sample(_ n: Int, rng: inout RandomGenerator) -> Times {
        let gapNoise = rng.normalFloats(n), u = rng.uniformFloats(n), fmNoise = rng.normalFloats(n)
        var times = Times(t: [], s: [], sPrime: [])
        for i in 0..<n {
            let len = sigmoid(muG + sigmaG * Double(gapNoise[i]))
            // z ~ N(muS, sigmaS) truncated to z <= logit(1 - len), by inverting the CDF.
            let upper = Normal.cdf((logit(1 - len) - muS) / sigmaS)
            let z = muS + sigmaS * Normal.quantile(max(Double(u[i]) * upper, 1e-300))
            let s = sigmoid(z)
            times.s.append(s)
            times.t.append(min(s + len, 1))
            times.sPrime.append(sigmoid(muS + sigmaS * Double(fmNoise[i])))
        }
        return times
    }
}

@inline(__always) func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }
@inline(__always) func logit(_ p: Double) -> Double { log(p) - log1p(-p) }

/// The standard normal distribution function and its inverse.
public enum Normal {
    public static func cdf(_ x: Double) -> Double { 0.5 * erfc(-x / 2.0.squareRoot()) }

    /// Acklam's rational approximation (relative error 1e-9) refined by one Halley step to full precision.
    public static func quantile(_ p: Double) -> Double {
        precondition(p > 0 && p < 1, "quantile needs 0 < p < 1, got \(p)")
        let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00]
        let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                 6.680131188771972e+01, -1.328068155288572e+01]
        let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                 -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00]
        let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
        let lo = 0.02425
        var x: Double
        if p < lo {
            let q = (-2 * log(p)).squareRoot()
            x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
                ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        } else if p <= 1 - lo {
            let q = p - 0.5, r = q * q
            x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
                (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        } else {
            let q = (-2 * log1p(-p)).squareRoot()
            x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
                ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        }
        let e = cdf(x) - p
        let u = e * (2 * Double.pi).squareRoot() * exp(x * x / 2)
        return x - u / (1 + x * u / 2)
    }
}
