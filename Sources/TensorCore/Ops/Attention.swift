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

/// What an attention forward pass wrote that its backward may read instead of computing it again: the output o and,
/// with a tangent, the output's tangent `to` and the row means of the tangent scores `mu` (mu_i = sum_j P_ij tS_ij).
public struct AttentionForward {
    public var o: Storage, to: Storage?, mu: Storage?
    public init(o: Storage, to: Storage? = nil, mu: Storage? = nil) { (self.o, self.to, self.mu) = (o, to, mu) }
}

/// Fused attention: softmax(scale q k^T) v and its forward-mode tangent in one pass (no seq x seq matrix kept),
/// and the gradients of both. Without it `attention` is composed from matrix products and softmax
/// (`decomposedAttention`), whose own rules give its derivatives.
public protocol AttentionBackend: Backend {
    /// Attention (softmax(scale q k^T) v per batch entry and head, laid out as `geometry` says) and its
    /// forward-mode tangent in one pass. tq/tk/tv and to may be nil (no tangent: plain attention; a nil tangent
    /// input is zero when `to` is given). `lse` receives the row log-sum-exp and `mu` (nil: not wanted; only with
    /// `to`) the row means of the tangent scores, [batch, heads, seq] as lse.
    func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                   o: Storage, to: Storage?, lse: Storage, mu: Storage?, geometry: AttentionGeometry)
    /// Gradients of attention (and its tangent) given cotangents of o and of to (either may be nil), all in
    /// the layout of `geometry`. `forward`: the forward's outputs (with a tangent: o, to and mu) where the caller kept
    /// them, from which a backend may take its per-row statistics instead of recomputing the forward (nil: recomputed).
    func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                           forward: AttentionForward?, lse: Storage, go: Storage?, gto: Storage?,
                           dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                           geometry: AttentionGeometry)
}

/// Where attention's heads lie in q, k, v and the output.
public enum AttentionLayout: Sendable {
    /// [..., seq, dim]: every leading index is one head's sequence (e.g. [batch, heads, seq, dim]).
    case headMajor
    /// [..., seq, heads, dim]: tokens outside heads, as a [batch, seq, heads * dim] projection reshaped, so no
    /// head permutes (copies, kept for the backward pass) are needed around attention.
    case tokenMajor
}

/// softmax(q k^T * scale) v per head as one primitive; q, k, v and the output share one shape and `layout`.
///
/// Under a JVP the output and its tangent are computed together in one pass (TVM.md's formulas, an online
/// softmax on the GPU), as a two-output primitive of (q, k, v, tq, tk, tv) whose VJP takes cotangents for
/// both outputs, so gradients flow back through the tangent. Forward over this tangent (second-order forward
/// mode) is not supported. `products`: who reads the output and its tangent (`ProductUse`). The backward reads the
/// output and its tangent (kept by the output projection's node too in DiT, so no more memory) with the row means of
/// the tangent scores, so that it need not compute the forward again for its per-row statistics.
public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, layout: AttentionLayout = .headMajor,
                      scale: Double? = nil, products: ProductUse = .none) -> Tensor {
    let axes = layout == .headMajor ? 2 : 3
    precondition(q.shape == k.shape && q.shape == v.shape && q.rank >= axes,
                 "attention needs q, k, v of one shape \(layout == .headMajor ? "[..., seq, dim]" : "[..., seq, heads, dim]"), "
                 + "got \(q.shape), \(k.shape), \(v.shape)")
    q.checkSameDType(k, "attention")
    q.checkSameDType(v, "attention")
    let dim = q.shape[q.rank - 1]
    let geometry = AttentionGeometry(batch: q.shape.dropLast(axes).reduce(1, *), seq: q.shape[q.rank - axes],
                                     heads: layout == .headMajor ? 1 : q.shape[q.rank - 2], dim: dim,
                                     scale: scale ?? 1 / Double(dim).squareRoot())
    guard let fused = q.backend as? any AttentionBackend else {
        if layout == .headMajor { return decomposedAttention(q, k, v, scale: geometry.scale) }
        // [..., seq, heads, dim] to [..., heads, seq, dim] and back (the permutation is its own inverse).
        let r = q.rank, perm = Array(0..<(r - 3)) + [r - 2, r - 3, r - 1]
        return decomposedAttention(q.permuted(perm), k.permuted(perm), v.permuted(perm), scale: geometry.scale).permuted(perm)
    }
    let tangents = [q.activeTangent, k.activeTangent, v.activeTangent]
    if tangents.contains(where: { $0 != nil }) {
        // The output and its tangent in one pass (a two-output primitive of q, k, v and their tangents).
        let filled = zip([q, k, v], tangents).map { $1 ?? $0.zerosLike() }
        let o = q.output(q.shape, for: products), to = q.output(q.shape, for: products)
        let lse = q.empty([geometry.rows]), mu = q.empty([geometry.rows])
        fused.attention(q: q.storage, k: k.storage, v: v.storage, tq: filled[0].storage, tk: filled[1].storage,
                        tv: filled[2].storage, o: o.storage, to: to.storage, lse: lse.storage, mu: mu.storage, geometry: geometry)
        // The storages, not the tensors: a tensor holds its node (gradSource), which would then hold it.
        let forward = AttentionForward(o: o.storage, to: to.storage, mu: mu.storage)
        return recordWithTangent("attentionJVP", inputs: [q, k, v], tangents: filled, output: o, tangent: to) { x, _, c in
            geometry.backward(on: fused, x, lse: lse, forward: forward, go: c[0], gto: c[1], tangents: Array(x[3...]))
        }
    }
    let o = q.output(q.shape, for: products), lse = q.empty([geometry.rows])
    fused.attention(q: q.storage, k: k.storage, v: v.storage, tq: nil, tk: nil, tv: nil,
                    o: o.storage, to: nil, lse: lse.storage, mu: nil, geometry: geometry)
    let forward = AttentionForward(o: o.storage)
    return record1("attention", [q, k, v], o, savesOutputs: false, jvp: nil) { x, _, g in
        let grads = geometry.backward(on: fused, x, lse: lse, forward: forward, go: g[0], gto: nil, tangents: nil)
        return Array(grads.prefix(3))
    }
}

extension AttentionGeometry {
    /// Cotangents of (q, k, v[, tq, tk, tv]) from those of the output and of its tangent.
    func backward(on kernels: any AttentionBackend, _ x: [Tensor], lse: Tensor, forward: AttentionForward, go: Tensor?,
                  gto: Tensor?, tangents: [Tensor]?) -> [Tensor?] {
        let q = x[0]
        let dq = q.empty(q.shape), dk = q.empty(q.shape), dv = q.empty(q.shape)
        let dt = tangents == nil ? nil : [q.empty(q.shape), q.empty(q.shape), q.empty(q.shape)]
        kernels.attentionBackward(q: x[0].storage, k: x[1].storage, v: x[2].storage,
                                  tq: tangents?[0].storage, tk: tangents?[1].storage, tv: tangents?[2].storage,
                                  forward: forward, lse: lse.storage, go: go?.storage, gto: gto?.storage,
                                  dq: dq.storage, dk: dk.storage, dv: dv.storage,
                                  dtq: dt?[0].storage, dtk: dt?[1].storage, dtv: dt?[2].storage, geometry: self)
        return [dq, dk, dv] + (dt ?? [])
    }
}

/// The same attention from separate differentiable ops (scores, softmax, weighted sum) over [..., seq, dim]:
/// what a backend without `AttentionBackend` computes, and the reference the fused primitive is tested against.
public func decomposedAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale: Double? = nil) -> Tensor {
    let s = scale ?? 1 / Double(q.shape[q.rank - 1]).squareRoot()
    return (q.matmul(k, transposeOther: true) * s).softmax().matmul(v)
}
