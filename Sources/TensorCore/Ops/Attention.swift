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
/// mode) is not supported.
public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, layout: AttentionLayout = .headMajor,
                      scale: Double? = nil) -> Tensor {
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
    let tangents = [q.activeTangent, k.activeTangent, v.activeTangent]
    if let session = ForwardMode.session, tangents.contains(where: { $0 != nil }) {
        ForwardMode.session = nil
        defer { ForwardMode.session = session }
        let filled = zip([q, k, v], tangents).map { $1 ?? $0.zerosLike() }
        let (o, to) = attentionWithTangent(q, k, v, filled[0], filled[1], filled[2], geometry)
        o.tangent = to
        o.tangentSession = session
        return o
    }
    let o = q.empty(q.shape), lse = q.empty([geometry.rows])
    q.backend.attention(q: q.storage, k: k.storage, v: v.storage, tq: nil, tk: nil, tv: nil,
                        o: o.storage, to: nil, lse: lse.storage, geometry: geometry)
    return record1("attention", [q, k, v], o, savesOutputs: false, jvp: nil) { x, _, g in
        let grads = geometry.backward(x, lse: lse, go: g[0], gto: nil, tangents: nil)
        return Array(grads.prefix(3))
    }
}

extension AttentionGeometry {
    /// Cotangents of (q, k, v[, tq, tk, tv]) from those of the output and of its tangent.
    func backward(_ x: [Tensor], lse: Tensor, go: Tensor?, gto: Tensor?, tangents: [Tensor]?) -> [Tensor?] {
        let q = x[0]
        let dq = q.empty(q.shape), dk = q.empty(q.shape), dv = q.empty(q.shape)
        let dt = tangents == nil ? nil : [q.empty(q.shape), q.empty(q.shape), q.empty(q.shape)]
        q.backend.attentionBackward(q: x[0].storage, k: x[1].storage, v: x[2].storage,
                                    tq: tangents?[0].storage, tk: tangents?[1].storage, tv: tangents?[2].storage,
                                    o: q.storage, to: nil, lse: lse.storage, go: go?.storage, gto: gto?.storage,
                                    dq: dq.storage, dk: dk.storage, dv: dv.storage,
                                    dtq: dt?[0].storage, dtk: dt?[1].storage, dtv: dt?[2].storage, geometry: self)
        return [dq, dk, dv] + (dt ?? [])
    }
}

/// The two-output primitive: (O, tO) from (q, k, v) and their tangents.
func attentionWithTangent(_ q: Tensor, _ k: Tensor, _ v: Tensor, _ tq: Tensor, _ tk: Tensor, _ tv: Tensor,
                          _ g: AttentionGeometry) -> (Tensor, Tensor) {
    let o = q.empty(q.shape), to = q.empty(q.shape), lse = q.empty([g.rows])
    q.backend.attention(q: q.storage, k: k.storage, v: v.storage, tq: tq.storage, tk: tk.storage, tv: tv.storage,
                        o: o.storage, to: to.storage, lse: lse.storage, geometry: g)
    let outs = record("attentionJVP", inputs: [q, k, v, tq, tk, tv], outputs: [o, to], savesOutputs: false, jvp: nil) { x, _, c in
        g.backward(x, lse: lse, go: c[0], gto: c[1], tangents: Array(x[3...]))
    }
    return (outs[0], outs[1])
}

/// The same attention from separate differentiable ops (scores, softmax, weighted sum) over [..., seq, dim]:
/// the reference the fused primitive is tested against.
public func decomposedAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale: Double? = nil) -> Tensor {
    let s = scale ?? 1 / Double(q.shape[q.rank - 1]).squareRoot()
    return (q.matmul(k, transposeOther: true) * s).softmax().matmul(v)
}
