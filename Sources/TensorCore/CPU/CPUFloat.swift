#if canImport(Glibc)
import Glibc
#endif

/// The element types CPU kernels are written for, with the libm functions each needs.
protocol CPUFloat: BinaryFloatingPoint {
    static func fexp(_ x: Self) -> Self
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
    @inline(__always) static func flog(_ x: Double) -> Double { Glibc.log(x) }
    @inline(__always) static func fsqrt(_ x: Double) -> Double { x.squareRoot() }
    @inline(__always) static func fsin(_ x: Double) -> Double { Glibc.sin(x) }
    @inline(__always) static func fcos(_ x: Double) -> Double { Glibc.cos(x) }
    @inline(__always) static func ftanh(_ x: Double) -> Double { Glibc.tanh(x) }
    @inline(__always) static func from(_ x: Float) -> Double { Double(x) }
    @inline(__always) var double: Double { self }
}

/// Scalar forms of the unary ops, shared by the elementwise kernel and the tests' expectations.
enum Scalar {
    @inline(__always)
    static func sigmoid<T: CPUFloat>(_ x: T) -> T { 1 / (1 + T.fexp(-x)) }

    @inline(__always)
    static func apply<T: CPUFloat>(_ op: UnaryOp, _ x: T) -> T {
        switch op {
        case .neg: return -x
        case .exp: return T.fexp(x)
        case .log: return T.flog(x)
        case .sqrt: return T.fsqrt(x)
        case .rsqrt: return 1 / T.fsqrt(x)
        case .reciprocal: return 1 / x
        case .square: return x * x
        case .sin: return T.fsin(x)
        case .cos: return T.fcos(x)
        case .tanh: return T.ftanh(x)
        case .sigmoid: return sigmoid(x)
        case .silu: return x * sigmoid(x)
        case .siluD1:
            let s = sigmoid(x)
            return s * (1 + x * (1 - s))
        case .siluD2:
            let s = sigmoid(x)
            return s * (1 - s) * (2 + x * (1 - 2 * s))
        case .gelu:
            let u = T(GELU.c) * (x + T(GELU.k) * x * x * x)
            return 0.5 * x * (1 + T.ftanh(u))
        case .geluD1:
            let x2 = x * x, th = T.ftanh(T(GELU.c) * (x + T(GELU.k) * x2 * x))
            let du = T(GELU.c) * (1 + 3 * T(GELU.k) * x2)
            return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du
        case .geluD2:
            let x2 = x * x, th = T.ftanh(T(GELU.c) * (x + T(GELU.k) * x2 * x))
            let du = T(GELU.c) * (1 + 3 * T(GELU.k) * x2), d2u = 6 * T(GELU.c) * T(GELU.k) * x
            return (1 - th * th) * (du + 0.5 * x * (d2u - 2 * th * du * du))
        case .isFinite: return x.isFinite ? 1 : 0
        }
    }
}
