// RMS normalisation on the CPU (NormBackend): plain, scaled and shifted, and their JVPs and VJPs.

extension CPUBackend: NormBackend {
    public func rmsNorm(_ x: Storage, _ y: Storage, rows: Int, cols: Int, eps: Double) {
        typed(x, f32: { Kernels.rmsNorm(cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), rows, cols, eps) },
              f64: { Kernels.rmsNorm(cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), rows, cols, eps) })
    }

    public func rmsNormLinear(_ x: Storage, _ y: Storage, _ d: Storage, plus c: Storage?, _ out: Storage, rows: Int, cols: Int,
                              eps: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rmsNormLinear(cpu(x).ptr(T.self), cpu(y).ptr(T.self), cpu(d).ptr(T.self), c.map { cpu($0).ptr(T.self) },
                                  cpu(out).ptr(T.self), rows, cols, eps)
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rmsNormLinearBackward(_ x: Storage, _ y: Storage, _ d: Storage, _ g: Storage, gx: Storage, gy: Storage,
                                      gd: Storage, plus: (x: Storage?, y: Storage?, d: Storage?), rows: Int, cols: Int,
                                      eps: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rmsNormLinearBackward(cpu(x).ptr(T.self), cpu(y).ptr(T.self), cpu(d).ptr(T.self), cpu(g).ptr(T.self),
                                          cpu(gx).ptr(T.self), cpu(gy).ptr(T.self), cpu(gd).ptr(T.self),
                                          plus.x.map { cpu($0).ptr(T.self) }, plus.y.map { cpu($0).ptr(T.self) },
                                          plus.d.map { cpu($0).ptr(T.self) }, rows, cols, eps)
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rmsNormScaled(_ x: Storage, scale s: Storage, shift t: Storage?, _ y: Storage, batch: Int, rows: Int, cols: Int,
                              eps: Double, productOperand: Bool) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rmsNormScaled(cpu(x).ptr(T.self), cpu(s).ptr(T.self), t.map { cpu($0).ptr(T.self) }, cpu(y).ptr(T.self),
                                  batch, rows, cols, eps)
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rmsNormScaledJVP(_ x: Storage, _ dx: Storage, scale s: Storage, dScale ds: Storage?, dShift dt: Storage?,
                                 _ out: Storage, batch: Int, rows: Int, cols: Int, eps: Double, productOperand: Bool) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rmsNormScaledJVP(cpu(x).ptr(T.self), cpu(dx).ptr(T.self), cpu(s).ptr(T.self), ds.map { cpu($0).ptr(T.self) },
                                     dt.map { cpu($0).ptr(T.self) }, cpu(out).ptr(T.self), batch, rows, cols, eps)
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                                      gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                                      sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int,
                                      eps: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            func p(_ s: Storage?) -> UnsafeMutablePointer<T>? { s.map { cpu($0).ptr(T.self) } }
            Kernels.rmsNormScaledBackward(cpu(x).ptr(T.self), p(dx), cpu(g).ptr(T.self), p(sA), p(sB), cpu(gx).ptr(T.self),
                                          p(gdx), p(plus.x), p(plus.dx), [p(sums.n), p(sums.dn), p(sums.one)],
                                          batch, rows, cols, eps)
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}

extension Kernels {
    static func rmsNorm<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ rows: Int, _ cols: Int, _ eps: Double) {
        Parallel.forRanges(rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { r in
            for row in r {
                let px = x + row * cols, py = y + row * cols
                var ss = T(0)
                for i in 0..<cols { ss += px[i] * px[i] }
                let inv = 1 / T.fsqrt(ss / T(cols) + T(eps))
                for i in 0..<cols { py[i] = px[i] * inv }
            }
        }
    }

    /// Per row: r = 1 / sqrt(mean(x^2) + eps); out = r (d - y mean(y d)) + c (c nil: none).
    static func rmsNormLinear<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ d: UnsafeMutablePointer<T>,
                                           _ c: UnsafeMutablePointer<T>?, _ out: UnsafeMutablePointer<T>, _ rows: Int,
                                           _ cols: Int, _ eps: Double) {
        Parallel.forRanges(rows, grain: Swift.max(1, 8192 / Swift.max(cols, 1))) { r in
            for row in r {
                let o = row * cols
                var xx = T(0), yd = T(0)
                for i in o..<(o + cols) { xx += x[i] * x[i]; yd += y[i] * d[i] }
                let n = T(cols), inv = 1 / T.fsqrt(xx / n + T(eps)), m = yd / n
                for i in o..<(o + cols) { out[i] = inv * (d[i] - y[i] * m) }
                if let c { for i in o..<(o + cols) { out[i] = c[i] + out[i] } }
            }
        }
    }

    /// Cotangents of rmsNormLinear for g (f its output): gd = r (g - y mean(y g)), gy = -r (m g + d mean(y g))
    /// with m = mean(y d), gx = -r^2 mean(g f) x; each plus its entry of cx, cy, cd where given.
    static func rmsNormLinearBackward<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>,
                                                   _ d: UnsafeMutablePointer<T>, _ g: UnsafeMutablePointer<T>,
                                                   _ gx: UnsafeMutablePointer<T>, _ gy: UnsafeMutablePointer<T>,
                                                   _ gd: UnsafeMutablePointer<T>, _ cx: UnsafeMutablePointer<T>?,
                                                   _ cy: UnsafeMutablePointer<T>?, _ cd: UnsafeMutablePointer<T>?,
                                                   _ rows: Int, _ cols: Int, _ eps: Double) {
        Parallel.forRanges(rows, grain: Swift.max(1, 4096 / Swift.max(cols, 1))) { r in
            for row in r {
                let o = row * cols
                var xx = T(0), yd = T(0), yg = T(0), gdSum = T(0)
                for i in o..<(o + cols) { xx += x[i] * x[i]; yd += y[i] * d[i]; yg += y[i] * g[i]; gdSum += g[i] * d[i] }
                let n = T(cols), inv = 1 / T.fsqrt(xx / n + T(eps)), m = yd / n, myg = yg / n
                // mean(g f) = r (mean(g d) - m mean(g y)).
                let gf = inv * (gdSum / n - m * myg), scaleX = -inv * inv * gf
                for i in o..<(o + cols) {
                    gd[i] = inv * (g[i] - y[i] * myg)
                    gy[i] = -inv * (m * g[i] + d[i] * myg)
                    gx[i] = scaleX * x[i]
                }
                if let cx { for i in o..<(o + cols) { gx[i] = cx[i] + gx[i] } }
                if let cy { for i in o..<(o + cols) { gy[i] = cy[i] + gy[i] } }
                if let cd { for i in o..<(o + cols) { gd[i] = cd[i] + gd[i] } }
            }
        }
    }

    /// Per row of [batch, rows, cols]: y = x r s + t with r = 1 / sqrt(mean(x^2) + eps) and s, t the row's batch
    /// entry's [cols] factors (t nil: none). Rounds as rmsNorm followed by scaledSum do: (x r) s + t.
    static func rmsNormScaled<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ s: UnsafeMutablePointer<T>, _ t: UnsafeMutablePointer<T>?,
                                           _ y: UnsafeMutablePointer<T>, _ batch: Int, _ rows: Int, _ cols: Int, _ eps: Double) {
        Parallel.forRanges(batch * rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { r in
            for row in r {
                let px = x + row * cols, py = y + row * cols, so = (row / rows) * cols
                var ss = T(0)
                for i in 0..<cols { ss += px[i] * px[i] }
                let inv = 1 / T.fsqrt(ss / T(cols) + T(eps))
                let ps = s + so
                if let t {
                    let pt = t + so
                    for i in 0..<cols { py[i] = px[i] * inv * ps[i] + pt[i] }
                } else {
                    for i in 0..<cols { py[i] = px[i] * inv * ps[i] }
                }
            }
        }
    }

    /// rmsNormScaled's tangent per row of [batch, rows, cols]: out = s (r dx - r^3 mu x) + ds r x + dt with
    /// r = 1 / sqrt(mean(x^2) + eps) and mu = mean(x dx) (r dx - r^3 mu x is r (dx - n mean(n dx)), n = r x).
    static func rmsNormScaledJVP<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ dx: UnsafeMutablePointer<T>, _ s: UnsafeMutablePointer<T>,
                                              _ ds: UnsafeMutablePointer<T>?, _ dt: UnsafeMutablePointer<T>?,
                                              _ out: UnsafeMutablePointer<T>, _ batch: Int, _ rows: Int, _ cols: Int, _ eps: Double) {
        Parallel.forRanges(batch * rows, grain: Swift.max(1, 8192 / Swift.max(cols, 1))) { r in
            for row in r {
                let o = row * cols, so = (row / rows) * cols
                var xx = T(0), xd = T(0)
                for i in o..<(o + cols) { xx += x[i] * x[i]; xd += x[i] * dx[i] }
                let n = T(cols), inv = 1 / T.fsqrt(xx / n + T(eps)), q = inv * inv * inv * xd / n
                for i in 0..<cols {
                    var v = s[so + i] * (inv * dx[o + i] - q * x[o + i])
                    if let ds { v += ds[so + i] * (x[o + i] * inv) }
                    if let dt { v += dt[so + i] }
                    out[o + i] = v
                }
            }
        }
    }

    /// Cotangents for g of out = L(dx) sA + n sB + t per row (n = r x, L(dx) = r dx - r^3 mu x, mu = mean(x dx)).
    /// With a = g sA, c = g sB and the row sums A = sum a dx, Xa = sum a x, Xc = sum c x over D columns:
    /// gdx = r a - r^3 Xa x / D and
    /// gx = r c - r^3 mu a - r^3 Xa dx / D + x (3 r^5 mu Xa - r^3 A - r^3 Xc) / D,
    /// each plus its partial; then the column sums of g n, g L(dx) and g over each batch entry's rows.
    static func rmsNormScaledBackward<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ dx: UnsafeMutablePointer<T>?,
                                                   _ g: UnsafeMutablePointer<T>, _ sA: UnsafeMutablePointer<T>?,
                                                   _ sB: UnsafeMutablePointer<T>?, _ gx: UnsafeMutablePointer<T>,
                                                   _ gdx: UnsafeMutablePointer<T>?, _ px: UnsafeMutablePointer<T>?,
                                                   _ pdx: UnsafeMutablePointer<T>?, _ sums: [UnsafeMutablePointer<T>?],
                                                   _ batch: Int, _ rows: Int, _ cols: Int, _ eps: Double) {
        let nrows = batch * rows
        // Per row: r, and r^3 mu (L(dx) = r dx - r^3 mu x), for the column sums.
        let rowR = UnsafeMutablePointer<T>.allocate(capacity: Swift.max(nrows, 1))
        let rowQ = UnsafeMutablePointer<T>.allocate(capacity: Swift.max(nrows, 1))
        defer { rowR.deallocate(); rowQ.deallocate() }
        Parallel.forRanges(nrows, grain: Swift.max(1, 4096 / Swift.max(cols, 1))) { r in
            for row in r {
                let o = row * cols, so = (row / rows) * cols
                var xx = T(0), xd = T(0), sumA = T(0), xa = T(0), xc = T(0)
                for i in 0..<cols {
                    let xv = x[o + i], dv = dx?[o + i] ?? 0, gv = g[o + i]
                    let a = sA.map { gv * $0[so + i] } ?? 0, c = sB.map { gv * $0[so + i] } ?? 0
                    xx += xv * xv; xd += xv * dv; sumA += a * dv; xa += a * xv; xc += c * xv
                }
                let n = T(cols), inv = 1 / T.fsqrt(xx / n + T(eps)), r3 = inv * inv * inv, mu = xd / n
                let ka = r3 * mu, kd = r3 * xa / n, kx = (3 * r3 * inv * inv * mu * xa - r3 * sumA - r3 * xc) / n
                for i in 0..<cols {
                    let xv = x[o + i], dv = dx?[o + i] ?? 0, gv = g[o + i]
                    let a = sA.map { gv * $0[so + i] } ?? 0, c = sB.map { gv * $0[so + i] } ?? 0
                    let vx = inv * c - ka * a - kd * dv + kx * xv
                    gx[o + i] = px.map { $0[o + i] + vx } ?? vx
                    if let gdx {
                        let vd = inv * a - kd * xv
                        gdx[o + i] = pdx.map { $0[o + i] + vd } ?? vd
                    }
                }
                rowR[row] = inv
                rowQ[row] = ka
            }
        }
        Parallel.forRanges(batch, grain: 1) { range in
            for bi in range {
                for (k, out) in sums.enumerated() {
                    guard let out else { continue }
                    let po = out + bi * cols
                    for i in 0..<cols { po[i] = 0 }
                    for r in 0..<rows {
                        let row = bi * rows + r, o = row * cols, inv = rowR[row], q = rowQ[row]
                        switch (k, dx) {
                        case (0, _): for i in 0..<cols { po[i] += g[o + i] * (x[o + i] * inv) }
                        case let (1, dx?): for i in 0..<cols { po[i] += g[o + i] * (inv * dx[o + i] - q * x[o + i]) }
                        case (1, nil): for i in 0..<cols { po[i] += g[o + i] * (-q * x[o + i]) }
                        default: for i in 0..<cols { po[i] += g[o + i] }
                        }
                    }
                }
            }
        }
    }
}
