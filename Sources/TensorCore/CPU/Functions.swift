import AVX2Kernels

/// Elementwise functions as types, so generic kernels specialise one loop per function (a closure
/// passed through the parallel loop would be called per element and never vectorise).
protocol UnaryFunction { static func apply<T: CPUFloat>(_ x: T) -> T }
protocol BinaryFunction { static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T }

enum Neg: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { -x } }
enum Square: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { x * x } }
enum Reciprocal: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { 1 / x } }
enum Sqrt: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.fsqrt(x) } }
enum Rsqrt: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { 1 / T.fsqrt(x) } }
enum Exp: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.vexp(x) } }
enum Log: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.flog(x) } }
enum Sin: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.fsin(x) } }
enum Cos: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.fcos(x) } }
enum Tanh: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { T.ftanh(x) } }
enum Sigmoid: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.sigmoid(x) } }
enum Silu: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.silu(x) } }
enum SiluD1: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.siluD1(x) } }
enum SiluD2: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.siluD2(x) } }
enum Gelu: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.gelu(x) } }
enum GeluD1: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.geluD1(x) } }
enum GeluD2: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { Scalar.geluD2(x) } }
enum IsFinite: UnaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ x: T) -> T { x.isFinite ? 1 : 0 } }

enum Add: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a + b } }
enum Sub: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a - b } }
enum Mul: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a * b } }
enum Div: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a / b } }
/// NaN propagates, as in PyTorch's maximum and minimum.
enum Maximum: BinaryFunction {
    @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a.isNaN || b.isNaN ? T.nan : (a > b ? a : b) }
}
enum Minimum: BinaryFunction {
    @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a.isNaN || b.isNaN ? T.nan : (a < b ? a : b) }
}
enum Greater: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a > b ? 1 : 0 } }
enum GreaterEqual: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a >= b ? 1 : 0 } }
enum Equal: BinaryFunction { @inline(__always) static func apply<T: CPUFloat>(_ a: T, _ b: T) -> T { a == b ? 1 : 0 } }

/// An activation with its value and first two derivatives, sharing the transcendental work; `lanes` names the
/// same function in the AVX2 kernels, which replace these loops for float32 where `AVX2.enabled`.
protocol ActivationPair {
    associatedtype Value: UnaryFunction
    static var lanes: AVX2Activation.Function { get }
    static func valueAndSlope<T: CPUFloat>(_ x: T) -> (T, T)
    static func slopes<T: CPUFloat>(_ x: T) -> (T, T)
}

enum SiluPair: ActivationPair {
    typealias Value = Silu
    static var lanes: AVX2Activation.Function { .silu }
    @inline(__always) static func valueAndSlope<T: CPUFloat>(_ x: T) -> (T, T) {
        let s = Scalar.sigmoid(x)
        return (x * s, s * (1 + x * (1 - s)))
    }
    @inline(__always) static func slopes<T: CPUFloat>(_ x: T) -> (T, T) {
        let s = Scalar.sigmoid(x), q = 1 - s
        return (s * (1 + x * q), s * q * (2 + x * (1 - 2 * s)))
    }
}

enum GeluPair: ActivationPair {
    typealias Value = Gelu
    static var lanes: AVX2Activation.Function { .gelu }
    @inline(__always) static func valueAndSlope<T: CPUFloat>(_ x: T) -> (T, T) {
        let (du, s) = Scalar.geluParts(x)
        return (x * s, s + 2 * x * s * (1 - s) * du)
    }
    @inline(__always) static func slopes<T: CPUFloat>(_ x: T) -> (T, T) {
        let (du, s) = Scalar.geluParts(x)
        let th = 2 * s - 1, d2u = 6 * T(GELU.c) * T(GELU.k) * x
        return (s + 2 * x * s * (1 - s) * du, 4 * s * (1 - s) * (du + 0.5 * x * (d2u - 2 * th * du * du)))
    }
}
