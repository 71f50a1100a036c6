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
        case .log: map(Log.self, x, y, n, grain: libmGrain)
        case .sin: map(Sin.self, x, y, n, grain: libmGrain)
        case .cos: map(Cos.self, x, y, n, grain: libmGrain)
        case .tanh: map(Tanh.self, x, y, n, grain: libmGrain)
        case .sigmoid: map(Sigmoid.self, x, y, n)
        case .silu: activationValue(SiluPair.self, x, y, n)
        case .siluD1: map(SiluD1.self, x, y, n)
        case .siluD2: map(SiluD2.self, x, y, n)
        case .gelu: activationValue(GeluPair.self, x, y, n)
        case .geluD1: map(GeluD1.self, x, y, n)
        case .geluD2: map(GeluD2.self, x, y, n)
        case .isFinite: map(IsFinite.self, x, y, n)
        }
    }

    /// One specialised loop per function type: the call inlines and the loop vectorises.
    static func map<F: UnaryFunction, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ n: Int,
                                                   grain: Int = 16_384) {
        Parallel.forRanges(n, grain: grain) { r in for i in r { y[i] = F.apply(x[i]) } }
    }

    /// The split of the functions that call libm per element (about ten times the cost of a vectorised one): the
    /// sinusoidal time features of a batch of 1024 are 16k elements.
    static let libmGrain = 2048

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
            /// One single-threaded BLAS call: `rows` rows of a result from `depth` of the inner dimension.
            func call(_ rows: Int, _ depth: Int, _ pa: UnsafeMutablePointer<T>, _ pb: UnsafeMutablePointer<T>,
                      _ py: UnsafeMutablePointer<T>, beta: T) {
                if T.self == Float.self {
                    blas.sgemm(BLAS.rowMajor, ta, tb, Int32(rows), Int32(n), Int32(depth), Float(alpha.double),
                               UnsafeRawPointer(pa).assumingMemoryBound(to: Float.self), Swift.max(lda, 1),
                               UnsafeRawPointer(pb).assumingMemoryBound(to: Float.self), Swift.max(ldb, 1), Float(beta.double),
                               UnsafeMutableRawPointer(py).assumingMemoryBound(to: Float.self), Int32(n))
                } else {
                    blas.dgemm(BLAS.rowMajor, ta, tb, Int32(rows), Int32(n), Int32(depth), alpha.double,
                               UnsafeRawPointer(pa).assumingMemoryBound(to: Double.self), Swift.max(lda, 1),
                               UnsafeRawPointer(pb).assumingMemoryBound(to: Double.self), Swift.max(ldb, 1), beta.double,
                               UnsafeMutableRawPointer(py).assumingMemoryBound(to: Double.self), Int32(n))
                }
            }
            let large = m * n * k >= 1 << 18
            if batch == 1 && large && Parallel.cores > 1 && k >= 2 * m && k >= 128 {
                // Few result rows from a long inner dimension (a weight's gradient, summed over a batch): each core
                // takes a share of the depth, so that each packs its own part of both operands, where splitting
                // the rows would have every core pack all of B. The shares past the first go to scratch results,
                // added at the end.
                let parts = Swift.min(Parallel.cores, k / 64), per = (k + parts - 1) / parts
                let scratchBytes = (parts - 1) * m * n * MemoryLayout<T>.stride
                let scratch = BufferCache.shared.take(scratchBytes).assumingMemoryBound(to: T.self)
                defer { BufferCache.shared.give(UnsafeMutableRawPointer(scratch), bytes: scratchBytes) }
                Parallel.forRanges(parts, grain: 1) { r in
                    for part in r {
                        let p0 = part * per, depth = Swift.min(per, k - p0)
                        let pa = a + (transA ? p0 * m : p0), pb = b + (transB ? p0 : p0 * n)
                        if part == 0 { call(m, depth, pa, pb, y, beta: beta) }
                        else { call(m, depth, pa, pb, scratch + (part - 1) * m * n, beta: 0) }
                    }
                }
                Parallel.forRanges(m * n) { r in
                    for part in 1..<parts {
                        let partial = scratch + (part - 1) * m * n
                        for i in r { y[i] += partial[i] }
                    }
                }
                return
            }
            // Work items are (batch entry, block of result rows); each runs a single-threaded BLAS call.
            let rowBlocks = batch >= Parallel.cores || !large ? 1 : Swift.min(Parallel.cores, Swift.max(1, m / 16))
            let rowsPer = (m + rowBlocks - 1) / rowBlocks
            let items = batch * rowBlocks
            let work = { (item: Int) in
                let i = item / rowBlocks, r0 = (item % rowBlocks) * rowsPer
                let rows = Swift.min(rowsPer, m - r0)
                guard rows > 0 else { return }
                // Row block r0 of op(A): rows of A, or columns when A is transposed.
                call(rows, k, a + i * strideA + (transA ? r0 : r0 * k), b + i * strideB, y + i * m * n + r0 * n, beta: beta)
            }
            if items == 1 || !large { for it in 0..<items { work(it) } }
            else { Parallel.forRanges(items, grain: 1) { r in for it in r { work(it) } } }
            return
        }
        if T.self == Float.self, AVX2.enabled {
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
}
