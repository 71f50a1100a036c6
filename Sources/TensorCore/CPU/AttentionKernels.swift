/// Reference attention on the CPU with dense per-head score matrices, in the token-major layout of
/// AttentionGeometry (a head's rows `rowStride` apart from `headOffset`): the forward with its tangent (TVM.md's
/// formulas) and the backward for cotangents of both outputs. The GPU's fused kernels are checked against these.
enum AttentionKernels {
    static func forward<T: CPUFloat>(q: UnsafeMutablePointer<T>, k: UnsafeMutablePointer<T>, v: UnsafeMutablePointer<T>,
                                     tq: UnsafeMutablePointer<T>?, tk: UnsafeMutablePointer<T>?, tv: UnsafeMutablePointer<T>?,
                                     o: UnsafeMutablePointer<T>, to: UnsafeMutablePointer<T>?, lse: UnsafeMutablePointer<T>,
                                     mu muOut: UnsafeMutablePointer<T>?, _ g: AttentionGeometry) {
        let n = g.seq, d = g.dim, ld = g.rowStride, scale = T(g.scale)
        // One pass over the keys per query row with an online softmax: running max m, normaliser l, and three
        // unnormalised accumulators (P v, P tS v + P tv, and mu = P tS), rescaled whenever the max grows.
        Parallel.forRanges(g.batch * g.heads, grain: 1) { heads in
            let acc = UnsafeMutablePointer<T>.allocate(capacity: d)
            defer { acc.deallocate() }
            for h in heads {
                let base = g.headOffset(h)
                let (qh, kh, vh) = (q + base, k + base, v + base)
                for i in 0..<n {
                    let qi = qh + i * ld, oi = o + base + i * ld
                    let toi = to.map { $0 + base + i * ld }
                    oi.update(repeating: 0, count: d)
                    acc.update(repeating: 0, count: d)
                    var m = -T.infinity, l = T(0), mu = T(0)
                    for j in 0..<n {
                        let s = scale * dot(qi, kh + j * ld, d)
                        if s > m {
                            let c = m == -T.infinity ? T(0) : T.fexp(m - s)
                            l *= c
                            mu *= c
                            for x in 0..<d { oi[x] *= c; acc[x] *= c }
                            m = s
                        }
                        let p = T.fexp(s - m)
                        l += p
                        axpy(p, vh + j * ld, oi, d)
                        guard toi != nil else { continue }
                        var ts = T(0)
                        if let tq { ts += dot(tq + base + i * ld, kh + j * ld, d) }
                        if let tk { ts += dot(qi, tk + base + j * ld, d) }
                        ts *= scale
                        mu += p * ts
                        axpy(p * ts, vh + j * ld, acc, d)
                        if let tv { axpy(p, tv + base + j * ld, acc, d) }
                    }
                    let inv = 1 / l
                    for x in 0..<d { oi[x] *= inv }
                    lse[h * n + i] = m + T.flog(l)
                    muOut?[h * n + i] = mu * inv
                    // to_i = sum P tS v + sum P tv - mu o_i, with P normalised.
                    if let toi { for x in 0..<d { toi[x] = acc[x] * inv - mu * inv * oi[x] } }
                }
            }
        }
    }

    static func backward<T: CPUFloat>(q: UnsafeMutablePointer<T>, k: UnsafeMutablePointer<T>, v: UnsafeMutablePointer<T>,
                                      tq: UnsafeMutablePointer<T>?, tk: UnsafeMutablePointer<T>?, tv: UnsafeMutablePointer<T>?,
                                      lse: UnsafeMutablePointer<T>, go: UnsafeMutablePointer<T>?, gto: UnsafeMutablePointer<T>?,
                                      dq: UnsafeMutablePointer<T>, dk: UnsafeMutablePointer<T>, dv: UnsafeMutablePointer<T>,
                                      dtq: UnsafeMutablePointer<T>?, dtk: UnsafeMutablePointer<T>?, dtv: UnsafeMutablePointer<T>?,
                                      _ g: AttentionGeometry) {
        let n = g.seq, d = g.dim, ld = g.rowStride, scale = T(g.scale)
        let hasTangent = tq != nil || tk != nil || tv != nil
        let outputs = [dq, dk, dv, dtq, dtk, dtv]
        Parallel.forRanges(g.batch * g.heads, grain: 1) { heads in
            let nn = n * n
            let P = UnsafeMutablePointer<T>.allocate(capacity: nn), tS = UnsafeMutablePointer<T>.allocate(capacity: nn)
            let dS = UnsafeMutablePointer<T>.allocate(capacity: nn), dtS = UnsafeMutablePointer<T>.allocate(capacity: nn)
            defer { P.deallocate(); tS.deallocate(); dS.deallocate(); dtS.deallocate() }
            for h in heads {
                let base = g.headOffset(h)
                let (qh, kh, vh) = (q + base, k + base, v + base)
                let goh = go.map { $0 + base }, gtoh = gto.map { $0 + base }
                let tqh = tq.map { $0 + base }, tkh = tk.map { $0 + base }, tvh = tv.map { $0 + base }
                // This head's rows of every output start at zero: the passes below accumulate into them.
                for case let out? in outputs { for i in 0..<n { (out + base + i * ld).update(repeating: 0, count: d) } }
                for i in 0..<n {
                    for j in 0..<n {
                        P[i * n + j] = T.fexp(scale * dot(qh + i * ld, kh + j * ld, d) - lse[h * n + i])
                        var s = T(0)
                        if let tqh { s += dot(tqh + i * ld, kh + j * ld, d) }
                        if let tkh { s += dot(qh + i * ld, tkh + j * ld, d) }
                        tS[i * n + j] = scale * s
                    }
                }
                for i in 0..<n {
                    let row = i * n
                    var mu = T(0)
                    for j in 0..<n { mu += P[row + j] * tS[row + j] }
                    // R_ij = H_i . v_j and rho_i = sum_j P_ij R_ij (zero without a tangent cotangent).
                    var rho = T(0)
                    for j in 0..<n {
                        let r = gtoh.map { dot($0 + i * ld, vh + j * ld, d) } ?? 0
                        dtS[row + j] = r  // R for now
                        rho += P[row + j] * r
                    }
                    var dotPdP = T(0)
                    for j in 0..<n {
                        let pij = P[row + j], r = dtS[row + j], tsij = tS[row + j]
                        var dp = goh.map { dot($0 + i * ld, vh + j * ld, d) } ?? 0
                        if hasTangent, let gtoh {
                            if let tvh { dp += dot(gtoh + i * ld, tvh + j * ld, d) }
                            dp += r * (tsij - mu) - tsij * rho
                        }
                        dS[row + j] = dp
                        dotPdP += pij * dp
                        dtS[row + j] = pij * (r - rho)
                        // dv_j += P_ij G_i + tP_ij H_i ; dtv_j += P_ij H_i
                        if let goh { axpy(pij, goh + i * ld, dv + base + j * ld, d) }
                        if let gtoh {
                            axpy(pij * (tsij - mu), gtoh + i * ld, dv + base + j * ld, d)
                            if let dtv { axpy(pij, gtoh + i * ld, dtv + base + j * ld, d) }
                        }
                    }
                    for j in 0..<n { dS[row + j] = P[row + j] * (dS[row + j] - dotPdP) }
                }
                // dq = scale (dS k + dtS tk), dk = scale (dS^T q + dtS^T tq); dtq = scale dtS k, dtk = scale dtS^T q.
                for i in 0..<n {
                    for j in 0..<n {
                        let ds = scale * dS[i * n + j], dts = scale * dtS[i * n + j]
                        let (qi, kj) = (i * ld, j * ld)
                        axpy(ds, kh + kj, dq + base + qi, d)
                        axpy(ds, qh + qi, dk + base + kj, d)
                        if dts != 0 {
                            if let tkh { axpy(dts, tkh + kj, dq + base + qi, d) }
                            if let tqh { axpy(dts, tqh + qi, dk + base + kj, d) }
                            if let dtq { axpy(dts, kh + kj, dtq + base + qi, d) }
                            if let dtk { axpy(dts, qh + qi, dtk + base + kj, d) }
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func dot<T: CPUFloat>(_ a: UnsafeMutablePointer<T>, _ b: UnsafeMutablePointer<T>, _ d: Int) -> T {
        var s = T(0)
        for c in 0..<d { s += a[c] * b[c] }
        return s
    }

    @inline(__always)
    static func axpy<T: CPUFloat>(_ alpha: T, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ d: Int) {
        for c in 0..<d { y[c] += alpha * x[c] }
    }
}

extension CPUBackend: AttentionBackend {
    public func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                          o: Storage, to: Storage?, lse: Storage, mu: Storage?, geometry: AttentionGeometry) {
        func p<T: CPUFloat>(_ s: Storage?, _: T.Type) -> UnsafeMutablePointer<T>? { s.map { cpu($0).ptr(T.self) } }
        func run<T: CPUFloat>(_: T.Type) {
            AttentionKernels.forward(q: p(q, T.self)!, k: p(k, T.self)!, v: p(v, T.self)!,
                                     tq: p(tq, T.self), tk: p(tk, T.self), tv: p(tv, T.self),
                                     o: p(o, T.self)!, to: p(to, T.self), lse: p(lse, T.self)!, mu: p(mu, T.self), geometry)
        }
        typed(q, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    /// The statistics come from the dense score matrices here; `forward` is not needed.
    public func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                                  forward: AttentionForward?, lse: Storage, go: Storage?, gto: Storage?,
                                  dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                                  geometry: AttentionGeometry) {
        func p<T: CPUFloat>(_ s: Storage?, _: T.Type) -> UnsafeMutablePointer<T>? { s.map { cpu($0).ptr(T.self) } }
        func run<T: CPUFloat>(_: T.Type) {
            AttentionKernels.backward(q: p(q, T.self)!, k: p(k, T.self)!, v: p(v, T.self)!,
                                      tq: p(tq, T.self), tk: p(tk, T.self), tv: p(tv, T.self),
                                      lse: p(lse, T.self)!, go: p(go, T.self), gto: p(gto, T.self),
                                      dq: p(dq, T.self)!, dk: p(dk, T.self)!, dv: p(dv, T.self)!,
                                      dtq: p(dtq, T.self), dtk: p(dtk, T.self), dtv: p(dtv, T.self), geometry)
        }
        typed(q, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}
