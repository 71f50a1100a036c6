/// Generic CPU kernels over raw pointers. Kept free of tensors and autodiff: the backend calls them.
enum Kernels {
    static func unary<T: CPUFloat>(_ op: UnaryOp, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ n: Int) {
        switch op {
        case .neg: map(Neg.self, x, y, n)
        case .square: map(Square.self, x, y, n)
        case .reciprocal: map(Reciprocal.self, x, y, n)
        case .sqrt: map(Sqrt.self, x, y, n)
        case .rsqrt: map(Rsqrt.self, x, y, n)
        case .exp: map(Exp.self, x, y, n)
        case .log: map(Log.self, x, y, n)
        case .sin: map(Sin.self, x, y, n)
        case .cos: map(Cos.self, x, y, n)
        case .tanh: map(Tanh.self, x, y, n)
        case .sigmoid: map(Sigmoid.self, x, y, n)
        case .silu: map(Silu.self, x, y, n)
        case .siluD1: map(SiluD1.self, x, y, n)
        case .siluD2: map(SiluD2.self, x, y, n)
        case .gelu: map(Gelu.self, x, y, n)
        case .geluD1: map(GeluD1.self, x, y, n)
        case .geluD2: map(GeluD2.self, x, y, n)
        case .isFinite: map(IsFinite.self, x, y, n)
        }
    }

    /// One specialised loop per function type: the call inlines and the loop vectorises.
    static func map<F: UnaryFunction, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ n: Int) {
        Parallel.forRanges(n, grain: 16_384) { r in for i in r { y[i] = F.apply(x[i]) } }
    }

    /// y = f(x), ty = f'(x) t.
    static func valueAndSlope<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ t: UnsafeMutablePointer<T>,
                                                              _ y: UnsafeMutablePointer<T>, _ ty: UnsafeMutablePointer<T>, _ n: Int) {
        Parallel.forRanges(n, grain: 16_384) { r in
            for i in r {
                let (f, d1) = F.valueAndSlope(x[i])
                y[i] = f
                ty[i] = d1 * t[i]
            }
        }
    }

    /// gx = gy f'(x) + gty f''(x) t, gt = gty f'(x).
    static func tangentBackward<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ t: UnsafeMutablePointer<T>,
                                                                _ gy: UnsafeMutablePointer<T>?, _ gty: UnsafeMutablePointer<T>?,
                                                                _ gx: UnsafeMutablePointer<T>, _ gt: UnsafeMutablePointer<T>, _ n: Int) {
        Parallel.forRanges(n, grain: 16_384) { r in
            switch (gy, gty) {
            case let (gy?, gty?):
                for i in r {
                    let (d1, d2) = F.slopes(x[i])
                    gx[i] = gy[i] * d1 + gty[i] * d2 * t[i]
                    gt[i] = gty[i] * d1
                }
            case let (gy?, nil):
                for i in r { gx[i] = gy[i] * F.slopes(x[i]).0; gt[i] = 0 }
            case let (nil, gty?):
                for i in r {
                    let (d1, d2) = F.slopes(x[i])
                    gx[i] = gty[i] * d2 * t[i]
                    gt[i] = gty[i] * d1
                }
            case (nil, nil):
                for i in r { gx[i] = 0; gt[i] = 0 }
            }
        }
    }

    /// gx = g f'(x).
    static func slopeTimes<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ g: UnsafeMutablePointer<T>,
                                                           _ gx: UnsafeMutablePointer<T>, _ n: Int) {
        Parallel.forRanges(n, grain: 16_384) { r in for i in r { gx[i] = g[i] * F.slopes(x[i]).0 } }
    }

    static func affine<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ n: Int, _ a: T, _ b: T) {
        Parallel.forRanges(n) { r in for i in r { y[i] = a * x[i] + b } }
    }

    static func binary<T: CPUFloat>(_ op: BinaryOp, _ a: UnsafeMutablePointer<T>, _ av: StridedView,
                                    _ b: UnsafeMutablePointer<T>, _ bv: StridedView,
                                    _ y: UnsafeMutablePointer<T>, _ shape: [Int]) {
        switch op {
        case .add: binary(Add.self, a, av, b, bv, y, shape)
        case .sub: binary(Sub.self, a, av, b, bv, y, shape)
        case .mul: binary(Mul.self, a, av, b, bv, y, shape)
        case .div: binary(Div.self, a, av, b, bv, y, shape)
        case .maximum: binary(Maximum.self, a, av, b, bv, y, shape)
        case .minimum: binary(Minimum.self, a, av, b, bv, y, shape)
        case .greater: binary(Greater.self, a, av, b, bv, y, shape)
        case .greaterEqual: binary(GreaterEqual.self, a, av, b, bv, y, shape)
        case .equal: binary(Equal.self, a, av, b, bv, y, shape)
        }
    }

    static func binary<F: BinaryFunction, T: CPUFloat>(_: F.Type, _ a: UnsafeMutablePointer<T>, _ av: StridedView,
                                                       _ b: UnsafeMutablePointer<T>, _ bv: StridedView,
                                                       _ y: UnsafeMutablePointer<T>, _ shape: [Int]) {
        let total = Shape.count(shape)
        if total == 0 { return }
        let (cs, st) = Shape.collapse(shape: shape, strides: [av.strides, bv.strides, Shape.contiguousStrides(shape)])
        let (sa, sb) = (st[0], st[1])
        let a = a + av.offset, b = b + bv.offset
        let inner = cs.last!, rows = total / inner
        let ia = sa.last!, ib = sb.last!
        if rows == 1 {
            // One contiguous run: split it across cores.
            Parallel.forRanges(inner) { r in line(F.self, a, ia, b, ib, y, r) }
            return
        }
        Parallel.forRanges(rows, grain: Swift.max(1, 32_768 / inner)) { rr in
            for row in rr {
                let (oa, ob) = rowOffsets(row, cs, sa, sb)
                line(F.self, a + oa, ia, b + ob, ib, y + row * inner, 0..<inner)
            }
        }
    }

    /// Offsets in two strided views of the start of `row`, a row being one run of the last axis: the row's
    /// multi-index over the other axes of `shape` dotted with each view's strides.
    @inline(__always)
    static func rowOffsets(_ row: Int, _ shape: [Int], _ s1: [Int], _ s2: [Int]) -> (Int, Int) {
        var rem = row, o1 = 0, o2 = 0
        for d in stride(from: shape.count - 2, through: 0, by: -1) {
            let idx = rem % shape[d]
            rem /= shape[d]
            o1 += idx * s1[d]
            o2 += idx * s2[d]
        }
        return (o1, o2)
    }

    /// One row of a binary op, with the common stride patterns as separate (vectorisable) loops.
    @inline(__always)
    static func line<F: BinaryFunction, T: CPUFloat>(_: F.Type, _ pa: UnsafeMutablePointer<T>, _ ia: Int,
                                                     _ pb: UnsafeMutablePointer<T>, _ ib: Int,
                                                     _ py: UnsafeMutablePointer<T>, _ r: Range<Int>) {
        if ia == 1 && ib == 1 { for i in r { py[i] = F.apply(pa[i], pb[i]) } }
        else if ib == 0 && ia == 1 { let bs = pb[0]; for i in r { py[i] = F.apply(pa[i], bs) } }
        else if ia == 0 && ib == 1 { let as_ = pa[0]; for i in r { py[i] = F.apply(as_, pb[i]) } }
        else { for i in r { py[i] = F.apply(pa[i * ia], pb[i * ib]) } }
    }

    static func reduce<T: CPUFloat>(_ op: ReduceOp, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>,
                                    _ outer: Int, _ n: Int, _ inner: Int) {
        if inner == 1 {
            Parallel.forRanges(outer, grain: Swift.max(1, 32_768 / Swift.max(n, 1))) { r in
                for o in r {
                    let p = x + o * n
                    y[o] = op == .sum ? sumContiguous(p, n) : maxContiguous(p, n)
                }
            }
            return
        }
        Parallel.forRanges(outer, grain: Swift.max(1, 32_768 / Swift.max(n * inner, 1))) { r in
            for o in r {
                let py = y + o * inner, px = x + o * n * inner
                // Nothing to read when the reduced axis is empty.
                if n == 0 { py.update(repeating: op == .sum ? 0 : -T.infinity, count: inner); continue }
                py.update(from: px, count: inner)
                for j in 1..<n {
                    let row = px + j * inner
                    if op == .sum { for i in 0..<inner { py[i] += row[i] } }
                    else { for i in 0..<inner { py[i] = (py[i].isNaN || row[i].isNaN) ? T.nan : Swift.max(py[i], row[i]) } }
                }
            }
        }
    }

    /// Eight running sums: vectorises, and keeps float32 error growth low.
    @inline(__always)
    static func sumContiguous<T: CPUFloat>(_ p: UnsafeMutablePointer<T>, _ n: Int) -> T {
        var acc = (T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0))
        var i = 0
        while i + 8 <= n {
            acc.0 += p[i]; acc.1 += p[i + 1]; acc.2 += p[i + 2]; acc.3 += p[i + 3]
            acc.4 += p[i + 4]; acc.5 += p[i + 5]; acc.6 += p[i + 6]; acc.7 += p[i + 7]
            i += 8
        }
        var s = ((acc.0 + acc.1) + (acc.2 + acc.3)) + ((acc.4 + acc.5) + (acc.6 + acc.7))
        while i < n { s += p[i]; i += 1 }
        return s
    }

    @inline(__always)
    static func maxContiguous<T: CPUFloat>(_ p: UnsafeMutablePointer<T>, _ n: Int) -> T {
        var m = -T.infinity
        for i in 0..<n {
            if p[i].isNaN { return T.nan }
            m = Swift.max(m, p[i])
        }
        return m
    }

    static func copy<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ xv: StridedView, _ y: UnsafeMutablePointer<T>,
                                  _ yv: StridedView, _ shape: [Int]) {
        let total = Shape.count(shape)
        if total == 0 { return }
        let (cs, st) = Shape.collapse(shape: shape, strides: [xv.strides, yv.strides])
        let (sx, sy) = (st[0], st[1])
        let x = x + xv.offset, y = y + yv.offset
        let inner = cs.last!, rows = total / inner, ix = sx.last!, iy = sy.last!
        Parallel.forRanges(rows, grain: Swift.max(1, 65_536 / inner)) { rr in
            for row in rr {
                let (ox, oy) = rowOffsets(row, cs, sx, sy)
                let px = x + ox, py = y + oy
                if ix == 1 && iy == 1 { py.update(from: px, count: inner) }
                else if ix == 0 { let v = px[0]; for i in 0..<inner { py[i * iy] = v } }
                else { for i in 0..<inner { py[i * iy] = px[i * ix] } }
            }
        }
    }

    static func gemm<T: CPUFloat>(_ a: UnsafeMutablePointer<T>, _ b: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>,
                                  batch: Int, m: Int, n: Int, k: Int, transA: Bool, transB: Bool,
                                  strideA: Int, strideB: Int, alpha: T, beta: T) {
        if m == 0 || n == 0 { return }
        if CPUBackend.useBLAS, let blas = BLAS.library {
            let ta = transA ? BLAS.trans : BLAS.noTrans, tb = transB ? BLAS.trans : BLAS.noTrans
            let lda = Int32(transA ? m : k), ldb = Int32(transB ? k : n)
            // Work items are (batch entry, block of result rows); each runs a single-threaded BLAS call.
            let rowBlocks = batch >= Parallel.cores || m * n * k < 1 << 18 ? 1 : Swift.min(Parallel.cores, Swift.max(1, m / 16))
            let rowsPer = (m + rowBlocks - 1) / rowBlocks
            let items = batch * rowBlocks
            let work = { (item: Int) in
                let i = item / rowBlocks, r0 = (item % rowBlocks) * rowsPer
                let rows = Swift.min(rowsPer, m - r0)
                guard rows > 0 else { return }
                // Row block r0 of op(A): rows of A, or columns when A is transposed.
                let pa = a + i * strideA + (transA ? r0 : r0 * k), pb = b + i * strideB, py = y + i * m * n + r0 * n
                if T.self == Float.self {
                    blas.sgemm(BLAS.rowMajor, ta, tb, Int32(rows), Int32(n), Int32(k), Float(alpha.double),
                               UnsafeRawPointer(pa).assumingMemoryBound(to: Float.self), Swift.max(lda, 1),
                               UnsafeRawPointer(pb).assumingMemoryBound(to: Float.self), Swift.max(ldb, 1), Float(beta.double),
                               UnsafeMutableRawPointer(py).assumingMemoryBound(to: Float.self), Int32(n))
                } else {
                    blas.dgemm(BLAS.rowMajor, ta, tb, Int32(rows), Int32(n), Int32(k), alpha.double,
                               UnsafeRawPointer(pa).assumingMemoryBound(to: Double.self), Swift.max(lda, 1),
                               UnsafeRawPointer(pb).assumingMemoryBound(to: Double.self), Swift.max(ldb, 1), beta.double,
                               UnsafeMutableRawPointer(py).assumingMemoryBound(to: Double.self), Int32(n))
                }
            }
            if items == 1 || m * n * k < 1 << 18 { for it in 0..<items { work(it) } }
            else { Parallel.forRanges(items, grain: 1) { r in for it in r { work(it) } } }
            return
        }
        if T.self == Float.self, CPUBackend.usePackedGEMM, PackedGEMM.isAvailable {
            PackedGEMM.multiply(UnsafeRawPointer(a).assumingMemoryBound(to: Float.self), UnsafeRawPointer(b).assumingMemoryBound(to: Float.self),
                                UnsafeMutableRawPointer(y).assumingMemoryBound(to: Float.self), batch: batch, m: m, n: n, k: k,
                                transA: transA, transB: transB, strideA: strideA, strideB: strideB,
                                alpha: Float(alpha.double), beta: Float(beta.double))
            return
        }
        for i in 0..<batch {
            portableGemm(a + i * strideA, b + i * strideB, y + i * m * n, m: m, n: n, k: k,
                         transA: transA, transB: transB, alpha: alpha, beta: beta)
        }
    }

    /// The product without a BLAS where `PackedGEMM` does not run (float64, no AVX2): rows of the result in parallel, each built as a sum of scaled rows of B
    /// (a contiguous inner loop the compiler vectorises). Transposed operands are made contiguous first.
    static func portableGemm<T: CPUFloat>(_ a: UnsafeMutablePointer<T>, _ b: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>,
                                          m: Int, n: Int, k: Int, transA: Bool, transB: Bool, alpha: T, beta: T) {
        var bRows = b
        var bTmp: UnsafeMutablePointer<T>? = nil
        if transB {
            let t = UnsafeMutablePointer<T>.allocate(capacity: k * n)
            for r in 0..<n { for c in 0..<k { t[c * n + r] = b[r * k + c] } }
            bTmp = t
            bRows = t
        }
        defer { bTmp?.deallocate() }
        Parallel.forRanges(m, grain: Swift.max(1, 8192 / Swift.max(n * k / 64, 1))) { rows in
            let acc = UnsafeMutablePointer<T>.allocate(capacity: n)
            defer { acc.deallocate() }
            for i in rows {
                acc.update(repeating: 0, count: n)
                for p in 0..<k {
                    let av = transA ? a[p * m + i] : a[i * k + p]
                    if av == 0 { continue }
                    let br = bRows + p * n
                    for j in 0..<n { acc[j] += av * br[j] }
                }
                let yr = y + i * n
                if beta == 0 { for j in 0..<n { yr[j] = alpha * acc[j] } }
                else { for j in 0..<n { yr[j] = alpha * acc[j] + beta * yr[j] } }
            }
        }
    }

    static func softmax<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { r in
            for row in r {
                let px = x + row * cols, py = y + row * cols
                let m = maxContiguous(px, cols)
                var s = T(0)
                for i in 0..<cols { let e = T.fexp(px[i] - m); py[i] = e; s += e }
                let inv = 1 / s
                for i in 0..<cols { py[i] *= inv }
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

    static func scaledSum<T: CPUFloat>(_ a: UnsafeMutablePointer<T>, _ s: UnsafeMutablePointer<T>, _ b: UnsafeMutablePointer<T>?,
                                       _ t: UnsafeMutablePointer<T>?, _ c: UnsafeMutablePointer<T>?, _ cFull: Bool,
                                       _ y: UnsafeMutablePointer<T>, _ batch: Int, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(batch * rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { range in
            for row in range {
                let o = row * cols, so = (row / rows) * cols, co = cFull ? o : so
                for i in 0..<cols {
                    var v = a[o + i] * s[so + i]
                    if let b, let t { v += b[o + i] * t[so + i] }
                    if let c { v += c[co + i] }
                    y[o + i] = v
                }
            }
        }
    }

    static func rowSumsOfProducts<T: CPUFloat>(_ g: UnsafeMutablePointer<T>, _ xs: [UnsafeMutablePointer<T>?],
                                               _ outs: [UnsafeMutablePointer<T>], _ batch: Int, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(batch, grain: 1) { range in
            for bi in range {
                for (x, out) in zip(xs, outs) {
                    let po = out + bi * cols
                    for i in 0..<cols { po[i] = 0 }
                    for r in 0..<rows {
                        let o = (bi * rows + r) * cols
                        if let x { for i in 0..<cols { po[i] += g[o + i] * x[o + i] } }
                        else { for i in 0..<cols { po[i] += g[o + i] } }
                    }
                }
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
}
