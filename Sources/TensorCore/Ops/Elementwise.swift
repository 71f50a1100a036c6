// Elementwise primitives and their rules. Rules are written with tensor ops so that they are
// themselves differentiable (see Autodiff.swift).

/// Sum of optional terms; nil when every term is nil (a zero tangent or cotangent).
func sumTerms(_ terms: Tensor?...) -> Tensor? {
    terms.compactMap { $0 }.reduce(nil) { acc, t in acc.map { $0 + t } ?? t }
}

/// A gradient summed so far plus a new term (the order of the engine's own sums).
func adding(_ partial: Tensor?, _ term: Tensor) -> Tensor { partial.map { $0 + term } ?? term }

/// Fused activation kernels (silu and gelu, `UnaryOp.derivatives`): the value and its tangent in one pass, and
/// the backward passes of both, instead of one pass per elementary op. Without them an activation is the `unary`
/// kernel differentiated through its derivative ops (siluD1, siluD2, ...), as every other unary op is.
/// Every storage but the output cotangents gy, gty and g may be a low-precision one (`ProductUse.only`: a linear
/// layer's output read by the activation alone, the activation's output, its input's cotangents).
public protocol ActivationBackend: Backend {
    /// y = f(x).
    func activation(_ op: UnaryOp, _ x: Storage, _ y: Storage)
    /// y = f(x), ty = f'(x) t.
    func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage)
    /// gx = gy f'(x) + gty f''(x) t and gt = gty f'(x); gy or gty may be nil (zero).
    func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                       _ gx: Storage, _ gt: Storage)
    /// gx = g f'(x).
    func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage)
}

/// A fused activation's value and tangent made again in backward, in one pass for both: the first of the two nodes
/// that read them to run makes both and the other takes what is left, so the pass is not run twice.
final class RemadeActivation {
    private let op: UnaryOp
    private let x: Storage, tangent: Storage
    private let backend: any ActivationBackend
    private let products: ProductUse
    private var left: (value: Storage?, tangent: Storage?) = (nil, nil)

    init(_ op: UnaryOp, x: Storage, tangent: Storage, products: ProductUse, on backend: any ActivationBackend) {
        (self.op, self.x, self.tangent, self.products, self.backend) = (op, x, tangent, products, backend)
    }

    func take(tangent wantsTangent: Bool) -> Storage {
        if wantsTangent, let ty = left.tangent {
            left.tangent = nil
            return ty
        }
        if !wantsTangent, let y = left.value {
            left.value = nil
            return y
        }
        let y = backend.outputStorage(count: x.count, dtype: x.dtype, for: products)
        let ty = backend.outputStorage(count: x.count, dtype: x.dtype, for: products)
        backend.activationWithTangent(op, x, tangent, y, ty)
        left = wantsTangent ? (y, nil) : (nil, ty)
        return wantsTangent ? ty : y
    }
}

extension Tensor {
    func checkSameDType(_ other: Tensor, _ op: String) {
        precondition(dtype == other.dtype, "\(op): dtypes \(dtype) and \(other.dtype) differ")
        precondition(backend === other.backend, "\(op): tensors live on different devices")
    }

    // MARK: Unary

    public func unary(_ op: UnaryOp) -> Tensor {
        if op.derivatives != nil, let fused = backend as? any ActivationBackend { return activation(op, fused, products: .none) }
        let y = empty(shape)
        backend.unary(op, storage, y.storage)
        switch op {
        case .isFinite:
            return record1("isFinite", [self], y, saves: [], savesOutputs: false, jvp: { _, _, _ in [nil] }) { _, _, _ in [nil] }
        case .neg:
            return record1("neg", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [-t[0]!] }) { _, _, g in [-g[0]!] }
        default:
            return record1("\(op)", [self], y, jvp: { x, y, t in [Tensor.unaryDerivative(op, x[0], y[0]) * t[0]!] }) {
                x, y, g in [g[0]! * Tensor.unaryDerivative(op, x[0], y[0])]
            }
        }
    }

    /// SiLU and GELU on a backend with fused activation kernels: under a JVP the value and tangent come from one
    /// two-output primitive, and the backward passes are fused kernels too (rules that are never differentiated
    /// may use raw kernels). `products`: who reads the output and its tangent (`ProductUse`); `inputCotangents`: who
    /// reads the cotangents of the input and its tangent (`.only` where the input is a linear layer's output).
    func activation(_ op: UnaryOp, _ fused: any ActivationBackend, products: ProductUse,
                    inputCotangents: ProductUse = .none) -> Tensor {
        let y = output(shape, for: products)
        // The nodes here keep the input (and its tangent), from which one elementwise pass remakes the output: the
        // layer that reads the output (the MLP's second linear layer, which keeps its input for its weight gradient)
        // keeps the recipe instead of the values (`recompute`), so the graph does not hold both.
        if let t = activeTangent {
            let ty = output(shape, for: products)
            fused.activationWithTangent(op, storage, t.storage, y.storage, ty.storage)
            let out = recordWithTangent("\(op)JVP", inputs: [self], tangents: [t], output: y, tangent: ty) { x, _, g in
                let gx = x[0].output(x[0].shape, for: inputCotangents), gt = x[0].output(x[0].shape, for: inputCotangents)
                fused.activationWithTangentBackward(op, x[0].storage, x[1].storage, g[0]?.storage, g[1]?.storage,
                                                    gx.storage, gt.storage)
                return [gx, gt]
            }
            if out.gradSource != nil {
                let remade = RemadeActivation(op, x: storage, tangent: t.storage, products: products, on: fused)
                out.recompute = { remade.take(tangent: false) }
                ty.recompute = { remade.take(tangent: true) }
            }
            return out
        }
        fused.activation(op, storage, y.storage)
        let out = record1("\(op)", [self], y, savesOutputs: false, jvp: nil) { x, _, g in
            let gx = x[0].output(x[0].shape, for: inputCotangents)
            fused.activationBackward(op, x[0].storage, g[0]!.storage, gx.storage)
            return [gx]
        }
        if out.gradSource != nil {
            let x = storage
            out.recompute = {
                let y = fused.outputStorage(count: x.count, dtype: x.dtype, for: products)
                fused.activation(op, x, y)
                return y
            }
        }
        return out
    }

    /// d op(x) / dx as a tensor, from the input and (for some ops, cheaper) the output.
    static func unaryDerivative(_ op: UnaryOp, _ x: Tensor, _ y: Tensor) -> Tensor {
        switch op {
        case .neg: return Tensor.full(-1, shape: x.shape, dtype: x.dtype, on: x.device)
        case .exp: return y
        case .log: return x.reciprocal()
        case .sqrt: return 0.5 * y.reciprocal()
        case .rsqrt: return -0.5 * y * y * y
        case .reciprocal: return -(y * y)
        case .square: return 2 * x
        case .sin: return x.cos()
        case .cos: return -x.sin()
        case .tanh: return 1 - y * y
        case .sigmoid: return y * (1 - y)
        case .silu: return x.unary(.siluD1)
        case .gelu: return x.unary(.geluD1)
        case .siluD1: return x.unary(.siluD2)
        case .siluD2:
            // silu''' = s(1-s) [(1-2s)(3 + x(1-2s)) - 2 x s(1-s)], s = sigmoid(x)
            let s = x.sigmoid(), a = s * (1 - s), b = 1 - 2 * s
            return a * (b * (3 + x * b) - 2 * x * a)
        case .geluD1: return x.unary(.geluD2)
        case .geluD2: return geluThirdDerivative(x)
        case .isFinite: return x.zerosLike()
        }
    }

    /// GELU(x) = x/2 (1 + tanh u), u = c (x + k x^3); with S = 1 - tanh^2 u, g'' = S h where
    /// h = u' + x/2 (u'' - 2 tanh(u) u'^2), so g''' = S h' - 2 tanh(u) S u' h.
    private static func geluThirdDerivative(_ x: Tensor) -> Tensor {
        let c = GELU.c, k = GELU.k
        let x2 = x * x
        let u = c * (x + k * x2 * x), du = c * (1 + 3 * k * x2), d2u = (6 * c * k) * x, d3u = 6 * c * k
        let th = u.tanh(), s = 1 - th * th
        let h = du + 0.5 * x * (d2u - 2 * th * du * du)
        let dh = d2u + 0.5 * (d2u - 2 * th * du * du)
            + 0.5 * x * (d3u - 2 * s * du * du * du - 4 * th * du * d2u)
        return s * dh - 2 * th * s * du * h
    }

    public func exp() -> Tensor { unary(.exp) }
    public func log() -> Tensor { unary(.log) }
    public func sqrt() -> Tensor { unary(.sqrt) }
    public func rsqrt() -> Tensor { unary(.rsqrt) }
    public func reciprocal() -> Tensor { unary(.reciprocal) }
    public func square() -> Tensor { unary(.square) }
    public func sin() -> Tensor { unary(.sin) }
    public func cos() -> Tensor { unary(.cos) }
    public func tanh() -> Tensor { unary(.tanh) }
    public func sigmoid() -> Tensor { unary(.sigmoid) }
    public func silu() -> Tensor { unary(.silu) }
    /// GELU with the tanh approximation (PyTorch's approximate="tanh"); `products`: who reads the result and its
    /// tangent (`ProductUse`; a hint where the backend has fused activations).
    public func gelu(products: ProductUse = .none) -> Tensor {
        guard let fused = backend as? any ActivationBackend else { return unary(.gelu) }
        return activation(.gelu, fused, products: products)
    }
    /// 1 where finite, 0 where NaN or infinite.
    public func isFinite() -> Tensor { unary(.isFinite) }

    /// a * self + b.
    public func affine(_ a: Double, _ b: Double) -> Tensor {
        let y = empty(shape)
        backend.affine(storage, y.storage, a: a, b: b)
        return record1("affine", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.affine(a, 0)] }) { _, _, g in
            [g[0]!.affine(a, 0)]
        }
    }

    // MARK: Binary (NumPy broadcasting)

    public func binary(_ op: BinaryOp, _ other: Tensor) -> Tensor {
        checkSameDType(other, "\(op)")
        guard let outShape = Shape.broadcast(shape, other.shape) else {
            preconditionFailure("\(op): shapes \(shape) and \(other.shape) do not broadcast")
        }
        let y = empty(outShape)
        backend.binary(op, storage, StridedView(strides: Shape.broadcastStrides(shape, to: outShape)),
                       other.storage, StridedView(strides: Shape.broadcastStrides(other.shape, to: outShape)),
                       y.storage, shape: outShape)
        switch op {
        case .greater, .greaterEqual, .equal:
            return record1("\(op)", [self, other], y, saves: [], savesOutputs: false, jvp: { _, _, _ in [nil] }) { _, _, _ in [nil, nil] }
        default:
            let saves: [Int] = op == .add || op == .sub ? [] : op == .div ? [1] : [0, 1]
            return record1("\(op)", [self, other], y, saves: saves, savesOutputs: op == .div, jvp: { x, y, t in
                // An add or sub with one operand's tangent gives that tangent, in that operand's (broadcast) shape.
                [Tensor.binaryTangent(op, x[0], x[1], y[0], t[0], t[1]).map { $0.shape == y[0].shape ? $0 : $0.broadcast(to: y[0].shape) }]
            }) { x, y, g in
                let (ga, gb) = Tensor.binaryCotangents(op, x[0], x[1], y[0], g[0]!)
                return [ga?.sum(to: x[0].shape), gb?.sum(to: x[1].shape)]
            }
        }
    }

    static func binaryTangent(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ y: Tensor, _ ta: Tensor?, _ tb: Tensor?) -> Tensor? {
        switch op {
        case .add: return sumTerms(ta, tb)
        case .sub: return sumTerms(ta, tb.map { -$0 })
        case .mul: return sumTerms(ta.map { $0 * b }, tb.map { a * $0 })
        case .div: return sumTerms(ta, tb.map { -(y * $0) }).map { $0 / b }
        case .maximum, .minimum:
            let pickA = op == .maximum ? a.binary(.greaterEqual, b) : b.binary(.greaterEqual, a)
            return select(pickA, ta ?? y.zerosLike(), tb ?? y.zerosLike())
        case .greater, .greaterEqual, .equal: return nil
        }
    }

    static func binaryCotangents(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ y: Tensor, _ g: Tensor) -> (Tensor?, Tensor?) {
        switch op {
        case .add: return (g, g)
        case .sub: return (g, -g)
        case .mul: return (g * b, g * a)
        case .div: let gb = g / b; return (gb, -(gb * y))
        case .maximum, .minimum:
            let pickA = op == .maximum ? a.binary(.greaterEqual, b) : b.binary(.greaterEqual, a)
            let zero = g.zerosLike()
            return (select(pickA, g, zero), select(pickA, zero, g))
        case .greater, .greaterEqual, .equal: return (nil, nil)
        }
    }
}

/// cond != 0 ? a : b, broadcasting all three. Gradients flow to the chosen branch only, and a NaN in the
/// branch not chosen stays out of the result and of its gradient.
public func select(_ cond: Tensor, _ a: Tensor, _ b: Tensor) -> Tensor {
    a.checkSameDType(b, "select")
    guard let s1 = Shape.broadcast(a.shape, b.shape), let shape = Shape.broadcast(s1, cond.shape) else {
        preconditionFailure("select: shapes \(cond.shape), \(a.shape), \(b.shape) do not broadcast")
    }
    let c = cond.broadcast(to: shape).detached(), ab = a.broadcast(to: shape), bb = b.broadcast(to: shape)
    let y = ab.empty(shape)
    ab.backend.select(c.storage, ab.storage, bb.storage, y.storage)
    return record1("select", [c, ab, bb], y, saves: [0], savesOutputs: false, jvp: { x, y, t in
        guard t[1] != nil || t[2] != nil else { return [nil] }
        return [select(x[0], t[1] ?? y[0].zerosLike(), t[2] ?? y[0].zerosLike())]
    }) { x, _, g in
        let zero = g[0]!.zerosLike()
        return [nil, select(x[0], g[0]!, zero), select(x[0], zero, g[0]!)]
    }
}

enum GELU {
    static let c = 0.7978845608028654  // sqrt(2 / pi)
    static let k = 0.044715
}

// MARK: - Operators

public prefix func - (x: Tensor) -> Tensor { x.unary(.neg) }
public func + (a: Tensor, b: Tensor) -> Tensor { a.binary(.add, b) }
public func - (a: Tensor, b: Tensor) -> Tensor { a.binary(.sub, b) }
public func * (a: Tensor, b: Tensor) -> Tensor { a.binary(.mul, b) }
public func / (a: Tensor, b: Tensor) -> Tensor { a.binary(.div, b) }
public func + (a: Tensor, b: Double) -> Tensor { a.affine(1, b) }
public func + (a: Double, b: Tensor) -> Tensor { b.affine(1, a) }
public func - (a: Tensor, b: Double) -> Tensor { a.affine(1, -b) }
public func - (a: Double, b: Tensor) -> Tensor { b.affine(-1, a) }
public func * (a: Tensor, b: Double) -> Tensor { a.affine(b, 0) }
public func * (a: Double, b: Tensor) -> Tensor { b.affine(a, 0) }
public func / (a: Tensor, b: Double) -> Tensor { a.affine(1 / b, 0) }
public func / (a: Double, b: Tensor) -> Tensor { a * b.reciprocal() }

extension Tensor {
    public func maximum(_ other: Tensor) -> Tensor { binary(.maximum, other) }
    public func minimum(_ other: Tensor) -> Tensor { binary(.minimum, other) }
    public func greater(_ other: Tensor) -> Tensor { binary(.greater, other) }
    public func equal(_ other: Tensor) -> Tensor { binary(.equal, other) }
}
