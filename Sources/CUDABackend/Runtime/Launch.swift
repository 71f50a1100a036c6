#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// Kernel arguments packed into the backend's argument buffer (cuLaunchKernel's kernelParams), in the order of
/// the kernel's parameters. The generated launch methods fill it; the C types map as `SwiftArgument` says.
struct KernelArguments {
    let raw: UnsafeMutableRawPointer
    let pointers: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    var used = 0, count = 0

    @inline(__always) mutating func add<T>(_ v: T) {
        let a = MemoryLayout<T>.alignment
        used = (used + a - 1) / a * a
        (raw + used).storeBytes(of: v, as: T.self)
        pointers[count] = raw + used
        count += 1
        used += MemoryLayout<T>.stride
    }
    /// `i64`.
    @inline(__always) mutating func int64(_ v: Int) { add(Int64(v)) }
    /// `int`.
    @inline(__always) mutating func int32(_ v: Int) { add(Int32(v)) }
    /// Any device pointer.
    @inline(__always) mutating func pointer(_ p: DevicePointer) { add(p) }
    /// `scalar_t`: the module's element type.
    @inline(__always) mutating func scalar(_ v: Double, _ dtype: DType) {
        if dtype == .float32 { add(Float(v)) } else { add(v) }
    }
    /// common.cuh's View2: shape[8], s0[8], s1[8] (int64), ndim (int32), padded to 200 bytes.
    mutating func view(_ v: KernelView) {
        used = (used + 7) / 8 * 8
        let start = raw + used
        let w = start.assumingMemoryBound(to: Int64.self)
        for i in 0..<8 {
            w[i] = Int64(i < v.shape.count ? v.shape[i] : 1)
            w[8 + i] = Int64(i < v.strides0.count ? v.strides0[i] : 0)
            w[16 + i] = Int64(i < v.strides1.count ? v.strides1[i] : 0)
        }
        (start + 192).storeBytes(of: Int32(v.shape.count), as: Int32.self)
        (start + 196).storeBytes(of: Int32(0), as: Int32.self)
        pointers[count] = start
        count += 1
        used += 200
    }
    /// Convolution.cu's Win: eight int32 fields.
    mutating func window(_ w: KernelWindow) {
        let g = w.window
        add((Int32(g.kernelHeight), Int32(g.kernelWidth), Int32(g.strideY), Int32(g.strideX),
             Int32(g.padY), Int32(g.padX), Int32(w.outHeight), Int32(w.outWidth)))
    }
}

/// Up to 8 collapsed axes and the strides of two views over them (the kernels' View2).
struct KernelView {
    var shape: [Int], strides0: [Int], strides1: [Int]
}

/// A sliding window and the output size it gives (the kernels' Win).
struct KernelWindow {
    var window: Window2D
    var outHeight: Int, outWidth: Int
}

extension CUDABackend {
    @inline(__always) func ensureCurrent() {
        var current: Handle? = nil
        _ = driver.cuCtxGetCurrent(&current)
        if current != context { driver.must(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent") }
    }

    /// Queues `function` on the stream; `fill` adds its arguments in order (the generated launch methods call this).
    @inline(__always)
    func launch(_ function: KernelFunction, grid: (Int, Int), block: (Int, Int), shared: Int,
                _ fill: (inout KernelArguments) -> Void) {
        launchMutex.lock()
        defer { launchMutex.unlock() }
        ensureCurrent()
        var args = KernelArguments(raw: argumentBuffer, pointers: argumentPointers)
        fill(&args)
        let started = profiler?.begin(stream)
        let r = driver.cuLaunchKernel(function.handle, UInt32(grid.0), UInt32(grid.1), 1, UInt32(block.0), UInt32(block.1), 1,
                                      UInt32(shared), stream, argumentPointers, nil)
        if r != 0 { fatalError("CUDA driver: cuLaunchKernel(\(function.name)) failed: \(driver.describe(r))") }
        if let started {
            let name = profiler!.byGrid ? "\(function.name) [\(grid.0)x\(grid.1)]\(profileTag.map { " " + $0 } ?? "")" : function.name
            profiler!.end(started, name, stream)
            profileTag = nil
        }
        if syncEveryLaunch {
            let s = driver.cuStreamSynchronize(stream)
            if s != 0 { fatalError("CUDA kernel \(function.name) failed: \(driver.describe(s))") }
        }
    }

    /// Blocks for a grid-stride loop over `work` items with `threads` per block (at most one full wave of 8
    /// blocks of 256 per multiprocessor; the loop covers the rest).
    @inline(__always) func blocks(_ work: Int, threads: Int = 256) -> Int {
        Swift.max(1, Swift.min((work + threads - 1) / threads, maxBlocks * 256 / threads))
    }

    /// Work items of a kernel that takes `n` elements 16 bytes at a time (the kernels' Pack): the packs and the tail.
    @inline(__always) func packs(_ n: Int, _ dtype: DType) -> Int { n / (16 / dtype.byteSize) + n % (16 / dtype.byteSize) }

    /// Whether 32-bit indices cover `n` items and every offset of each view (shape, strides).
    func fits32(_ n: Int, _ shape: [Int], _ views: [[Int]]) -> Bool {
        guard n < 1 << 30 else { return false }
        for s in views {
            var span = 0
            for d in shape.indices { span += (shape[d] - 1) * Swift.abs(s[d]) }
            if span >= 1 << 30 { return false }
        }
        return true
    }

    /// Grid of the row kernels (a warp per row, 8 rows per block): rows too few to fill the GPU with warps are cut
    /// into chunks of at least 1024 columns along grid.y (a position embedding added to 128 rows of 98304 values
    /// took 1.1 ms on 128 warps).
    func rowGrid(rows: Int, inner: Int) -> (blocksX: Int, chunks: Int, chunk: Int) {
        let blocksX = Swift.min((rows + 7) / 8, maxBlocks * 4), wantedWarps = maxBlocks * 8
        let chunks = rows >= wantedWarps ? 1 : Swift.max(1, Swift.min((inner + 1023) / 1024, (wantedWarps + rows - 1) / rows, 65535))
        return (blocksX, chunks, (inner + chunks - 1) / chunks)
    }

    @inline(__always) func cuda(_ s: Storage) -> CUDAStorage {
        guard s.backend === self else { preconditionFailure("a \(s.backend.name) tensor was given to the \(name) backend") }
        return unsafeDowncast(s, to: CUDAStorage.self)
    }

    @inline(__always) func addr(_ s: Storage) -> DevicePointer {
        let c = cuda(s)
        precondition(!c.operandCopyOnly, "a kernel was given a tensor kept only as its bf16 product operand")
        return c.address
    }

    /// The address of an optional storage; 0 (a null pointer for the kernel) for none.
    @inline(__always) func addr(_ s: Storage?) -> DevicePointer { s.map { addr($0) } ?? 0 }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
