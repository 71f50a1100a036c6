/// Element types. Tensors are float32 everywhere; float64 exists on the CPU for gradient checks.
public enum DType: String, Sendable {
    case float32, float64
    public var byteSize: Int { self == .float32 ? 4 : 8 }
}

/// Device memory owned by one backend. Storage is always dense; a tensor reads it from offset 0 in
/// row-major order, so reshape is free and every other view is a copy (simple kernels, one layout).
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

/// The shape of one attention call. q, k, v, the output and every tangent and cotangent of them hold `batch`
/// sequences of `seq` tokens, each token `heads` heads of `dim` values, token-major: element (b, n, h, d) at
/// ((b * seq + n) * heads + h) * dim + d, so a linear layer's [batch, seq, heads * dim] output is read in place
/// and one head's rows lie `heads * dim` apart. Head-major [batch * heads, seq, dim] tensors are the case of one
/// head per token. The row log-sum-exp is [batch, heads, seq], contiguous.
public struct AttentionGeometry: Sendable, Equatable {
    public var batch: Int, seq: Int, heads: Int, dim: Int
    /// The factor of the scores q . k.
    public var scale: Double

    public init(batch: Int, seq: Int, heads: Int, dim: Int, scale: Double) {
        precondition(batch >= 0 && seq >= 0 && heads >= 0 && dim >= 0, "negative attention geometry")
        (self.batch, self.seq, self.heads, self.dim, self.scale) = (batch, seq, heads, dim, scale)
    }

    /// Elements of q (and of each other operand but lse).
    public var count: Int { batch * seq * heads * dim }
    /// Softmax rows, one per (batch, head, query): the elements of lse.
    public var rows: Int { batch * heads * seq }
    /// Distance between consecutive tokens' rows of one head.
    public var rowStride: Int { heads * dim }
    /// Where the first row of head `bh` = b * heads + h lies.
    public func headOffset(_ bh: Int) -> Int { ((bh / heads) * seq * heads + bh % heads) * dim }
}

/// What a device must provide. Model and method code never sees this: they use `Tensor` ops,
/// which call these kernels, so a new backend plugs in here alone.
public protocol Backend: AnyObject {
    var name: String { get }
    func allocate(_ count: Int, _ dtype: DType) -> Storage
    func upload(_ values: [Double], dtype: DType) -> Storage
    func upload(_ values: [Float]) -> Storage
    func download(_ s: Storage) -> [Double]
    func downloadFloats(_ s: Storage) -> [Float]
    func fill(_ s: Storage, value: Double)
    func convert(_ x: Storage, to dtype: DType) -> Storage

    func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage)
    /// y = a * x + b elementwise.
    func affine(_ x: Storage, _ y: Storage, a: Double, b: Double)
    /// y[i] = op(a[view a], b[view b]) for i over `shape` in row-major order.
    func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView,
                _ y: Storage, shape: [Int])
    /// y = cond != 0 ? a : b, all dense and of one shape. Unlike arithmetic masking, NaN in the unchosen branch
    /// does not leak.
    func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage)
    /// x viewed as [outer, n, inner] reduced over the middle axis to y [outer, inner].
    func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner: Int)
    /// Copies the strided source view into the strided destination view, both iterated over `shape`.
    func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int])
    /// y[b] = alpha * op(a[b]) op(w[b]) + beta * y[b] for b in 0..<batch, row-major M x N result.
    func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int,
                transA: Bool, transB: Bool, strideA: Int, strideB: Int, alpha: Double, beta: Double)
    /// Softmax over the last axis of a [rows, cols] matrix.
    func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int)
    /// x / sqrt(mean(x^2) + eps) over the last axis of a [rows, cols] matrix.
    func rmsNorm(_ x: Storage, _ y: Storage, rows: Int, cols: Int, eps: Double)
    /// out = r (d - y mean(y d)) + c per row of [rows, cols], r = 1 / sqrt(mean(x^2) + eps), y = rmsNorm(x), c
    /// (nil: none) of the same shape: the derivative of RMS normalisation applied to d. The map is symmetric, so it
    /// is both the JVP (d a tangent) and the VJP (d a cotangent, c a gradient already summed for the same input);
    /// one kernel replaces eight elementwise passes.
    func rmsNormLinear(_ x: Storage, _ y: Storage, _ d: Storage, plus c: Storage?, _ out: Storage, rows: Int, cols: Int,
                       eps: Double)
    /// Cotangents of rmsNormLinear's x, y and d for the cotangent g of its output (gradients through the JVP),
    /// each plus the matching entry of `plus` (gradients already summed for that input; nil: none).
    func rmsNormLinearBackward(_ x: Storage, _ y: Storage, _ d: Storage, _ g: Storage, gx: Storage, gy: Storage,
                               gd: Storage, plus: (x: Storage?, y: Storage?, d: Storage?), rows: Int, cols: Int, eps: Double)
    /// y = rmsNorm(x) s + t over [batch, rows, cols] with s and t of shape [batch, cols] (one value per column,
    /// shared by a batch entry's rows; t may be nil): normalisation followed by adaLN modulation or a norm weight,
    /// reading each row once and writing y only (the normalised rows are never stored). `productOperand`: y feeds
    /// matrix products (a backend with low-precision products may write their operand copy in the same pass).
    func rmsNormScaled(_ x: Storage, scale s: Storage, shift t: Storage?, _ y: Storage, batch: Int, rows: Int, cols: Int,
                       eps: Double, productOperand: Bool)
    /// The tangent of rmsNormScaled: out = L(dx) s + rmsNorm(x) ds + dt, L(dx) = r (dx - n mean(n dx)) the
    /// derivative of n = rmsNorm(x) (rmsNormLinear), s, ds and dt [batch, cols] (ds, dt may be nil). One pass over
    /// x and dx, where n, L(dx) and the sum would be three that store n and L(dx).
    func rmsNormScaledJVP(_ x: Storage, _ dx: Storage, scale s: Storage, dScale ds: Storage?, dShift dt: Storage?,
                          _ out: Storage, batch: Int, rows: Int, cols: Int, eps: Double, productOperand: Bool)
    /// Cotangents for g of out = L(dx) sA + rmsNorm(x) sB + t (rmsNormScaled: no dx and sA, sB = s; its JVP:
    /// sA = s, sB = ds or nil): gx (plus `plus.x`), gdx = L(g sA) (plus `plus.dx`; with dx only) and the per-column
    /// sums over each batch entry's rows `sums.n` = sum g n, `sums.dn` = sum g L(dx), `sums.one` = sum g (nil:
    /// not wanted), all [batch, cols]. n and L(dx) are recomputed, never read.
    func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                               gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                               sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int, eps: Double)
    /// y = a s + b t + c over [batch, rows, cols] with s and t of shape [batch, cols] (one value per column,
    /// shared by a batch entry's rows): adaLN modulation and gated residuals in one pass. b/t and c may be nil;
    /// c is [batch, rows, cols] when `cFull`, else [batch, cols].
    func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                   batch: Int, rows: Int, cols: Int)
    /// outs[k][b, c] = sum over r of g[b, r, c] * xs[k][b, r, c] (xs[k] nil: of g alone), all in one pass over g:
    /// the cotangents of scaledSum's per-column inputs. At most three outputs.
    func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int)
    /// y[r] = table[index[r]] for rows of width `cols`; indices are stored as floats holding integers.
    func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int)
    /// table[index[r]] += x[r] (accumulate; duplicate indices add up).
    func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int)
    /// Philox normals (or uniforms in [0, 1)) starting at block `counter`; see RandomGenerator.
    func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64)
    /// Attention (softmax(scale q k^T) v per batch entry and head, laid out as `geometry` says) and its
    /// forward-mode tangent in one pass. tq/tk/tv and to may be nil (no tangent: plain attention; a nil tangent
    /// input is zero when `to` is given). `lse` receives the row log-sum-exp.
    func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                   o: Storage, to: Storage?, lse: Storage, geometry: AttentionGeometry)
    /// Gradients of attention (and its tangent) given cotangents of o and of to (either may be nil), all in
    /// the layout of `geometry`.
    func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                           o: Storage, to: Storage?, lse: Storage, go: Storage?, gto: Storage?,
                           dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                           geometry: AttentionGeometry)
    /// Fused AdamW step over one parameter tensor (in place on p, m, v).
    func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
               eps: Double, weightDecay: Double, step: Int, gradScale: Double)
    /// p_ema = p + decay * (p_ema - p), in place on ema.
    func emaUpdate(ema: Storage, p: Storage, decay: Double)
    /// Waits for queued work (a no-op on the CPU).
    func synchronize()

    // Fused activation kernels (silu and gelu): one pass instead of one per elementary op. The protocol
    // extension composes them from the kernels above for a backend without its own (CPU and CUDA have theirs).

    /// y = f(x), ty = f'(x) t.
    func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage)
    /// gx = gy f'(x) + gty f''(x) t and gt = gty f'(x); gy or gty may be nil (zero).
    func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                       _ gx: Storage, _ gt: Storage)
    /// gx = g f'(x).
    func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage)

    // Linear layers with the bias folded into the matrix product (a GEMM epilogue where the device has one)
    // instead of a separate pass over the output. The protocol extension composes them from the kernels above.

    /// y = x W^T + bias for x [rows, inFeatures], W [outFeatures, inFeatures] and y [rows, outFeatures], the bias
    /// [outFeatures] added to every row (nil: none). A linear layer's product and bias add in one kernel.
    func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int)
    /// The weight's and the bias's cotangents of `linear` for the cotangent g [rows, outFeatures] of y:
    /// gw = g^T x [outFeatures, inFeatures] and gbias = the column sums of g [outFeatures] (nil: not wanted).
    func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                              outFeatures: Int)
    /// y = gelu(x W^T + bias), GELU with the tanh approximation: `linear` with the activation in the same kernel
    /// where the device has one (not differentiated: Tensor.linearGELU composes `linear` and `gelu` when it is).
    func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int)
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

extension Backend {
    public func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int) {
        linearByGEMM(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    public func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                                     outFeatures: Int) {
        linearWeightGradientByGEMM(x, g, gw: gw, gbias: gbias, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    public func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                           outFeatures: Int) {
        linearThenGELU(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// `linearGELU` as `linear`, then the GELU kernel in place (elementwise, so y may be its own input): the same
    /// kernels, hence the same values, as Tensor.linear followed by Tensor.gelu.
    public func linearThenGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                               outFeatures: Int) {
        linear(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
        unary(.gelu, y, y)
    }

    /// `linear` from the kernels above: the bias broadcast into y, then a GEMM that adds the product to it.
    public func linearByGEMM(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                             outFeatures: Int) {
        if let bias {
            copy(bias, StridedView(strides: [0, 1]), y, StridedView(strides: [outFeatures, 1]), shape: [rows, outFeatures])
        }
        matmul(x, w, y, batch: 1, m: rows, n: outFeatures, k: inFeatures, transA: false, transB: true,
               strideA: 0, strideB: 0, alpha: 1, beta: bias == nil ? 0 : 1)
    }

    /// `linearWeightGradient` from the kernels above: a GEMM and a column reduction.
    public func linearWeightGradientByGEMM(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int,
                                           inFeatures: Int, outFeatures: Int) {
        matmul(g, x, gw, batch: 1, m: outFeatures, n: inFeatures, k: rows, transA: true, transB: false,
               strideA: 0, strideB: 0, alpha: 1, beta: 0)
        if let gbias { reduce(.sum, g, gbias, outer: 1, n: rows, inner: outFeatures) }
    }

    private func dense(_ op: BinaryOp, _ a: Storage, _ b: Storage, _ y: Storage) {
        let v = StridedView(strides: [1])
        binary(op, a, v, b, v, y, shape: [a.count])
    }

    public func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage) {
        unary(op, x, y)
        unary(op.derivatives!.0, x, ty)
        dense(.mul, ty, t, ty)
    }

    public func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                              _ gx: Storage, _ gt: Storage) {
        let (d1, d2) = op.derivatives!
        let tmp = allocate(x.count, x.dtype)
        unary(d1, x, tmp)
        if let gty { dense(.mul, gty, tmp, gt) } else { fill(gt, value: 0) }
        if let gy { dense(.mul, gy, tmp, gx) } else { fill(gx, value: 0) }
        if let gty {
            unary(d2, x, tmp)
            dense(.mul, tmp, t, tmp)
            dense(.mul, tmp, gty, tmp)
            dense(.add, gx, tmp, gx)
        }
    }

    public func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage) {
        unary(op.derivatives!.0, x, gx)
        dense(.mul, gx, g, gx)
    }
}
