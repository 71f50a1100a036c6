#if canImport(Glibc)
import Glibc
#endif

final class CPUStorage: Storage {
    let raw: UnsafeMutableRawPointer

    init(count: Int, dtype: DType, backend: CPUBackend) {
        raw = BufferCache.shared.take(Swift.max(count, 1) * dtype.byteSize)
        super.init(count: count, dtype: dtype, backend: backend)
    }

    deinit { BufferCache.shared.give(raw, bytes: Swift.max(count, 1) * dtype.byteSize) }

    @inline(__always) func ptr<T>(_: T.Type) -> UnsafeMutablePointer<T> { raw.assumingMemoryBound(to: T.self) }
}

/// Freed buffers kept by size for reuse: a training step allocates the same sizes every time, and fresh
/// large allocations cost page faults on every first touch (measured: about a sixth of a step's time).
final class BufferCache: @unchecked Sendable {
    static let shared = BufferCache()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var cachedBytes = 0
    private let limit = 1 << 30
    private var lock = pthread_mutex_t()

    init() { pthread_mutex_init(&lock, nil) }

    func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        pthread_mutex_lock(&lock)
        if let p = free[bytes]?.popLast() {
            cachedBytes -= bytes
            pthread_mutex_unlock(&lock)
            return p
        }
        pthread_mutex_unlock(&lock)
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    func give(_ p: UnsafeMutableRawPointer, bytes: Int) {
        pthread_mutex_lock(&lock)
        if cachedBytes + bytes <= limit {
            free[bytes, default: []].append(p)
            cachedBytes += bytes
            pthread_mutex_unlock(&lock)
        } else {
            pthread_mutex_unlock(&lock)
            p.deallocate()
        }
    }
}

/// The CPU backend: plain Swift loops (vectorised by the compiler, split over cores when large) and a
/// run-time BLAS for matrix products. Every kernel exists for float32 and float64.
public final class CPUBackend: Backend {
    public static let shared = CPUBackend()
    public var name: String { "cpu" }

    /// Which BLAS the float32 matrix products use: the library's name, or which built-in kernel runs.
    public static var blasName: String {
        if useBLAS, let library = BLAS.library { return library.name }
        return usePackedGEMM && PackedGEMM.isAvailable ? "built-in AVX2/FMA" : "built-in"
    }
    /// A line for the commands whose speed depends on it (demo, bench), nil where a BLAS is used or switched off
    /// on purpose. Not printed by the library: notes before an error would break the one-line error promise.
    public static var blasNotice: String? {
        guard useBLAS, BLAS.library == nil, getenv("TVM_NO_BLAS") == nil else { return nil }
        return "note: no OpenBLAS found; the matrix products use the \(blasName) kernel"
    }
    /// Set to false to use the built-in matrix product even where a BLAS was found (tests, comparisons).
    nonisolated(unsafe) public static var useBLAS = true
    /// Set to false to use the portable built-in product instead of the packed AVX2/FMA one (tests, comparisons).
    nonisolated(unsafe) public static var usePackedGEMM = true

    public func allocate(_ count: Int, _ dtype: DType) -> Storage { CPUStorage(count: count, dtype: dtype, backend: self) }

    @inline(__always) private func cpu(_ s: Storage) -> CPUStorage {
        guard let c = s as? CPUStorage else { preconditionFailure("a \(s.backend.name) tensor was given to the CPU backend") }
        return c
    }

    public func upload(_ values: [Double], dtype: DType) -> Storage {
        let s = CPUStorage(count: values.count, dtype: dtype, backend: self)
        if dtype == .float64 {
            values.withUnsafeBufferPointer { s.ptr(Double.self).update(from: $0.baseAddress!, count: values.count) }
        } else {
            let p = s.ptr(Float.self)
            for i in values.indices { p[i] = Float(values[i]) }
        }
        return s
    }

    public func upload(_ values: [Float]) -> Storage {
        let s = CPUStorage(count: values.count, dtype: .float32, backend: self)
        values.withUnsafeBufferPointer { s.ptr(Float.self).update(from: $0.baseAddress!, count: values.count) }
        return s
    }

    public func download(_ s: Storage) -> [Double] {
        let c = cpu(s)
        if c.dtype == .float64 { return Array(UnsafeBufferPointer(start: c.ptr(Double.self), count: c.count)) }
        return UnsafeBufferPointer(start: c.ptr(Float.self), count: c.count).map(Double.init)
    }

    public func downloadFloats(_ s: Storage) -> [Float] {
        let c = cpu(s)
        if c.dtype == .float32 { return Array(UnsafeBufferPointer(start: c.ptr(Float.self), count: c.count)) }
        return UnsafeBufferPointer(start: c.ptr(Double.self), count: c.count).map(Float.init)
    }

    public func fill(_ s: Storage, value: Double) {
        let c = cpu(s)
        if c.dtype == .float32 { c.ptr(Float.self).update(repeating: Float(value), count: c.count) }
        else { c.ptr(Double.self).update(repeating: value, count: c.count) }
    }

    public func convert(_ x: Storage, to dtype: DType) -> Storage {
        let c = cpu(x), y = CPUStorage(count: x.count, dtype: dtype, backend: self)
        switch (x.dtype, dtype) {
        case (.float32, .float64): for i in 0..<c.count { y.ptr(Double.self)[i] = Double(c.ptr(Float.self)[i]) }
        case (.float64, .float32): for i in 0..<c.count { y.ptr(Float.self)[i] = Float(c.ptr(Double.self)[i]) }
        default: y.raw.copyMemory(from: c.raw, byteCount: c.count * dtype.byteSize)
        }
        return y
    }

    /// Runs `body` with the element type of `s`.
    @inline(__always)
    private func typed(_ s: Storage, f32: () -> Void, f64: () -> Void) {
        if s.dtype == .float32 { f32() } else { f64() }
    }

    public func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage) {
        typed(x, f32: { Kernels.unary(op, cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), x.count) },
              f64: { Kernels.unary(op, cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), x.count) })
    }

    public func affine(_ x: Storage, _ y: Storage, a: Double, b: Double) {
        typed(x, f32: { Kernels.affine(cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), x.count, Float(a), Float(b)) },
              f64: { Kernels.affine(cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), x.count, a, b) })
    }

    public func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView,
                       _ y: Storage, shape: [Int]) {
        typed(a, f32: { Kernels.binary(op, cpu(a).ptr(Float.self), av, cpu(b).ptr(Float.self), bv, cpu(y).ptr(Float.self), shape) },
              f64: { Kernels.binary(op, cpu(a).ptr(Double.self), av, cpu(b).ptr(Double.self), bv, cpu(y).ptr(Double.self), shape) })
    }

    public func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let c = cpu(cond).ptr(T.self), pa = cpu(a).ptr(T.self), pb = cpu(b).ptr(T.self), py = cpu(y).ptr(T.self)
            Parallel.forRanges(y.count) { r in for i in r { py[i] = c[i] != 0 ? pa[i] : pb[i] } }
        }
        typed(a, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner: Int) {
        typed(x, f32: { Kernels.reduce(op, cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), outer, n, inner) },
              f64: { Kernels.reduce(op, cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), outer, n, inner) })
    }

    public func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int]) {
        typed(x, f32: { Kernels.copy(cpu(x).ptr(Float.self), xv, cpu(y).ptr(Float.self), yv, shape) },
              f64: { Kernels.copy(cpu(x).ptr(Double.self), xv, cpu(y).ptr(Double.self), yv, shape) })
    }

    public func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int,
                       transA: Bool, transB: Bool, strideA: Int, strideB: Int, alpha: Double, beta: Double) {
        typed(a, f32: {
            Kernels.gemm(cpu(a).ptr(Float.self), cpu(b).ptr(Float.self), cpu(y).ptr(Float.self), batch: batch, m: m, n: n, k: k,
                         transA: transA, transB: transB, strideA: strideA, strideB: strideB, alpha: Float(alpha), beta: Float(beta))
        }, f64: {
            Kernels.gemm(cpu(a).ptr(Double.self), cpu(b).ptr(Double.self), cpu(y).ptr(Double.self), batch: batch, m: m, n: n, k: k,
                         transA: transA, transB: transB, strideA: strideA, strideB: strideB, alpha: alpha, beta: beta)
        })
    }

    public func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int) {
        typed(x, f32: { Kernels.softmax(cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), rows, cols) },
              f64: { Kernels.softmax(cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), rows, cols) })
    }

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

    public func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                          batch: Int, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.scaledSum(cpu(a).ptr(T.self), cpu(s).ptr(T.self), b.map { cpu($0).ptr(T.self) }, t.map { cpu($0).ptr(T.self) },
                              c.map { cpu($0).ptr(T.self) }, cFull, cpu(y).ptr(T.self), batch, rows, cols)
        }
        typed(a, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rowSumsOfProducts(cpu(g).ptr(T.self), xs.map { $0.map { cpu($0).ptr(T.self) } }, outs.map { cpu($0).ptr(T.self) },
                                      batch, rows, cols)
        }
        typed(g, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            let t = cpu(table).ptr(T.self), idx = cpu(index).ptr(T.self), py = cpu(y).ptr(T.self)
            let tableRows = table.count / Swift.max(cols, 1)
            for r in 0..<rows {
                let i = Int(idx[r])
                precondition(i >= 0 && i < tableRows, "gather index \(i) out of range 0..<\(tableRows)")
                (py + r * cols).update(from: t + i * cols, count: cols)
            }
        }
        typed(table, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            let px = cpu(x).ptr(T.self), idx = cpu(index).ptr(T.self), t = cpu(table).ptr(T.self)
            let tableRows = table.count / Swift.max(cols, 1)
            for r in 0..<rows {
                let i = Int(idx[r])
                precondition(i >= 0 && i < tableRows, "scatter index \(i) out of range 0..<\(tableRows)")
                for c in 0..<cols { t[i * cols + c] += px[r * cols + c] }
            }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64) {
        func run<T: CPUFloat>(_: T.Type) {
            let p = cpu(y).ptr(T.self), n = y.count
            let blocks = (n + 3) / 4
            Parallel.forRanges(blocks, grain: 4096) { r in
                for blk in r {
                    let b = Philox.block(seed: seed, counter: counter &+ UInt64(blk))
                    var v: (Float, Float, Float, Float)
                    if normal {
                        let (z0, z1) = Philox.boxMuller(b.0, b.1), (z2, z3) = Philox.boxMuller(b.2, b.3)
                        v = (z0, z1, z2, z3)
                    } else {
                        v = (Philox.unit(b.0), Philox.unit(b.1), Philox.unit(b.2), Philox.unit(b.3))
                    }
                    let base = blk * 4
                    p[base] = T.from(v.0)
                    if base + 1 < n { p[base + 1] = T.from(v.1) }
                    if base + 2 < n { p[base + 2] = T.from(v.2) }
                    if base + 3 < n { p[base + 3] = T.from(v.3) }
                }
            }
        }
        typed(y, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                          o: Storage, to: Storage?, lse: Storage, geometry: AttentionGeometry) {
        func p<T: CPUFloat>(_ s: Storage?, _: T.Type) -> UnsafeMutablePointer<T>? { s.map { cpu($0).ptr(T.self) } }
        func run<T: CPUFloat>(_: T.Type) {
            AttentionKernels.forward(q: p(q, T.self)!, k: p(k, T.self)!, v: p(v, T.self)!,
                                     tq: p(tq, T.self), tk: p(tk, T.self), tv: p(tv, T.self),
                                     o: p(o, T.self)!, to: p(to, T.self), lse: p(lse, T.self)!, geometry)
        }
        typed(q, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                                  o: Storage, to: Storage?, lse: Storage, go: Storage?, gto: Storage?,
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

    public func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
                      eps: Double, weightDecay: Double, step: Int, gradScale: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            let pp = cpu(p).ptr(T.self), pg = cpu(g).ptr(T.self), pm = cpu(m).ptr(T.self), pv = cpu(v).ptr(T.self)
            // The same arithmetic as torch.optim.AdamW (decoupled decay, bias corrections folded as it does).
            let bc1 = 1 - Glibc.pow(beta1, Double(step)), bc2 = 1 - Glibc.pow(beta2, Double(step))
            let stepSize = T(lr / bc1), sqrtBc2 = T(bc2.squareRoot())
            let decay = T(1 - lr * weightDecay), b1 = T(beta1), b2 = T(beta2), e = T(eps), gs = T(gradScale)
            Parallel.forRanges(p.count) { r in
                for i in r {
                    let gi = pg[i] * gs
                    let mi = b1 * pm[i] + (1 - b1) * gi
                    let vi = b2 * pv[i] + (1 - b2) * gi * gi
                    pm[i] = mi
                    pv[i] = vi
                    pp[i] = pp[i] * decay - stepSize * mi / (T.fsqrt(vi) / sqrtBc2 + e)
                }
            }
        }
        typed(p, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func emaUpdate(ema: Storage, p: Storage, decay: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            let pe = cpu(ema).ptr(T.self), pp = cpu(p).ptr(T.self), d = T(decay)
            Parallel.forRanges(p.count) { r in for i in r { pe[i] = pp[i] + d * (pe[i] - pp[i]) } }
        }
        typed(p, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func synchronize() {}

    public func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let px = cpu(x).ptr(T.self), pt = cpu(t).ptr(T.self), py = cpu(y).ptr(T.self), pty = cpu(ty).ptr(T.self)
            if op == .silu { Kernels.valueAndSlope(SiluPair.self, px, pt, py, pty, x.count) }
            else { Kernels.valueAndSlope(GeluPair.self, px, pt, py, pty, x.count) }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                              _ gx: Storage, _ gt: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let p = { (s: Storage?) in s.map { self.cpu($0).ptr(T.self) } }
            if op == .silu {
                Kernels.tangentBackward(SiluPair.self, p(x)!, p(t)!, p(gy), p(gty), p(gx)!, p(gt)!, x.count)
            } else {
                Kernels.tangentBackward(GeluPair.self, p(x)!, p(t)!, p(gy), p(gty), p(gx)!, p(gt)!, x.count)
            }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let px = cpu(x).ptr(T.self), pg = cpu(g).ptr(T.self), pgx = cpu(gx).ptr(T.self)
            if op == .silu { Kernels.slopeTimes(SiluPair.self, px, pg, pgx, x.count) }
            else { Kernels.slopeTimes(GeluPair.self, px, pg, pgx, x.count) }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}
