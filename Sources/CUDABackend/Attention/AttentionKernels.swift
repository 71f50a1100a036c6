import TensorCore

// Attention (AttentionBackend): the flash kernels where they apply (FlashAttentionKernels.swift), else Attention.cu's
// warp-per-row kernels.
extension CUDABackend: AttentionBackend {
    /// Zeros of `count` elements, for a missing tangent or cotangent.
    private func zeros(_ count: Int, _ dtype: DType) -> Storage {
        let s = allocate(count, dtype)
        fill(s, value: 0)
        return s
    }

    /// The narrowest warp-per-row instance for head dim `dim` among `kernels`.
    private func laneKernel<K>(_ kernels: [K], _ what: String, tangent: Bool, dim: Int, _ axes: (K) -> (tangent: Bool, width: Int)) -> K {
        guard let k = rowKernel(kernels.filter { axes($0).tangent == tangent }, cols: dim, width: { axes($0).width }) else {
            fatalError("CUDA attention: head dimension \(dim) is larger than Attention.cu's \(what) kernels take")
        }
        return k
    }

    public func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                          o: Storage, to: Storage?, lse: Storage, mu: Storage?, geometry g: AttentionGeometry) {
        let rows = g.rows
        guard rows > 0 && g.dim > 0 else { return }
        let dtype = q.dtype, count = g.count
        let z = to != nil && (tq == nil || tk == nil || tv == nil) ? zeros(count, dtype) : nil
        let tangents = to == nil ? nil : (q: tq ?? z!, k: tk ?? z!, v: tv ?? z!)
        if flashEligible(dtype, g, [q, k, v, tq, tk, tv, o, to, lse, mu]) {
            flashForward(q: q, k: k, v: v, tangents: tangents, o: o, to: to, lse: lse, mu: mu, geometry: g)
            return
        }
        // The warp-per-row kernels read and write float32 alone.
        let (qw, kw, vw) = (widened(q), widened(k), widened(v)), tw = tangents.map { (widened($0.q), widened($0.k), widened($0.v)) }
        let f = laneKernel(kernels(AttentionKernels.self, dtype).attnFwd, "attn_fwd", tangent: to != nil, dim: g.dim) { ($0.tangent, $0.width) }
        writingFloat32(o) { ow in
            writingFloat32(to) { tow in
                f.launch(on: self, grid: ((rows + 7) / 8, 1), q: addr(qw), k: addr(kw), v: addr(vw), tq: addr(tw?.0), tk: addr(tw?.1),
                         tv: addr(tw?.2), o: addr(ow), to: addr(tow), lse: addr(lse), mu: to == nil ? 0 : addr(mu), rows: rows,
                         n: g.seq, heads: g.heads,
                         d: g.dim, scale: g.scale)
            }
        }
    }

    /// The flash kernels take their per-row statistics from `forward` where it holds what they need (o; with a tangent
    /// also to and mu); the warp-per-row kernels compute them.
    public func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                                  forward: AttentionForward?, lse: Storage, go: Storage?, gto: Storage?,
                                  dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                                  geometry g: AttentionGeometry) {
        let rows = g.rows
        guard rows > 0 && g.dim > 0 else { return }
        let dtype = q.dtype, count = g.count
        let tangent = tq != nil || tk != nil || tv != nil || gto != nil || dtq != nil || dtk != nil || dtv != nil
        let needZeros = go == nil || (tangent && (tq == nil || tk == nil || tv == nil || gto == nil))
        let z = needZeros ? zeros(count, dtype) : nil
        // The flash backward's pre-pass reads the output cotangents in float32.
        let goS = go.map(widened) ?? z!
        let tqS = tangent ? (tq ?? z!) : nil, tkS = tangent ? (tk ?? z!) : nil, tvS = tangent ? (tv ?? z!) : nil
        let gtoS = tangent ? (gto.map(widened) ?? z!) : nil
        let dtqS = tangent ? (dtq ?? allocate(count, dtype)) : nil
        let dtkS = tangent ? (dtk ?? allocate(count, dtype)) : nil
        let dtvS = tangent ? (dtv ?? allocate(count, dtype)) : nil
        // The saved outputs, where they give every statistic (o, and with the tangent to and mu) and the flash kernels
        // can read them.
        let saved = !flashSavedStatistics ? nil : forward.flatMap { f in
            (!tangent || (f.to != nil && f.mu != nil)) && flashEligible(dtype, g, [f.o, f.to, f.mu]) ? f : nil
        }
        if flashEligible(dtype, g, [q, k, v, tqS, tkS, tvS, lse, goS, gtoS, dq, dk, dv, dtqS, dtkS, dtvS]) {
            flashBackward(q: q, k: k, v: v, tq: tqS, tk: tkS, tv: tvS, saved: saved, lse: lse, go: goS, gto: gtoS,
                          dq: dq, dk: dk, dv: dv, dtq: dtqS, dtk: dtkS, dtv: dtvS, tangent: tangent, geometry: g)
            return
        }
        // The warp-per-row kernels read float32 alone.
        let (qW, kW, vW) = (widened(q), widened(k), widened(v))
        let (tqW, tkW, tvW) = (tqS.map(widened), tkS.map(widened), tvS.map(widened))
        let set = kernels(AttentionKernels.self, dtype), stats = allocate(rows * 3, dtype)
        let rowsKernel = laneKernel(set.attnBwdRows, "attn_bwd_rows", tangent: tangent, dim: g.dim) { ($0.tangent, $0.width) }
        rowsKernel.launch(on: self, grid: ((rows + 7) / 8, 1), q: addr(qW), k: addr(kW), v: addr(vW), tq: addr(tqW), tk: addr(tkW),
                          tv: addr(tvW), lse: addr(lse), go: addr(goS), gto: addr(gtoS), dq: addr(dq), dtq: addr(dtqS),
                          stats: addr(stats), rows: rows, n: g.seq, heads: g.heads, d: g.dim, scale: g.scale)
        let colsKernel = laneKernel(set.attnBwdCols, "attn_bwd_cols", tangent: tangent, dim: g.dim) { ($0.tangent, $0.width) }
        colsKernel.launch(on: self, grid: ((rows + 7) / 8, 1), q: addr(qW), k: addr(kW), v: addr(vW), tq: addr(tqW), tk: addr(tkW),
                          tv: addr(tvW), lse: addr(lse), go: addr(goS), gto: addr(gtoS), stats: addr(stats), dk: addr(dk),
                          dv: addr(dv), dtk: addr(dtkS), dtv: addr(dtvS), rows: rows, n: g.seq, heads: g.heads, d: g.dim,
                          scale: g.scale)
    }
}
