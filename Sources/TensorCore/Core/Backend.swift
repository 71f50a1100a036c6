/// Element types. Tensors are float32 everywhere; float64 exists on the CPU for gradient checks.
public enum DType: String, Sendable {
    case float32, float64
    public var byteSize: Int { self == .float32 ? 4 : 8 }
}

/// Device memory owned by one backend. Storage is always dense; a tensor reads it from offset 0 in
/// row-major order, so reshape is free and every other view is a copy (simple kernels, one layout). The one
/// exception, invisible to kernels: the tensors of a packed parameter set are storages aliasing ranges of one
/// buffer (`OptimizerBackend.views`), so that the optimizer updates the whole set in one pass.
open class Storage {
    public let count: Int
    public let dtype: DType
    public unowned let backend: any Backend
    public init(count: Int, dtype: DType, backend: any Backend) {
        self.count = count
        self.dtype = dtype
        self.backend = backend
    }
}

public enum UnaryOp: Sendable, CaseIterable {
    case neg, exp, log, sqrt, rsqrt, reciprocal, square, sin, cos, tanh, sigmoid
    /// SiLU and its first two derivatives: reverse mode over a JVP needs f, f' and f''.
    case silu, siluD1, siluD2
    /// GELU with the tanh approximation and its first two derivatives.
    case gelu, geluD1, geluD2
    /// 1 where the value is finite, 0 where it is NaN or infinite (not differentiable).
    case isFinite
}

public enum BinaryOp: Sendable {
    case add, sub, mul, div, maximum, minimum
    /// Comparisons give 1 or 0 and are not differentiable.
    case greater, greaterEqual, equal
}

public enum ReduceOp: Sendable { case sum, max }

/// A view of `count` elements described by shape and strides (strides in elements, 0 for a broadcast axis).
public struct StridedView: Sendable {
    public var offset: Int
    public var strides: [Int]
    public init(offset: Int = 0, strides: [Int]) { self.offset = offset; self.strides = strides }
}

/// Memory held by a backend's tensors, the same question on every device: bytes of live storages (the CUDA backend
/// counts its allocator's size classes, bf16 operand copies included, the CPU backend exact sizes; a view counts
/// nothing beyond its base) and the most that has been live since the last reset. How peak memory is measured and tested.
public protocol MemoryAccounting: AnyObject {
    /// Bytes held by live tensors.
    var currentBytes: Int { get }
    /// The most `currentBytes` has been since the start or `resetPeakBytes()`.
    var peakBytes: Int { get }
    /// Starts a new peak from `currentBytes`.
    func resetPeakBytes()
}

/// What a device must provide: the general operations every primitive can be composed from. Model and method
/// code never sees this: they use `Tensor` ops, which call these kernels, so a new backend plugs in here alone.
///
/// Fused operations are optional capabilities, each a protocol refining this one and declared beside its tensor
/// functions: `NormBackend` (Ops/RMSNorm.swift), `ScaledSumBackend` (Ops/ScaledSum.swift), `ActivationBackend`
/// (Ops/Elementwise.swift), `LinearBackend` (Ops/Matmul.swift), `AttentionBackend` (Ops/Attention.swift) and
/// `OptimizerBackend` (Ops/Optimizer.swift). A tensor op uses the capability where the tensor's backend adopts it
/// and otherwise composes the same result from core operations, so a backend with the core alone runs every model
/// correctly and gets faster one capability at a time. The CPU and CUDA backends adopt them all, but for
/// `ChannelsLastImageBackend` (Ops/ChannelsLastImages.swift: the VAE's convolutions and group norms, CUDA only);
/// `ConvolutionBackend` (inference-only image kernels) has no composed fallback.
public protocol Backend: AnyObject {
    var name: String { get }

    // Memory.
    func allocate(_ count: Int, _ dtype: DType) -> Storage
    func upload(_ values: [Double], dtype: DType) -> Storage
    func upload(_ values: [Float]) -> Storage
    func download(_ s: Storage) -> [Double]
    func downloadFloats(_ s: Storage) -> [Float]
    func fill(_ s: Storage, value: Double)
    func convert(_ x: Storage, to dtype: DType) -> Storage

    // Elementwise.
    func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage)
    /// y = a * x + b elementwise.
    func affine(_ x: Storage, _ y: Storage, a: Double, b: Double)
    /// y[i] = op(a[view a], b[view b]) for i over `shape` in row-major order.
    func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView,
                _ y: Storage, shape: [Int])
    /// y = cond != 0 ? a : b, all dense and of one shape. Unlike arithmetic masking, NaN in the unchosen branch
    /// does not leak.
    func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage)

    // Reductions and copies.
    /// x viewed as [outer, n, inner] reduced over the middle axis to y [outer, inner].
    func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner: Int)
    /// Copies the strided source view into the strided destination view, both iterated over `shape`.
    func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int])

    // Matrix products and softmax.
    /// y[b] = alpha * op(a[b]) op(w[b]) + beta * y[b] for b in 0..<batch, row-major M x N result.
    func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int,
                transA: Bool, transB: Bool, strideA: Int, strideB: Int, alpha: Double, beta: Double)
    /// Softmax over the last axis of a [rows, cols] matrix.
    func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int)

    // Gather and scatter.
    /// y[r] = table[index[r]] for rows of width `cols`; indices are stored as floats holding integers.
    func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int)
    /// table[index[r]] += x[r] (accumulate; duplicate indices add up).
    func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int)

    // Random numbers and synchronisation.
    /// Philox normals (or uniforms in [0, 1)) starting at block `counter`; see RandomGenerator.
    func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64)
    /// Waits for queued work (a no-op on the CPU).
    func synchronize()
}

extension UnaryOp {
    /// The first and second derivative ops of an activation with fused kernels.
    public var derivatives: (UnaryOp, UnaryOp)? {
        switch self {
        case .silu: return (.siluD1, .siluD2)
        case .gelu: return (.geluD1, .geluD2)
        default: return nil
        }
    }
}
