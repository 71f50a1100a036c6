#if canImport(Glibc)
import Glibc
#endif

final class CPUStorage: Storage {
    let raw: UnsafeMutableRawPointer
    /// For a view (`views(of:offsets:counts:)`): the storage whose memory it aliases, kept alive by it.
    private let base: CPUStorage?

    init(count: Int, dtype: DType, backend: CPUBackend) {
        raw = BufferCache.shared.take(Swift.max(count, 1) * dtype.byteSize)
        backend.liveBytes.add(count * dtype.byteSize)
        base = nil
        super.init(count: count, dtype: dtype, backend: backend)
    }

    /// `count` elements of `base` from element `offset` on.
    init(viewOf base: CPUStorage, offset: Int, count: Int) {
        precondition(offset >= 0 && offset + count <= base.count, "a view of \(count) from \(offset) outside \(base.count) elements")
        raw = base.raw + offset * base.dtype.byteSize
        self.base = base
        super.init(count: count, dtype: base.dtype, backend: base.backend)
    }

    deinit {
        guard base == nil else { return }
        BufferCache.shared.give(raw, bytes: Swift.max(count, 1) * dtype.byteSize)
        (backend as! CPUBackend).liveBytes.remove(count * dtype.byteSize)
    }

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

/// Bytes held by live tensors and the most they have been since the last reset (`MemoryAccounting`). Storages die on
/// any thread, hence the lock.
final class LiveBytes: @unchecked Sendable {
    private var current = 0
    private var peak = 0
    private var lock = pthread_mutex_t()

    init() { pthread_mutex_init(&lock, nil) }

    var figures: (current: Int, peak: Int) {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return (current, peak)
    }

    func add(_ bytes: Int) {
        pthread_mutex_lock(&lock)
        current += bytes
        peak = Swift.max(peak, current)
        pthread_mutex_unlock(&lock)
    }

    func remove(_ bytes: Int) {
        pthread_mutex_lock(&lock)
        current -= bytes
        pthread_mutex_unlock(&lock)
    }

    func resetPeak() {
        pthread_mutex_lock(&lock)
        peak = current
        pthread_mutex_unlock(&lock)
    }
}

/// The CPU backend: plain Swift loops (vectorised by the compiler, split over cores when large) and a
/// run-time BLAS for matrix products. Every kernel exists for float32 and float64.
public final class CPUBackend: Backend, MemoryAccounting {
    public static let shared = CPUBackend()
    public var name: String { "cpu" }

    /// Which BLAS the float32 matrix products use: the library's name, or which built-in kernel runs.
    public static var blasName: String {
        if useBLAS, let library = BLAS.library { return library.name }
        return AVX2.enabled ? "built-in AVX2/FMA" : "built-in"
    }
    /// A line for the commands whose speed depends on it (demo, bench), nil where a BLAS is used or switched off
    /// on purpose. Not printed by the library: notes before an error would break the one-line error promise.
    public static var blasNotice: String? {
        guard useBLAS, BLAS.library == nil, getenv("TVM_NO_BLAS") == nil else { return nil }
        return "note: no OpenBLAS found; the matrix products use the \(blasName) kernel"
    }
    /// Set to false to use the built-in matrix product even where a BLAS was found (tests, comparisons).
    nonisolated(unsafe) public static var useBLAS = true
    /// Set to false to use the portable built-in kernels (the matrix product without a BLAS, the activations)
    /// instead of the AVX2/FMA ones (tests, comparisons).
    nonisolated(unsafe) public static var useAVX2 = true

    public func allocate(_ count: Int, _ dtype: DType) -> Storage { CPUStorage(count: count, dtype: dtype, backend: self) }

    let liveBytes = LiveBytes()
    public var currentBytes: Int { liveBytes.figures.current }
    public var peakBytes: Int { liveBytes.figures.peak }
    public func resetPeakBytes() { liveBytes.resetPeak() }

    @inline(__always) func cpu(_ s: Storage) -> CPUStorage {
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
    func typed(_ s: Storage, f32: () -> Void, f64: () -> Void) {
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

    public func synchronize() {}
}
