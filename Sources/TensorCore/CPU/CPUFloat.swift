#if canImport(Glibc)
import Glibc
#endif

/// The element types CPU kernels are written for, with the libm functions each needs.
protocol CPUFloat: BinaryFloatingPoint {
    static func fexp(_ x: Self) -> Self
    /// exp for the activation kernels: a branch-free form the compiler vectorises for float32 (relative
    /// error about 2e-7), libm for float64 where gradient checks need every digit.
    static func vexp(_ x: Self) -> Self
    static func flog(_ x: Self) -> Self
    static func fsqrt(_ x: Self) -> Self
    static func fsin(_ x: Self) -> Self
    static func fcos(_ x: Self) -> Self
    static func ftanh(_ x: Self) -> Self
    static func from(_ x: Float) -> Self
    var double: Double { get }
}

extension Float: CPUFloat {
    @inline(__always) static func fexp(_ x: Float) -> Float { expf(x) }
    @inline(__always) static func vexp(_ x: Float) -> Float {
        // exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by its Taylor series to r^7.
        // Rounding by adding 1.5 * 2^23 leaves n in the low mantissa bits: no libm call and no checked
        // conversion, so the loop vectorises.
        let xc = Swift.min(Swift.max(x, -87.0), 88.0)
        let shifted = xc * 1.442695041 + 12_582_912.0
        let n = shifted - 12_582_912.0
        let r = (xc - n * 0.693145751953125) - n * 1.428606765330187e-06
        var p: Float = 1.0 / 5040
        p = p * r + 1.0 / 720
        p = p * r + 1.0 / 120
        p = p * r + 1.0 / 24
        p = p * r + 1.0 / 6
        p = p * r + 0.5
        p = p * r + 1
        p = p * r + 1
        let exponent = (shifted.bitPattern &- 0x4B40_0000) &+ 127
        let y = p * Float(bitPattern: exponent &<< 23)
        // Out-of-range inputs: 0 below, +inf above, NaN stays NaN.
        return x < -87.0 ? 0 : (x > 88.0 ? Float.infinity : (x.isNaN ? x : y))
    }
    @inline(__always) static func flog(_ x: Float) -> Float { logf(x) }
    @inline(__always) static func fsqrt(_ x: Float) -> Float { x.squareRoot() }
    @inline(__always) static func fsin(_ x: Float) -> Float { sinf(x) }
    @inline(__always) static func fcos(_ x: Float) -> Float { cosf(x) }
    @inline(__always) static func ftanh(_ x: Float) -> Float { tanhf(x) }
    @inline(__always) static func from(_ x: Float) -> Float { x }
    @inline(__always) var double: Double { Double(self) }
}

extension Double: CPUFloat {
    @inline(__always) static func fexp(_ x: Double) -> Double { Glibc.exp(x) }
    @inline(__always) static func vexp(_ x: Double) -> Double { Glibc.exp(x) }
    @inline(__always) static func flog(_ x: Double) -> Double { Glibc.log(x) }
    @inline(__always) static func fsqrt(_ x: Double) -> Double { x.squareRoot() }
    @inline(__always) static func fsin(_ x: Double) -> Double { Glibc.sin(x) }
    @inline(__always) static func fcos(_ x: Double) -> Double { Glibc.cos(x) }
    @inline(__always) static func ftanh(_ x: Double) -> Double { Glibc.tanh(x) }
    @inline(__always) static func from(_ x: Float) -> Double { Double(x) }
    @inline(__always) var double: Double { self }
}

/// Scalar forms of the unary ops. The tanh-GELU family is written with sigmoid(2u) = (1 + tanh u) / 2,
/// which has no cancellation and needs only the vectorisable exp.
enum Scalar {
    @inline(__always) static func sigmoid<T: CPUFloat>(_ x: T) -> T { 1 / (1 + T.vexp(-x)) }
    @inline(__always) static func silu<T: CPUFloat>(_ x: T) -> T { x * sigmoid(x) }
    @inline(__always) static func siluD1<T: CPUFloat>(_ x: T) -> T {
        let s = sigmoid(x)
        return s * (1 + x * (1 - s))
    }
    @inline(__always) static func siluD2<T: CPUFloat>(_ x: T) -> T {
        let s = sigmoid(x)
        return s * (1 - s) * (2 + x * (1 - 2 * s))
    }
    @inline(__always) static func tanh<T: CPUFloat>(_ x: T) -> T { 2 * sigmoid(2 * x) - 1 }

    /// u = c (x + k x^3), u' and sigmoid(2u).
    @inline(__always) static func geluParts<T: CPUFloat>(_ x: T) -> (du: T, s: T) {
        let x2 = x * x
        let u = T(GELU.c) * (x + T(GELU.k) * x2 * x)
        return (T(GELU.c) * (1 + 3 * T(GELU.k) * x2), sigmoid(2 * u))
    }
    @inline(__always) static func gelu<T: CPUFloat>(_ x: T) -> T { x * sigmoid(2 * T(GELU.c) * (x + T(GELU.k) * x * x * x)) }
    /// g' = (1 + T)/2 + x/2 (1 - T^2) u' with 1 + T = 2s, 1 - T^2 = 4 s (1 - s).
    @inline(__always) static func geluD1<T: CPUFloat>(_ x: T) -> T {
        let (du, s) = geluParts(x)
        return s + 2 * x * s * (1 - s) * du
    }
    /// g'' = (1 - T^2) (u' + x/2 (u'' - 2 T u'^2)).
    @inline(__always) static func geluD2<T: CPUFloat>(_ x: T) -> T {
        let (du, s) = geluParts(x)
        let th = 2 * s - 1, d2u = 6 * T(GELU.c) * T(GELU.k) * x
        return 4 * s * (1 - s) * (du + 0.5 * x * (d2u - 2 * th * du * du))
    }
}
