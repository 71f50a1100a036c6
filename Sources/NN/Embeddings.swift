import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// Sinusoidal features of a scalar per row: [cos(x f_i), sin(x f_i)] with f_i = exp(-ln(maxPeriod) i / half),
/// cos first, as the official timestep embedder. Built from tensor ops, so forward mode gives the tangent
/// with respect to the time (the JVP along s enters the network here).
public func sinusoidalEmbedding(_ x: Tensor, dim: Int, maxPeriod: Double = 10000, scale: Double = 1) -> Tensor {
    let half = dim / 2
    let freqs = (0..<half).map { exp(-log(maxPeriod) * Double($0) / Double(half)) * scale }
    let f = Tensor(freqs, shape: [1, half], dtype: x.dtype, on: x.device)
    let args = x.reshaped([-1, 1]) * f
    return concat([args.cos(), args.sin()], axis: 1)
}

