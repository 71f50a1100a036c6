#if canImport(Glibc)
import Glibc
#endif
import TensorCore

// Memory, transfers, conversions, synchronisation and timing.
extension CUDABackend: MemoryAccounting {
    public func allocate(_ count: Int, _ dtype: DType) -> Storage {
        let bytes = count * dtype.byteSize
        if bytes == 0 {
            return CUDAStorage(count: count, dtype: dtype, backend: self, address: 0, blockBytes: 0, allocator: nil)
        }
        let (p, size) = allocateBlock(bytes)
        return CUDAStorage(count: count, dtype: dtype, backend: self, address: p, blockBytes: size, allocator: allocator)
    }

    /// A block of at least `bytes` for a tensor, NaN-filled with `poisonAllocations`.
    func allocateBlock(_ bytes: Int) -> (address: DevicePointer, blockBytes: Int) {
        ensureCurrent()
        let (p, size) = allocator.allocate(bytes)
        if poisonAllocations {
            // 0x7FF87FF8 repeated is a NaN as float32, as float64 and as bfloat16.
            driver.must(driver.cuMemsetD32Async(p, 0x7FF8_7FF8, size / 4, stream), "cuMemsetD32Async(poison)")
        }
        return (p, size)
    }

    /// Bytes held by live tensors (rounded to size classes).
    public var currentBytes: Int { allocator.currentBytes }
    /// The most `currentBytes` has been since the start or `resetPeakBytes()`.
    public var peakBytes: Int { allocator.peakBytes }
    /// Bytes taken from the driver (live plus cached).
    public var reservedBytes: Int { allocator.reservedBytes }
    /// cuMemAlloc calls made so far (flat after warm-up).
    public var driverAllocations: Int { allocator.driverAllocations }
    public func resetPeakBytes() { allocator.resetPeak() }
    /// Gives cached blocks back to the driver.
    public func emptyCache() {
        ensureCurrent()
        allocator.releaseCached()
    }

    func copyToDevice(_ dst: DevicePointer, _ src: UnsafeRawPointer?, _ bytes: Int) {
        guard bytes > 0, let src else { return }
        ensureCurrent()
        driver.must(driver.cuMemcpyHtoDAsync(dst, src, bytes, stream), "cuMemcpyHtoDAsync_v2(\(bytes) bytes)")
    }

    func copyToHost(_ dst: UnsafeMutableRawPointer?, _ src: DevicePointer, _ bytes: Int) {
        hostReads += 1
        ensureCurrent()
        if bytes > 0, let dst {
            driver.must(driver.cuMemcpyDtoHAsync(dst, src, bytes, stream), "cuMemcpyDtoHAsync_v2(\(bytes) bytes)")
        }
        synchronize()
    }

    public func upload(_ values: [Double], dtype: DType) -> Storage {
        let s = allocate(values.count, dtype)
        if dtype == .float64 {
            values.withUnsafeBytes { copyToDevice(addr(s), $0.baseAddress, $0.count) }
        } else {
            let f = values.map { Float($0) }
            f.withUnsafeBytes { copyToDevice(addr(s), $0.baseAddress, $0.count) }
        }
        return s
    }

    public func upload(_ values: [Float]) -> Storage {
        let s = allocate(values.count, .float32)
        values.withUnsafeBytes { copyToDevice(addr(s), $0.baseAddress, $0.count) }
        return s
    }

    public func download(_ s: Storage) -> [Double] {
        if s.dtype == .float64 {
            var out = [Double](repeating: 0, count: s.count)
            out.withUnsafeMutableBytes { copyToHost($0.baseAddress, addr(s), $0.count) }
            return out
        }
        return downloadFloats(s).map(Double.init)
    }

    public func downloadFloats(_ s: Storage) -> [Float] {
        if s.dtype == .float32 {
            var out = [Float](repeating: 0, count: s.count)
            out.withUnsafeMutableBytes { copyToHost($0.baseAddress, addr(s), $0.count) }
            return out
        }
        return download(s).map { Float($0) }
    }

    public func fill(_ s: Storage, value: Double) {
        let n = s.count
        guard n > 0 else { return }
        forgetBF16Copy(of: s)
        ensureCurrent()
        if s.dtype == .float32 {
            driver.must(driver.cuMemsetD32Async(addr(s), Float(value).bitPattern, n, stream), "cuMemsetD32Async")
        } else if value.bitPattern == 0 {
            driver.must(driver.cuMemsetD8Async(addr(s), 0, n * 8, stream), "cuMemsetD8Async")
        } else {
            kernels(ElementwiseKernels.self, .float64).fill.launch(on: self, grid: (blocks(n), 1), y: addr(s), n: n, v: value)
        }
    }

    public func convert(_ x: Storage, to dtype: DType) -> Storage {
        let y = allocate(x.count, dtype)
        let n = x.count
        guard n > 0 else { return y }
        if x.dtype == dtype {
            ensureCurrent()
            driver.must(driver.cuMemcpyDtoDAsync(addr(y), addr(x), n * dtype.byteSize, stream), "cuMemcpyDtoDAsync_v2")
            return y
        }
        let k = kernels(ConversionKernels.self, .float32)
        if x.dtype == .float32 {
            k.convertF32F64.launch(on: self, grid: (blocks(n), 1), x: addr(x), y: addr(y), n: n)
        } else {
            k.convertF64F32.launch(on: self, grid: (blocks(n), 1), x: addr(x), y: addr(y), n: n)
        }
        return y
    }

    /// Waits for all queued work; reports an out-of-range row index seen by gatherRows / scatterAddRows.
    public func synchronize() {
        ensureCurrent()
        driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize (an earlier kernel failed; TVM_CUDA_SYNC=1 names it)")
        var flag: Int32 = 0
        driver.must(driver.cuMemcpyDtoHAsync(&flag, errorFlag, 4, stream), "cuMemcpyDtoHAsync_v2(error flag)")
        driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
        if flag != 0 {
            _ = driver.cuMemsetD8Async(errorFlag, 0, 4, stream)
            _ = driver.cuStreamSynchronize(stream)
            fatalError(flag == 1 ? "CUDA gatherRows: a row index was out of range (or not a number)"
                                 : "CUDA scatterAddRows: a row index was out of range (or not a number)")
        }
    }

    /// Device milliseconds and calls per kernel (matrix products by shape) since the last reset, largest first;
    /// nil unless TVM_CUDA_PROFILE=1.
    public func profileReport(reset: Bool = false) -> [(name: String, calls: Int, ms: Double)]? {
        guard let profiler else { return nil }
        let r = profiler.report()
        if reset { profiler.reset() }
        return r
    }

    /// Milliseconds of device time per call of `body` (CUDA events around `iterations` calls, after one
    /// warm-up call). `body` should only queue work.
    public func milliseconds(iterations: Int = 10, warmup: Int = 1, _ body: () -> Void) -> Double {
        ensureCurrent()
        for _ in 0..<warmup { body() }
        var e0: Handle? = nil, e1: Handle? = nil
        driver.must(driver.cuEventCreate(&e0, 0), "cuEventCreate")
        driver.must(driver.cuEventCreate(&e1, 0), "cuEventCreate")
        defer { _ = driver.cuEventDestroy(e0); _ = driver.cuEventDestroy(e1) }
        driver.must(driver.cuEventRecord(e0, stream), "cuEventRecord")
        for _ in 0..<iterations { body() }
        driver.must(driver.cuEventRecord(e1, stream), "cuEventRecord")
        driver.must(driver.cuEventSynchronize(e1), "cuEventSynchronize")
        var ms: Float = 0
        driver.must(driver.cuEventElapsedTime(&ms, e0, e1), "cuEventElapsedTime")
        return Double(ms) / Double(Swift.max(iterations, 1))
    }
}
