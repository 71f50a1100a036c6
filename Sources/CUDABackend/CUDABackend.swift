#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// The CUDA backend: TensorCore's kernels on an NVIDIA GPU.
///
/// Nothing CUDA-related is needed to build it: the driver (libcuda.so.1), NVRTC and cuBLAS are opened at run
/// time by `load()`, the kernels are CUDA C++ source in this module (KernelSource.swift) compiled by NVRTC for
/// the device's architecture once per process (and cached on disk), and matrix products go to cuBLAS.
/// All work is queued on one stream: no operation waits for the device except `download`, `synchronize`
/// and timing. Memory comes from a caching allocator (Allocator.swift).
///
/// Use: `let cuda = try CUDABackend.load(); let x = Tensor(values, shape: s, on: cuda.device)`.
/// The backend may be used from one thread at a time (storages may be released from any thread).
public final class CUDABackend: Backend {
    public var name: String { ordinal == 0 ? "cuda" : "cuda:\(ordinal)" }
    public var device: Device { Device(backend: self) }
    public let deviceName: String
    public let ordinal: Int
    public let computeCapability: (major: Int, minor: Int)
    public let multiprocessorCount: Int
    public let totalMemoryBytes: Int
    /// Let float32 matrix products use TF32 tensor cores (about 10 bits of mantissa in the products; off by default).
    public var allowTF32: Bool = false
    /// Float32 matrix products read bfloat16 copies of both operands (8 bits of mantissa) and accumulate and
    /// write float32, as PyTorch's bf16 autocast rounds a matmul's inputs: twice TF32's tensor-core rate. The
    /// flash-attention kernels (head dims 64 and 72) then round their operands (and the softmax weights) to
    /// bfloat16 too, as bf16 flash attention does; other head dims keep the float32 warp-per-row kernels. Takes
    /// precedence over `allowTF32`; storage, master weights and optimizer stay float32.
    public var bf16Products: Bool = false
    /// Float32 attention with head dims 64 and 72 (KernelSource.flashDims) takes the fused flash-attention kernels
    /// (tensor-core tiles, no seq x seq matrix in memory): 3xTF32 products (float32 accuracy) by default, single
    /// TF32 products with `allowTF32`, bfloat16 products with `bf16Products`. Off (TVM_CUDA_NO_FLASH=1, or false
    /// here): the warp-per-row kernels, which also serve every other head dim and float64.
    public var useFlashAttention: Bool = environment("TVM_CUDA_NO_FLASH") != "1"
    /// The register caps that let some 3xTF32 flash kernels run 3 blocks per multiprocessor (a few values
    /// spilled; see KernelSource.flashShape). false: their uncapped builds (2 blocks), for measurements.
    public var flashRegisterCaps = true
    /// Attention calls (forward or backward) that took the flash kernels (for tests).
    public private(set) var flashAttentionCalls = 0
    /// Shared memory one block may opt in to (bytes): the flash kernels need up to ~190 KB.
    public let maxSharedMemoryPerBlock: Int
    /// Fill every new allocation with NaN, so a kernel that leaves part of its output unwritten shows up in
    /// comparisons (for tests; TVM_CUDA_POISON=1 sets it).
    public var poisonAllocations: Bool = environment("TVM_CUDA_POISON") == "1"
    /// Linear layers add the bias in cuBLASLt's GEMM epilogues (linearGELU the GELU after it too) and sum the bias
    /// gradient in the weight gradient's; false (TVM_CUDA_NO_CUBLASLT=1 sets it), or where cuBLASLt was not found
    /// or has no algorithm for a product: a cuBLAS GEMM and a separate pass. For comparisons.
    public var useCUBLASLt: Bool = environment("TVM_CUDA_NO_CUBLASLT") != "1"
    /// Whether cuBLASLt was found (else linear layers always take the GEMM path).
    public var hasCUBLASLt: Bool { blasLt != nil }
    /// Products that went through cuBLASLt's epilogues (for tests).
    public private(set) var cublasLtCalls = 0
    /// linearGELU calls whose GELU ran in the product's epilogue rather than as a separate kernel (for tests).
    public private(set) var geluEpilogueCalls = 0
    /// Driver, NVRTC, cuBLAS and cuBLASLt versions, for logs.
    public let versions: String

    let driver: Driver
    let nvrtc: NVRTC
    let blas: CUBLAS
    let context: Handle
    let stream: Handle
    let blasHandle: OpaquePointer
    /// cuBLASLt and its handle, nil where it could not be loaded.
    let blasLt: (library: CUBLASLt, handle: OpaquePointer)?
    /// Prepared cuBLASLt products by configuration; nil where the heuristic has no algorithm (the GEMM path).
    private var linearProducts: [LinearProductKey: LinearProduct?] = [:]
    let allocator: BlockAllocator
    private let errorFlag: DevicePointer
    private let target: (option: String, cubin: Bool)
    private let maxBlocks: Int
    /// TVM_CUDA_SYNC=1: wait after every kernel and check it (slow; names the kernel that failed).
    private let syncEveryLaunch = environment("TVM_CUDA_SYNC") == "1"
    /// TVM_CUDA_PROFILE=1: device time per kernel (see `profileReport`).
    private lazy var profiler: KernelProfiler? = environment("TVM_CUDA_PROFILE") == "1" ? KernelProfiler(driver: driver) : nil

    private let launchMutex = Mutex()
    private let argRaw = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
    private let argPtrs = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 64)

    let moduleMutex = Mutex()
    private var coreKernels: [DType: CoreKernels] = [:]
    private var attentionKernels: [DType: AttentionKernelSet] = [:]
    private var flashKernels: FlashKernelSet?
    /// The inference kernels of ConvolutionKernels.swift, built on first use.
    var convolutionKernels: [DType: ConvolutionKernelSet] = [:]
    private var functionNames: [Handle: String] = [:]
    /// Seconds spent compiling (or loading cached) kernel modules.
    public private(set) var kernelBuildSeconds: Double = 0
    /// One line per module built: name, whether the disk cache had it, seconds.
    public private(set) var kernelBuildLog: [String] = []

    // MARK: - Loading

    private static let loadMutex = Mutex()
    nonisolated(unsafe) private static var instances: [Int: Result<CUDABackend, CUDAError>] = [:]

    /// The backend of device 0 (one per process). Throws a CUDAError saying why when there is no usable GPU,
    /// driver, NVRTC or cuBLAS; the outcome is remembered, so later calls are cheap.
    public static func load() throws -> CUDABackend { try load(device: 0) }

    public static func load(device ordinal: Int) throws -> CUDABackend {
        try loadMutex.withLock {
            if let r = instances[ordinal] { return try r.get() }
            let r: Result<CUDABackend, CUDAError>
            do { r = .success(try CUDABackend(ordinal: ordinal)) }
            catch let e as CUDAError { r = .failure(e) }
            catch { r = .failure(CUDAError("\(error)")) }
            instances[ordinal] = r
            return try r.get()
        }
    }

    /// Whether `load()` succeeds on this machine.
    public static var isAvailable: Bool { (try? load()) != nil }

    private init(ordinal: Int) throws {
        let driver = try Driver()
        self.driver = driver
        self.ordinal = ordinal
        let initResult = driver.cuInit(0)
        if initResult != 0 {
            throw CUDAError("CUDA driver: cuInit failed: \(driver.describe(initResult)) (no usable NVIDIA GPU?)")
        }
        var count: Int32 = 0
        try driver.check(driver.cuDeviceGetCount(&count), "cuDeviceGetCount")
        guard ordinal >= 0 && ordinal < Int(count) else {
            throw CUDAError("CUDA device \(ordinal) requested, but the driver sees \(count) device(s)")
        }
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        var nameBuf = [CChar](repeating: 0, count: 256)
        try driver.check(driver.cuDeviceGetName(&nameBuf, 255, dev), "cuDeviceGetName")
        deviceName = String(cString: nameBuf)
        func attribute(_ a: Int32, _ what: String) throws -> Int {
            var v: Int32 = 0
            try driver.check(driver.cuDeviceGetAttribute(&v, a, dev), "cuDeviceGetAttribute(\(what))")
            return Int(v)
        }
        computeCapability = (try attribute(Driver.attrComputeCapabilityMajor, "compute capability major"),
                             try attribute(Driver.attrComputeCapabilityMinor, "compute capability minor"))
        multiprocessorCount = try attribute(Driver.attrMultiprocessorCount, "multiprocessor count")
        var total = 0
        try driver.check(driver.cuDeviceTotalMem(&total, dev), "cuDeviceTotalMem_v2")
        totalMemoryBytes = total
        bf16CopyBudget = total / 8
        bf16CopyCeiling = total / 4 * 3
        maxBlocks = multiprocessorCount * 8
        maxSharedMemoryPerBlock = try attribute(Driver.attrMaxSharedMemoryPerBlockOptin, "max shared memory per block (opt-in)")

        var ctx: Handle? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain")
        guard let ctx else { throw CUDAError("CUDA driver: cuDevicePrimaryCtxRetain returned no context") }
        context = ctx
        try driver.check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        var s: Handle? = nil
        try driver.check(driver.cuStreamCreate(&s, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate")
        guard let s else { throw CUDAError("CUDA driver: cuStreamCreate returned no stream") }
        stream = s

        nvrtc = try NVRTC()
        blas = try CUBLAS()
        var h: OpaquePointer? = nil
        try blas.check(blas.cublasCreate(&h), "cublasCreate_v2")
        guard let h else { throw CUDAError("cuBLAS: cublasCreate_v2 returned no handle") }
        blasHandle = h
        try blas.check(blas.cublasSetStream(h, s), "cublasSetStream_v2")
        try blas.check(blas.cublasSetMathMode(h, CUBLAS.defaultMath), "cublasSetMathMode")
        // Without cuBLASLt linear layers still work (GEMM, then the bias), so its absence is a note, not an error.
        let ltNote: String
        do {
            let lt = try CUBLASLt()
            var lh: OpaquePointer? = nil
            try lt.check(lt.cublasLtCreate(&lh), "cublasLtCreate")
            guard let lh else { throw CUDAError("cuBLASLt: cublasLtCreate returned no handle") }
            blasLt = (lt, lh)
            let v = lt.cublasLtGetVersion()
            ltNote = "cuBLASLt \(v / 10000).\(v % 10000 / 100).\(v % 100)"
        } catch {
            blasLt = nil
            ltNote = "no cuBLASLt (\(error); bias adds after the GEMM)"
        }

        allocator = BlockAllocator(driver: driver, stream: s)
        var flag: DevicePointer = 0
        try driver.check(driver.cuMemAlloc(&flag, 256), "cuMemAlloc_v2(error flag)")
        try driver.check(driver.cuMemsetD8Async(flag, 0, 256, s), "cuMemsetD8Async")
        errorFlag = flag

        target = nvrtc.target(for: computeCapability.major * 10 + computeCapability.minor)
        var dv: Int32 = 0
        _ = driver.cuDriverGetVersion(&dv)
        var bv: Int32 = 0
        _ = blas.cublasGetVersion(h, &bv)
        versions = "driver API \(dv / 1000).\(dv % 1000 / 10), NVRTC \(nvrtc.version.major).\(nvrtc.version.minor) "
            + "(\(target.option)\(target.cubin ? "" : ", PTX")), cuBLAS \(bv / 10000).\(bv % 10000 / 100).\(bv % 100), "
            + ltNote
        // Build the float32 kernels now, so a compiler problem shows at load rather than at the first op.
        _ = try buildCore(.float32)
        allocator.onMemoryPressure = { [unowned self] in dropBF16Copies() }
    }

    // MARK: - Kernel modules

    func loadModule(_ family: KernelSource.Family, _ dtype: DType) throws -> (Handle, [String: Handle]) {
        let start = Self.now()
        let source = KernelSource.source(family, dtype)
        let options = [target.option, "--std=c++17", "-default-device"]
        let key = KernelCache.key([source, options.joined(separator: " "), "nvrtc \(nvrtc.version)", target.cubin ? "cubin" : "ptx"])
        let moduleName = "tvm_\(family.rawValue)_\(KernelSource.suffix(dtype)).cu"
        var image: [UInt8]
        var cached = false
        if let c = KernelCache.load(key) { image = c; cached = true } else {
            let (img, _) = try nvrtc.compile(source: source, name: moduleName, options: options, cubin: target.cubin)
            image = img
            KernelCache.store(key, image)
        }
        ensureCurrent()
        var module: Handle? = nil
        var r = image.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress) }
        if r != 0 && cached {
            // A stale or damaged cache entry: compile afresh.
            image = try nvrtc.compile(source: source, name: moduleName, options: options, cubin: target.cubin).image
            KernelCache.store(key, image)
            cached = false
            r = image.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress) }
        }
        try driver.check(r, "cuModuleLoadData(\(moduleName))")
        guard let module else { throw CUDAError("CUDA driver: cuModuleLoadData(\(moduleName)) returned no module") }
        var functions: [String: Handle] = [:]
        for line in source.split(separator: "\n") where line.hasPrefix("extern \"C\" __global__") {
            // extern "C" __global__ void __launch_bounds__(N) NAME(...
            guard let open = line.firstIndex(of: "("), let rest = line[line.index(after: open)...].firstIndex(of: ")"),
                  let paren = line[line.index(after: rest)...].firstIndex(of: "(") else { continue }
            let name = line[line.index(after: rest)..<paren].trimmingCharacters()
            var f: Handle? = nil
            try driver.check(driver.cuModuleGetFunction(&f, module, name), "cuModuleGetFunction(\(name))")
            if let f { functions[name] = f; functionNames[f] = name }
        }
        let seconds = Self.now() - start
        kernelBuildSeconds += seconds
        kernelBuildLog.append("\(moduleName): \(functions.count) kernels, \(cached ? "from disk cache" : "compiled"), "
                              + "\(Int(seconds * 1000)) ms")
        return (module, functions)
    }

    private func buildCore(_ dtype: DType) throws -> CoreKernels {
        try moduleMutex.withLock {
            if let k = coreKernels[dtype] { return k }
            let (_, f) = try loadModule(.core, dtype)
            let k = try CoreKernels(f, dtype)
            coreKernels[dtype] = k
            return k
        }
    }

    private func buildAttention(_ dtype: DType) throws -> AttentionKernelSet {
        try moduleMutex.withLock {
            if let k = attentionKernels[dtype] { return k }
            let (_, f) = try loadModule(.attention, dtype)
            let k = try AttentionKernelSet(f, dtype)
            attentionKernels[dtype] = k
            return k
        }
    }

    private func buildFlash() throws -> FlashKernelSet {
        try moduleMutex.withLock {
            if let k = flashKernels { return k }
            let (_, f) = try loadModule(.flash, .float32)
            let k = try FlashKernelSet(f, driver: driver)
            flashKernels = k
            return k
        }
    }

    /// Whether this GPU can run the flash kernels: tensor-core TF32 (compute capability 8.0 or newer) and
    /// enough shared memory per block for the largest of them.
    public var supportsFlashAttention: Bool {
        computeCapability.major >= 8 && maxSharedMemoryPerBlock >= KernelSource.flashMaxSharedBytes
    }

    @inline(__always) func flashSet() -> FlashKernelSet {
        if let k = moduleMutex.withLock({ flashKernels }) { return k }
        do { return try buildFlash() } catch { fatalError("\(error)") }
    }

    @inline(__always) func core(_ dtype: DType) -> CoreKernels {
        if let k = moduleMutex.withLock({ coreKernels[dtype] }) { return k }
        do { return try buildCore(dtype) } catch { fatalError("\(error)") }
    }

    @inline(__always) func attentionSet(_ dtype: DType) -> AttentionKernelSet {
        if let k = moduleMutex.withLock({ attentionKernels[dtype] }) { return k }
        do { return try buildAttention(dtype) } catch { fatalError("\(error)") }
    }

    /// Builds every kernel module of both element types now (the tests and benchmarks use this).
    public func buildAllKernels() throws {
        for dtype in [DType.float32, .float64] {
            _ = try buildCore(dtype)
            _ = try buildAttention(dtype)
        }
        if supportsFlashAttention { _ = try buildFlash() }
    }

    /// The flash kernels' resources, one line each: registers and local (spilled) bytes per thread, dynamic
    /// shared memory per block, threads per block and blocks per multiprocessor (occupancy). Builds them.
    public func flashResourceReport() -> [String] {
        guard supportsFlashAttention else { return ["flash attention not supported on this GPU"] }
        let set = flashSet()
        return set.all.map { name, k in
            var regs: Int32 = 0, local: Int32 = 0, blocks: Int32 = -1
            _ = driver.cuFuncGetAttribute(&regs, Driver.funcAttrNumRegs, k.function)
            _ = driver.cuFuncGetAttribute(&local, Driver.funcAttrLocalSizeBytes, k.function)
            if let occ = driver.cuOccupancyMaxActiveBlocksPerMultiprocessor {
                _ = occ(&blocks, k.function, Int32(k.threads), k.shared)
            }
            return "\(name): \(regs) registers, \(local) bytes local, \(k.shared) bytes shared, \(k.threads) threads, "
                + "\(blocks) blocks/SM (\(Int(blocks) * k.threads / 32) warps)"
        }
    }

    /// Registers and local (spilled) bytes per thread of every kernel built so far, one line each.
    public func kernelResourceReport() -> [String] {
        moduleMutex.withLock {
            functionNames.map { f, name -> String in
                var regs: Int32 = 0, local: Int32 = 0
                _ = driver.cuFuncGetAttribute(&regs, Driver.funcAttrNumRegs, f)
                _ = driver.cuFuncGetAttribute(&local, Driver.funcAttrLocalSizeBytes, f)
                return "\(name): \(regs) registers, \(local) bytes local"
            }.sorted()
        }
    }

    // MARK: - Launching

    @inline(__always) func ensureCurrent() {
        var current: Handle? = nil
        _ = driver.cuCtxGetCurrent(&current)
        if current != context { driver.must(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent") }
    }

    /// Kernel arguments packed into the backend's argument buffer (cuLaunchKernel's kernelParams).
    struct Args {
        let raw: UnsafeMutableRawPointer
        let ptrs: UnsafeMutablePointer<UnsafeMutableRawPointer?>
        var used = 0, count = 0

        @inline(__always) mutating func add<T>(_ v: T) {
            let a = MemoryLayout<T>.alignment
            used = (used + a - 1) / a * a
            (raw + used).storeBytes(of: v, as: T.self)
            ptrs[count] = raw + used
            count += 1
            used += MemoryLayout<T>.stride
        }
        @inline(__always) mutating func i64(_ v: Int) { add(Int64(v)) }
        @inline(__always) mutating func i32(_ v: Int) { add(Int32(v)) }
        @inline(__always) mutating func ptr(_ p: DevicePointer) { add(p) }
        @inline(__always) mutating func scalar(_ v: Double, _ dtype: DType) {
            if dtype == .float32 { add(Float(v)) } else { add(v) }
        }
        /// The kernels' View2 struct: shape[8], s0[8], s1[8] (int64), ndim (int32), padded to 200 bytes.
        mutating func view(_ shape: [Int], _ s0: [Int], _ s1: [Int]) {
            used = (used + 7) / 8 * 8
            let start = raw + used
            let w = start.assumingMemoryBound(to: Int64.self)
            for i in 0..<8 {
                w[i] = Int64(i < shape.count ? shape[i] : 1)
                w[8 + i] = Int64(i < s0.count ? s0[i] : 0)
                w[16 + i] = Int64(i < s1.count ? s1[i] : 0)
            }
            (start + 192).storeBytes(of: Int32(shape.count), as: Int32.self)
            (start + 196).storeBytes(of: Int32(0), as: Int32.self)
            ptrs[count] = start
            count += 1
            used += 200
        }
    }

    /// Queues kernel `f` on the stream; `fill` adds its arguments in order.
    @inline(__always)
    func launch(_ f: Handle, grid: (Int, Int) = (1, 1), block: (Int, Int) = (256, 1), shared: Int = 0,
                _ fill: (inout Args) -> Void) {
        launchMutex.lock()
        defer { launchMutex.unlock() }
        ensureCurrent()
        var args = Args(raw: argRaw, ptrs: argPtrs)
        fill(&args)
        let started = profiler?.begin(stream)
        let r = driver.cuLaunchKernel(f, UInt32(grid.0), UInt32(grid.1), 1, UInt32(block.0), UInt32(block.1), 1,
                                      UInt32(shared), stream, argPtrs, nil)
        if r != 0 { fatalError("CUDA driver: cuLaunchKernel(\(functionNames[f] ?? "?")) failed: \(driver.describe(r))") }
        if let started { profiler!.end(started, functionNames[f] ?? "?", stream) }
        if syncEveryLaunch {
            let s = driver.cuStreamSynchronize(stream)
            if s != 0 { fatalError("CUDA kernel \(functionNames[f] ?? "?") failed: \(driver.describe(s))") }
        }
    }

    /// Blocks for a grid-stride loop over `work` items with `threads` per block (at most one full wave of 8
    /// blocks of 256 per multiprocessor; the loop covers the rest).
    @inline(__always) func blocks(_ work: Int, threads: Int = 256) -> Int {
        Swift.max(1, Swift.min((work + threads - 1) / threads, maxBlocks * 256 / threads))
    }

    @inline(__always) func cuda(_ s: Storage) -> CUDAStorage {
        guard s.backend === self else { preconditionFailure("a \(s.backend.name) tensor was given to the \(name) backend") }
        return unsafeDowncast(s, to: CUDAStorage.self)
    }

    @inline(__always) func addr(_ s: Storage) -> DevicePointer { cuda(s).address }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    // MARK: - Memory

    public func allocate(_ count: Int, _ dtype: DType) -> Storage {
        let bytes = count * dtype.byteSize
        if bytes == 0 {
            return CUDAStorage(count: count, dtype: dtype, backend: self, address: 0, blockBytes: 0, allocator: nil)
        }
        ensureCurrent()
        let (p, size) = allocator.allocate(bytes)
        if poisonAllocations {
            // 0x7FF87FF8 repeated is a NaN as float32 and as float64.
            driver.must(driver.cuMemsetD32Async(p, 0x7FF8_7FF8, size / 4, stream), "cuMemsetD32Async(poison)")
        }
        return CUDAStorage(count: count, dtype: dtype, backend: self, address: p, blockBytes: size, allocator: allocator)
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

    private func copyToDevice(_ dst: DevicePointer, _ src: UnsafeRawPointer?, _ bytes: Int) {
        guard bytes > 0, let src else { return }
        ensureCurrent()
        driver.must(driver.cuMemcpyHtoDAsync(dst, src, bytes, stream), "cuMemcpyHtoDAsync_v2(\(bytes) bytes)")
    }

    private func copyToHost(_ dst: UnsafeMutableRawPointer?, _ src: DevicePointer, _ bytes: Int) {
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
            launch(core(.float64).fill, grid: (blocks(n), 1)) { a in
                a.ptr(addr(s)); a.i64(n); a.scalar(value, .float64)
            }
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
        let k = core(.float32)
        launch(x.dtype == .float32 ? k.convertF32F64 : k.convertF64F32, grid: (blocks(n), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(y)); a.i64(n)
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

    // MARK: - Elementwise

    @inline(__always) private func packs(_ n: Int, _ dtype: DType) -> Int { n / (16 / dtype.byteSize) + n % (16 / dtype.byteSize) }

    public func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage) {
        let n = x.count
        guard n > 0 else { return }
        let f = core(x.dtype).unary[UnaryOp.allCases.firstIndex(of: op)!]
        launch(f, grid: (blocks(packs(n, x.dtype)), 1)) { a in a.ptr(addr(x)); a.ptr(addr(y)); a.i64(n) }
    }

    public func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (y16, ty16) = (bf16Twin(y), bf16Twin(ty))
        launch(core(x.dtype).activationTangent[op]!, grid: (blocks(packs(n, x.dtype)), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(t)); a.ptr(addr(y)); a.ptr(addr(ty)); a.ptr(y16); a.ptr(ty16); a.i64(n)
        }
    }

    public func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                              _ gx: Storage, _ gt: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (gx16, gt16) = (bf16Twin(gx), bf16Twin(gt))
        launch(core(x.dtype).activationTangentBackward[op]!, grid: (blocks(packs(n, x.dtype)), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(t)); a.ptr(gy.map { addr($0) } ?? 0); a.ptr(gty.map { addr($0) } ?? 0)
            a.ptr(addr(gx)); a.ptr(addr(gt)); a.ptr(gx16); a.ptr(gt16); a.i64(n)
        }
    }

    public func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let gx16 = bf16Twin(gx)
        launch(core(x.dtype).activationBackward[op]!, grid: (blocks(packs(n, x.dtype)), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(g)); a.ptr(addr(gx)); a.ptr(gx16); a.i64(n)
        }
    }

    public func affine(_ x: Storage, _ y: Storage, a: Double, b: Double) {
        let n = x.count
        guard n > 0 else { return }
        launch(core(x.dtype).affine, grid: (blocks(packs(n, x.dtype)), 1)) { g in
            g.ptr(addr(x)); g.ptr(addr(y)); g.i64(n); g.scalar(a, x.dtype); g.scalar(b, x.dtype)
        }
    }

    /// Whether 32-bit indices cover `n` items and every offset of each view (shape, strides).
    private func fits32(_ n: Int, _ shape: [Int], _ views: [[Int]]) -> Bool {
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
    private func rowGrid(rows: Int, inner: Int) -> (blocksX: Int, chunks: Int, chunk: Int) {
        let blocksX = Swift.min((rows + 7) / 8, maxBlocks * 4), wantedWarps = maxBlocks * 8
        let chunks = rows >= wantedWarps ? 1 : Swift.max(1, Swift.min((inner + 1023) / 1024, (wantedWarps + rows - 1) / rows, 65535))
        return (blocksX, chunks, (inner + chunks - 1) / chunks)
    }

    public func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView,
                       _ y: Storage, shape: [Int]) {
        let total = Shape.count(shape)
        guard total > 0 else { return }
        let dtype = y.dtype, es = dtype.byteSize
        let k = core(dtype), opIndex = KernelSource.binaryIndex(op)
        let (cs, st) = Shape.collapse(shape: shape, strides: [av.strides, bv.strides, Shape.contiguousStrides(shape)])
        let pa = addr(a) + UInt64(av.offset * es), pb = addr(b) + UInt64(bv.offset * es), py = addr(y)
        if cs.count == 1 {
            let ia = st[0][0], ib = st[1][0]
            let mode = ia == 1 && ib == 1 ? 0 : (ia == 0 && ib == 1 ? 1 : (ia == 1 && ib == 0 ? 2 : -1))
            if mode >= 0 && (mode == 1 || pa % 16 == 0) && (mode == 2 || pb % 16 == 0) {
                launch(k.binaryDense[opIndex][mode], grid: (blocks(packs(total, dtype)), 1)) { g in
                    g.ptr(pa); g.ptr(pb); g.ptr(py); g.i64(total)
                }
                return
            }
        }
        precondition(cs.count <= 8, "CUDA binary: more than 8 axes after collapsing (\(shape))")
        let inner = cs[cs.count - 1], ia = st[0][cs.count - 1], ib = st[1][cs.count - 1]
        if cs.count >= 2 && inner >= 32 && (ia == 0 || ia == 1) && (ib == 0 || ib == 1) {
            // Rows along a contiguous or broadcast inner axis (bias adds, per-row scales, modulation).
            let rows = total / inner, (blocksX, chunks, chunk) = rowGrid(rows: rows, inner: inner)
            launch(k.binaryRows[opIndex], grid: (blocksX, chunks), block: (32, 8)) { g in
                g.view(Array(cs.dropLast()), Array(st[0].dropLast()), Array(st[1].dropLast()))
                g.ptr(pa); g.ptr(pb); g.ptr(py); g.i64(rows); g.i64(inner); g.i64(chunk); g.i32(ia); g.i32(ib)
            }
            return
        }
        let narrow = fits32(total, cs, [st[0], st[1]])
        launch((narrow ? k.binaryStrided32 : k.binaryStrided64)[opIndex], grid: (blocks(total), 1)) { g in
            g.view(cs, st[0], st[1]); g.ptr(pa); g.ptr(pb); g.ptr(py); g.i64(total)
        }
    }

    public func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage) {
        let n = y.count
        guard n > 0 else { return }
        launch(core(y.dtype).select, grid: (blocks(packs(n, y.dtype)), 1)) { g in
            g.ptr(addr(cond)); g.ptr(addr(a)); g.ptr(addr(b)); g.ptr(addr(y)); g.i64(n)
        }
    }

    public func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int]) {
        let total = Shape.count(shape)
        guard total > 0 else { return }
        let es = y.dtype.byteSize
        let (cs, st) = Shape.collapse(shape: shape, strides: [xv.strides, yv.strides])
        let px = addr(x) + UInt64(xv.offset * es), py = addr(y) + UInt64(yv.offset * es)
        if cs.count == 1 && st[0][0] == 1 && st[1][0] == 1 {
            ensureCurrent()
            driver.must(driver.cuMemcpyDtoDAsync(py, px, total * es, stream), "cuMemcpyDtoDAsync_v2")
            return
        }
        precondition(cs.count <= 8, "CUDA copy: more than 8 axes after collapsing (\(shape))")
        let k = core(y.dtype)
        let inner = cs[cs.count - 1], ix = st[0][cs.count - 1]
        if cs.count >= 2 && inner >= 32 && (ix == 0 || ix == 1) && st[1][cs.count - 1] == 1 {
            // Rows along an inner axis contiguous in the destination (permutes that keep the last axis, pads, concats).
            let rows = total / inner, (blocksX, chunks, chunk) = rowGrid(rows: rows, inner: inner)
            launch(k.copyRows, grid: (blocksX, chunks), block: (32, 8)) { g in
                g.view(Array(cs.dropLast()), Array(st[0].dropLast()), Array(st[1].dropLast()))
                g.ptr(px); g.ptr(py); g.i64(rows); g.i64(inner); g.i64(chunk); g.i32(ix)
            }
            return
        }
        launch(fits32(total, cs, [st[0], st[1]]) ? k.copy32 : k.copy64, grid: (blocks(total), 1)) { g in
            g.view(cs, st[0], st[1]); g.ptr(px); g.ptr(py); g.i64(total)
        }
    }

    // MARK: - Reductions and rows

    public func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner: Int) {
        guard outer > 0 && inner > 0 else { return }
        let dtype = x.dtype, k = core(dtype), isMax = op == .max
        if n == 0 {
            fill(y, value: isMax ? -.infinity : 0)
            return
        }
        let target = multiprocessorCount * 4
        if inner == 1 {
            reduceRows(k, isMax, addr(x), addr(y), outer: outer, n: n, target: target, dtype: dtype)
            return
        }
        let tiles = (inner + 31) / 32, blocksX = outer * tiles
        var splits = 1
        if blocksX < target && n >= 128 {
            splits = Swift.min((target + blocksX - 1) / blocksX, n / 64, 1024)
        }
        let f = isMax ? k.colsMax : k.colsSum
        if splits <= 1 {
            launch(f, grid: (blocksX, 1), block: (32, 8)) { g in
                g.ptr(addr(x)); g.ptr(addr(y)); g.i64(n); g.i64(inner); g.i64(n)
            }
            return
        }
        let chunk = (n + splits - 1) / splits
        let parts = allocate(outer * splits * inner, dtype)
        launch(f, grid: (blocksX, splits), block: (32, 8)) { g in
            g.ptr(addr(x)); g.ptr(addr(parts)); g.i64(n); g.i64(inner); g.i64(chunk)
        }
        launch(f, grid: (blocksX, 1), block: (32, 8)) { g in
            g.ptr(addr(parts)); g.ptr(addr(y)); g.i64(splits); g.i64(inner); g.i64(splits)
        }
    }

    private func reduceRows(_ k: CoreKernels, _ isMax: Bool, _ x: DevicePointer, _ y: DevicePointer,
                            outer: Int, n: Int, target: Int, dtype: DType) {
        if n <= 1024 {
            launch(isMax ? k.rowsWarpMax : k.rowsWarpSum, grid: (blocks(outer * 32), 1)) { g in
                g.ptr(x); g.ptr(y); g.i64(outer); g.i64(n)
            }
            return
        }
        let f = isMax ? k.rowsBlockMax : k.rowsBlockSum
        var splits = 1
        if outer < target { splits = Swift.min((target + outer - 1) / outer, n / 2048, 1024) }
        if splits <= 1 {
            launch(f, grid: (outer, 1)) { g in g.ptr(x); g.ptr(y); g.i64(n); g.i64(n) }
            return
        }
        let chunk = (n + splits - 1) / splits
        let parts = allocate(outer * splits, dtype)
        launch(f, grid: (outer, splits)) { g in g.ptr(x); g.ptr(addr(parts)); g.i64(n); g.i64(chunk) }
        launch(isMax ? k.rowsWarpMax : k.rowsWarpSum, grid: (blocks(outer * 32), 1)) { g in
            g.ptr(addr(parts)); g.ptr(y); g.i64(outer); g.i64(splits)
        }
    }

    public func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        let k = core(x.dtype)
        if cols <= 32 * KernelSource.rowWidths.last! {
            let w = KernelSource.rowWidths.firstIndex { 32 * $0 >= cols }!
            launch(k.softmaxWarp[w], grid: (blocks(rows * 32), 1)) { g in g.ptr(addr(x)); g.ptr(addr(y)); g.i64(rows); g.i64(cols) }
        } else {
            let t = cols > 8192 ? 1024 : 256
            launch(k.softmaxBlock, grid: (Swift.min(rows, maxBlocks * 2), 1), block: (t, 1)) { g in
                g.ptr(addr(x)); g.ptr(addr(y)); g.i64(rows); g.i64(cols)
            }
        }
    }

    public func rmsNorm(_ x: Storage, _ y: Storage, rows: Int, cols: Int, eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        let k = core(x.dtype)
        if cols <= 32 * KernelSource.rowWidths.last! {
            let w = KernelSource.rowWidths.firstIndex { 32 * $0 >= cols }!
            launch(k.rmsWarp[w], grid: (blocks(rows * 32), 1)) { g in
                g.ptr(addr(x)); g.ptr(addr(y)); g.i64(rows); g.i64(cols); g.scalar(eps, x.dtype)
            }
        } else {
            let t = cols > 8192 ? 1024 : 256
            launch(k.rmsBlock, grid: (Swift.min(rows, maxBlocks * 2), 1), block: (t, 1)) { g in
                g.ptr(addr(x)); g.ptr(addr(y)); g.i64(rows); g.i64(cols); g.scalar(eps, x.dtype)
            }
        }
    }

    public func rmsNormScaled(_ x: Storage, scale s: Storage, shift t: Storage?, _ y: Storage, batch: Int, rows: Int, cols: Int,
                              eps: Double, productOperand: Bool) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        let k = core(x.dtype)
        beginBF16Call()
        let y16 = productOperand ? bf16Twin(y) : 0
        func arguments(_ g: inout Args) {
            g.ptr(addr(x)); g.ptr(addr(s)); g.ptr(t.map { addr($0) } ?? 0); g.ptr(addr(y)); g.ptr(y16)
            g.i64(nrows); g.i64(rows); g.i64(cols); g.scalar(eps, x.dtype)
        }
        if cols <= 32 * KernelSource.rowWidths.last! {
            let w = KernelSource.rowWidths.firstIndex { 32 * $0 >= cols }!
            launch(k.rmsScaledWarp[w], grid: (blocks(nrows * 32), 1), arguments)
        } else {
            let threads = cols > 8192 ? 1024 : 256
            launch(k.rmsScaledBlock, grid: (Swift.min(nrows, maxBlocks * 2), 1), block: (threads, 1), arguments)
        }
    }

    public func rmsNormScaledJVP(_ x: Storage, _ dx: Storage, scale s: Storage, dScale ds: Storage?, dShift dt: Storage?,
                                 _ out: Storage, batch: Int, rows: Int, cols: Int, eps: Double, productOperand: Bool) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        beginBF16Call()
        let y16 = productOperand ? bf16Twin(out) : 0
        let k = core(x.dtype), w = KernelSource.normRowWidths.firstIndex { 32 * $0 >= cols }
        launch(w.map { k.rmsScaledJVPRows[$0] } ?? k.rmsScaledJVP, grid: (blocks(nrows * 32), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(dx)); a.ptr(addr(s)); a.ptr(ds.map { addr($0) } ?? 0); a.ptr(dt.map { addr($0) } ?? 0)
            a.ptr(addr(out)); a.ptr(y16); a.i64(nrows); a.i64(rows); a.i64(cols); a.scalar(eps, x.dtype)
        }
    }

    public func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                                      gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                                      sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int,
                                      eps: Double) {
        precondition((dx == nil) == (sA == nil) && (dx == nil) == (gdx == nil), "rmsNormScaledBackward: dx, sA and gdx go together")
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        func p(_ s: Storage?) -> DevicePointer { s.map { addr($0) } ?? 0 }
        let k = core(x.dtype), outs = [sums.n, sums.dn, sums.one]
        func rowArguments(_ a: inout Args) {
            a.ptr(addr(x)); a.ptr(p(dx)); a.ptr(addr(g)); a.ptr(p(sA)); a.ptr(p(sB)); a.ptr(addr(gx)); a.ptr(p(gdx))
            a.ptr(p(plus.x)); a.ptr(p(plus.dx))
        }
        if let w = KernelSource.normBackwardRowWidths.firstIndex(where: { 32 * $0 >= cols }) {
            // Rows in registers, the column sums of each block's rows in the same pass (one block of 8 warps per
            // chunk of at least 16 rows).
            columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: 1, minChunkRows: 16, k.rmsScaledBackwardRows[w],
                       block: (256, 1)) { a, outs, chunkRows in
                rowArguments(&a)
                for o in outs { a.ptr(p(o)) }
                a.i64(rows); a.i64(cols); a.i64(batch); a.i64(chunkRows); a.scalar(eps, x.dtype)
            }
            return
        }
        // r and r^3 mu per row, from the row pass to the column sums.
        let rowR = allocate(nrows, x.dtype), rowQ = allocate(nrows, x.dtype)
        launch(k.rmsScaledBackward, grid: (blocks(nrows * 32), 1)) { a in
            rowArguments(&a)
            a.ptr(addr(rowR)); a.ptr(addr(rowQ)); a.i64(nrows); a.i64(rows); a.i64(cols); a.scalar(eps, x.dtype)
        }
        columnSums(outs, batch: batch, rows: rows, cols: cols, k.normColSums) { a, outs, chunkRows in
            a.ptr(addr(g)); a.ptr(addr(x)); a.ptr(p(dx)); a.ptr(addr(rowR)); a.ptr(addr(rowQ))
            for o in outs { a.ptr(p(o)) }
            a.i64(rows); a.i64(cols); a.i64(batch); a.i64(chunkRows)
        }
    }

    public func rmsNormLinear(_ x: Storage, _ y: Storage, _ d: Storage, plus c: Storage?, _ out: Storage, rows: Int, cols: Int,
                              eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        launch(core(x.dtype).rmsLinear, grid: (blocks(rows * 32), 1)) { g in
            g.ptr(addr(x)); g.ptr(addr(y)); g.ptr(addr(d)); g.ptr(c.map { addr($0) } ?? 0); g.ptr(addr(out))
            g.i64(rows); g.i64(cols); g.scalar(eps, x.dtype)
        }
    }

    public func rmsNormLinearBackward(_ x: Storage, _ y: Storage, _ d: Storage, _ g: Storage, gx: Storage, gy: Storage,
                                      gd: Storage, plus: (x: Storage?, y: Storage?, d: Storage?), rows: Int, cols: Int,
                                      eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        launch(core(x.dtype).rmsLinearBackward, grid: (blocks(rows * 32), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(y)); a.ptr(addr(d)); a.ptr(addr(g)); a.ptr(addr(gx)); a.ptr(addr(gy)); a.ptr(addr(gd))
            a.ptr(plus.x.map { addr($0) } ?? 0); a.ptr(plus.y.map { addr($0) } ?? 0); a.ptr(plus.d.map { addr($0) } ?? 0)
            a.i64(rows); a.i64(cols); a.scalar(eps, x.dtype)
        }
    }

    public func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                          batch: Int, rows: Int, cols: Int) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        launch(core(a.dtype).scaledSum, grid: (Swift.min((nrows + 7) / 8, maxBlocks * 8), 1), block: (32, 8)) { g in
            g.ptr(addr(a)); g.ptr(addr(s)); g.ptr(b.map { addr($0) } ?? 0); g.ptr(t.map { addr($0) } ?? 0)
            g.ptr(c.map { addr($0) } ?? 0); g.i32(cFull ? 1 : 0); g.ptr(addr(y)); g.i64(nrows); g.i64(rows); g.i64(cols)
        }
    }

    public func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int) {
        precondition(xs.count == outs.count && (1...3).contains(outs.count), "rowSumsOfProducts takes 1 to 3 outputs")
        columnSums(outs, batch: batch, rows: rows, cols: cols, core(g.dtype).rowSums) { a, outs, chunkRows in
            a.ptr(addr(g))
            for k in 0..<3 { a.ptr(k < xs.count ? xs[k].map { addr($0) } ?? 0 : 0) }
            for k in 0..<3 { a.ptr(k < outs.count ? outs[k].map { addr($0) } ?? 0 : 0) }
            a.i32(outs.count); a.i64(rows); a.i64(cols); a.i64(batch); a.i64(chunkRows)
        }
    }

    /// Launches a column-sum kernel of row_sums' shape (grid: `tiles` column tiles x chunks x batch entries,
    /// blockIdx.y = chunk * batch + entry) for `outs` [batch, cols] (nil: not wanted); `arguments` gets the
    /// buffers the kernel writes and the rows per chunk. Few batch entries with many rows (a weight shared by
    /// every row: batch 1) would leave most of the GPU idle: the rows are then cut into chunks of at least
    /// `minChunkRows`, each summed by its own blocks into partial sums, which a second pass adds.
    private func columnSums(_ outs: [Storage?], batch: Int, rows: Int, cols: Int, tiles: Int? = nil, minChunkRows: Int = 256,
                            _ kernel: Handle, block: (Int, Int) = (32, 8), _ arguments: (inout Args, [Storage?], Int) -> Void) {
        guard batch > 0 && cols > 0 else { return }
        let dtype = outs.lazy.compactMap { $0 }.first?.dtype ?? .float32
        let tiles = tiles ?? (cols + 31) / 32
        let wanted = 8 * multiprocessorCount
        let chunks = Swift.max(1, Swift.min(Swift.min(wanted / Swift.max(tiles * batch, 1), (rows + minChunkRows - 1) / minChunkRows),
                                            65535 / batch))
        let chunkRows = Swift.max((rows + chunks - 1) / chunks, 1)
        let used = Swift.max((rows + chunkRows - 1) / chunkRows, 1)
        precondition(batch * used <= 65535, "column sums: batch \(batch) exceeds the grid's y limit")
        let partials = used > 1 ? outs.map { $0.map { _ in allocate(used * batch * cols, dtype) } } : outs
        launch(kernel, grid: (tiles, batch * used), block: block) { a in arguments(&a, partials, chunkRows) }
        if used > 1 {
            for (p, o) in zip(partials, outs) {
                if let p, let o { reduce(.sum, p, o, outer: 1, n: used, inner: batch * cols) }
            }
        }
    }

    /// Indices in the table's element type (the CPU backend reads them so).
    private func indices(_ index: Storage, as dtype: DType) -> Storage {
        index.dtype == dtype ? index : convert(index, to: dtype)
    }

    public func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        let idx = indices(index, as: table.dtype)
        let tableRows = table.count / cols
        launch(core(table.dtype).gather, grid: (Swift.min((rows + 7) / 8, maxBlocks * 4), 1), block: (32, 8)) { g in
            g.ptr(addr(table)); g.ptr(addr(idx)); g.ptr(addr(y)); g.i64(rows); g.i64(cols); g.i64(tableRows); g.ptr(errorFlag)
        }
    }

    public func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        forgetBF16Copy(of: table)
        let idx = indices(index, as: x.dtype)
        let tableRows = table.count / cols
        launch(core(x.dtype).scatterAdd, grid: (Swift.min((rows + 7) / 8, maxBlocks * 4), 1), block: (32, 8)) { g in
            g.ptr(addr(x)); g.ptr(addr(idx)); g.ptr(addr(table)); g.i64(rows); g.i64(cols); g.i64(tableRows); g.ptr(errorFlag)
        }
    }

    public func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64) {
        let n = y.count
        guard n > 0 else { return }
        launch(core(y.dtype).random, grid: (blocks((n + 3) / 4), 1)) { g in
            g.ptr(addr(y)); g.i64(n); g.add(seed); g.add(counter); g.i32(normal ? 1 : 0)
        }
    }

    // MARK: - Matrix products (cuBLAS)

    public func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int,
                       transA: Bool, transB: Bool, strideA: Int, strideB: Int, alpha: Double, beta: Double) {
        guard m > 0 && n > 0 && batch > 0 else { return }
        ensureCurrent()
        // Row-major Y[M, N] = op(A) op(B) is column-major Y^T[N, M] = op(B)^T op(A)^T: cuBLAS gets B first.
        let opB = transB ? CUBLAS.opT : CUBLAS.opN, opA = transA ? CUBLAS.opT : CUBLAS.opN
        let ldb = Int32(Swift.max(1, transB ? k : n)), lda = Int32(Swift.max(1, transA ? m : k))
        let pa = UnsafeRawPointer(bitPattern: UInt(addr(a))), pb = UnsafeRawPointer(bitPattern: UInt(addr(b)))
        let py = UnsafeMutableRawPointer(bitPattern: UInt(addr(y)))
        let (M, N, K, B) = (Int32(n), Int32(m), Int32(k), Int32(batch))
        let sA = Int64(strideB), sB = Int64(strideA), sC = Int64(m * n)
        let started = profiler?.begin(stream)
        defer {
            if let started { profiler!.end(started, "gemm \(batch)x\(m)x\(n)x\(k)\(transA ? " tA" : "")\(transB ? " tB" : "")", stream) }
        }
        if y.dtype == .float64 {
            var al = alpha, be = beta
            blas.must(blas.dgemmStridedBatched(blasHandle, opB, opA, M, N, K, &al, pb, ldb, sA, pa, lda, sB,
                                               &be, py, M, sC, B), "cublasDgemmStridedBatched(\(m)x\(n)x\(k), batch \(batch))")
        } else if bf16Products {
            var al = Float(alpha), be = Float(beta)
            if beta != 0 { forgetBF16Copy(of: y) }
            beginBF16Call()
            let a16 = UnsafeRawPointer(bitPattern: UInt(bf16Operand(a))), b16 = UnsafeRawPointer(bitPattern: UInt(bf16Operand(b)))
            blas.must(blas.gemmStridedBatchedEx(blasHandle, opB, opA, M, N, K, &al, b16, CUBLAS.r16BF, ldb, sA,
                                                a16, CUBLAS.r16BF, lda, sB, &be, py, CUBLAS.r32F, M, sC, B,
                                                CUBLAS.compute32F, CUBLAS.gemmDefault),
                      "cublasGemmStridedBatchedEx(BF16, \(m)x\(n)x\(k), batch \(batch))")
        } else if allowTF32 {
            var al = Float(alpha), be = Float(beta)
            blas.must(blas.gemmStridedBatchedEx(blasHandle, opB, opA, M, N, K, &al, pb, CUBLAS.r32F, ldb, sA,
                                                pa, CUBLAS.r32F, lda, sB, &be, py, CUBLAS.r32F, M, sC, B,
                                                CUBLAS.compute32FFastTF32, CUBLAS.gemmDefault),
                      "cublasGemmStridedBatchedEx(TF32, \(m)x\(n)x\(k), batch \(batch))")
        } else {
            var al = Float(alpha), be = Float(beta)
            blas.must(blas.sgemmStridedBatched(blasHandle, opB, opA, M, N, K, &al, pb, ldb, sA, pa, lda, sB,
                                               &be, py, M, sC, B), "cublasSgemmStridedBatched(\(m)x\(n)x\(k), batch \(batch))")
        }
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuBLAS") }
    }

    /// Storages holding a bf16 copy, oldest first. Entries whose storage died or whose copy was freed are swept
    /// out when copies are evicted or the list grows.
    private var bf16Holders: [WeakStorage] = []
    /// Bytes the bf16 operand copies may hold at once: an eighth of the device, halved each time the device fills.
    public var bf16CopyBudget: Int { didSet { trimBF16Copies() } }
    /// Copies are kept only while all tensors together stay below this, three quarters of the device: a model that
    /// needs the memory itself (XL/2 at batch 32) keeps only the newest copies and converts again, rather than grow
    /// its peak.
    public var bf16CopyCeiling: Int { didSet { trimBF16Copies() } }
    /// Copies kept whatever the budget: an input's three products (q, k, v) and an output with its tangent
    /// feeding the next layer's two products find theirs.
    private let bf16NewestKept = 4
    /// Bytes held by bf16 operand copies now (part of `currentBytes`).
    public var bf16CopyBytes: Int { allocator.bf16CopyBytes }
    /// The storages whose copies the current backend call has handed out. Its kernels are not queued yet, so
    /// neither eviction nor a full device frees these copies; each call that takes copies starts with
    /// `beginBF16Call`.
    private var inCallCopies: [ObjectIdentifier] = []

    private func beginBF16Call() { inCallCopies.removeAll(keepingCapacity: true) }

    /// The bfloat16 copy of a float32 storage, made on its first use as a product operand and kept while the
    /// storage lives: an activation feeds its forward products and, in the backward pass, the weight gradients'
    /// products; a weight feeds its forward, tangent and backward products. Storage is written once, when made;
    /// the in-place updates (AdamW, EMA, scatter-add, fill, accumulating products) forget the copy of what they
    /// change. Beyond the budget the oldest copies go first.
    private func bf16Operand(_ x: Storage) -> DevicePointer {
        precondition(x.dtype == .float32, "bf16 products take float32 operands")
        if let copy = cuda(x).bf16Copy {
            inCallCopies.append(ObjectIdentifier(x))
            return copy.address
        }
        let p = attachBF16Copy(x)
        if x.count > 0 { launch(core(.float32).convertF32BF16, grid: (blocks((x.count + 3) / 4), 1)) { a in
            a.ptr(addr(x)); a.ptr(p); a.i64(x.count)
        } }
        return p
    }

    /// Under bf16 products, a bf16 copy for a float32 output that the kernel about to make it also writes (2 bytes
    /// more per element there, instead of a 6-byte conversion pass when a product reads it); 0 otherwise. For
    /// kernels whose outputs feed products.
    private func bf16Twin(_ y: Storage) -> DevicePointer {
        guard bf16Products, y.dtype == .float32, y.count > 0 else { return 0 }
        forgetBF16Copy(of: y)
        return attachBF16Copy(y)
    }

    /// A fresh block for the bf16 copy of `x`, attached to it (its contents are the caller's to write). Beyond the
    /// budget or the ceiling the oldest copies are freed, an eighth of the budget more than needed (evictions come
    /// in batches).
    private func attachBF16Copy(_ x: Storage) -> DevicePointer {
        let s = cuda(x)
        inCallCopies.append(ObjectIdentifier(s))
        let (p, size) = allocator.allocate(Swift.max(2 * x.count, 2), bf16Copy: true)
        s.bf16Copy = (p, size)
        bf16Holders.append(WeakStorage(s))
        if !trimBF16Copies(slack: bf16CopyBudget / 8) && bf16Holders.count > 4096 {
            bf16Holders.removeAll { $0.storage?.bf16Copy == nil }
        }
        return p
    }

    /// Frees the oldest copies while they exceed the budget or all tensors the ceiling, `slack` bytes further;
    /// whether any had to go.
    @discardableResult
    private func trimBF16Copies(slack: Int = 0) -> Bool {
        let excess = Swift.max(allocator.bf16CopyBytes - bf16CopyBudget, allocator.currentBytes - bf16CopyCeiling)
        guard excess > 0 else { return false }
        evictBF16Copies(downTo: allocator.bf16CopyBytes - excess - slack)
        return true
    }

    /// Frees the oldest copies until they hold at most `bytes`, sparing the newest few and those the current call
    /// has handed out.
    private func evictBF16Copies(downTo bytes: Int) {
        for held in bf16Holders.dropLast(bf16NewestKept) where allocator.bf16CopyBytes > bytes {
            if let s = held.storage, !inCallCopies.contains(ObjectIdentifier(s)) { forgetBF16Copy(of: s) }
        }
        bf16Holders.removeAll { $0.storage?.bf16Copy == nil }
    }

    /// Frees the bf16 copy of a storage about to change in place (or evicted). Queued products that read the copy
    /// run first: its block is handed out again only to later work on the one stream.
    private func forgetBF16Copy(of x: Storage) {
        let s = cuda(x)
        guard let copy = s.bf16Copy else { return }
        allocator.release(copy.address, copy.blockBytes, bf16Copy: true)
        s.bf16Copy = nil
    }

    /// The device is full: the copies go (but the current call's), and the budget halves so that steady work
    /// stays below the limit.
    private func dropBF16Copies() {
        bf16CopyBudget = Swift.min(bf16CopyBudget, allocator.bf16CopyBytes) / 2
        evictBF16Copies(downTo: 0)
    }

    // MARK: - Linear layers (cuBLASLt epilogues)

    public func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int) {
        if let bias, epilogueProduct(.bias, m: outFeatures, n: rows, k: inFeatures, a: w, b: x, d: y, vector: bias) { return }
        linearByGEMM(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// The bias and the GELU in the product's epilogue (one pass over y); without a bias, or where cuBLASLt is
    /// off or has no algorithm for it, `linear` and the GELU kernel.
    public func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                           outFeatures: Int) {
        if let bias, epilogueProduct(.biasGELU, m: outFeatures, n: rows, k: inFeatures, a: w, b: x, d: y, vector: bias) {
            geluEpilogueCalls += 1
            return
        }
        linearThenGELU(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    public func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                                     outFeatures: Int) {
        if inFeatures * outFeatures <= 16384 && rows >= 8192, let chunk = [1024, 512, 256].first(where: { rows % $0 == 0 }) {
            // A small weight over many rows (a DiT's patch embedding and final layer: 4 x 384 over B * N rows) is one
            // product of a reduction length of B * N, which cuBLASLt ran on a few blocks (1.4-1.9 ms for 384 x 4 x
            // 32768). Split into row chunks: a batched product of partial gradients, then their sum.
            let parts = rows / chunk, partial = allocate(parts * inFeatures * outFeatures, gw.dtype)
            matmul(g, x, partial, batch: parts, m: outFeatures, n: inFeatures, k: chunk, transA: true, transB: false,
                   strideA: chunk * outFeatures, strideB: chunk * inFeatures, alpha: 1, beta: 0)
            reduce(.sum, partial, gw, outer: 1, n: parts, inner: inFeatures * outFeatures)
            if let gbias { reduce(.sum, g, gbias, outer: 1, n: rows, inner: outFeatures) }
            return
        }
        if let gbias, epilogueProduct(.biasGradient, m: inFeatures, n: outFeatures, k: rows, a: x, b: g, d: gw, vector: gbias) {
            return
        }
        linearWeightGradientByGEMM(x, g, gw: gw, gbias: gbias, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// Queues D = op(A) op(B) with the epilogue's bias vector (see LinearEpilogue for the operands' layouts) through
    /// cuBLASLt. false where cuBLASLt is off or missing or has no algorithm for the product: the caller takes the
    /// GEMM path. The heuristic runs once per configuration; its choice is kept.
    private func epilogueProduct(_ epilogue: LinearEpilogue, m: Int, n: Int, k: Int, a: Storage, b: Storage, d: Storage,
                                 vector: Storage) -> Bool {
        guard useCUBLASLt, let blasLt, m > 0 && n > 0 && k > 0 else { return false }
        let (lt, handle) = blasLt
        ensureCurrent()
        let pd = addr(d), pv = addr(vector)
        let bf16 = bf16Products && d.dtype == .float32
        // bf16 operand copies come from the allocator, aligned at least as well as the float32 originals.
        let key = LinearProductKey(epilogue: epilogue, dtype: d.dtype, tf32: allowTF32 && d.dtype == .float32, bf16: bf16,
                                   m: m, n: n, k: k,
                                   alignment: 1 << Swift.min(8, (addr(a) | addr(b) | pd | pv).trailingZeroBitCount))
        let product: LinearProduct
        if let known = linearProducts[key] {
            guard let known else { return false }
            product = known
            lt.setDescAttribute(product.desc, CUBLASLt.descBiasPointer, pv, "BIAS_POINTER")
        } else {
            let planned = lt.plan(handle, key, vector: pv)
            linearProducts.updateValue(planned, forKey: key)
            guard let planned else { return false }
            product = planned
        }
        if bf16 { beginBF16Call() }
        let pa = bf16 ? bf16Operand(a) : addr(a), pb = bf16 ? bf16Operand(b) : addr(b)
        let workspace = product.workspaceBytes > 0 ? allocate((product.workspaceBytes + 3) / 4, .float32) : nil
        func run(_ alpha: UnsafeRawPointer, _ beta: UnsafeRawPointer) -> CUBLASLt.Status {
            // beta = 0 and C = D: nothing is read from the output.
            let y = UnsafeMutableRawPointer(bitPattern: UInt(pd))
            return lt.cublasLtMatmul(handle, product.desc, alpha, UnsafeRawPointer(bitPattern: UInt(pa)), product.a,
                                     UnsafeRawPointer(bitPattern: UInt(pb)), product.b, beta, y, product.d, y, product.d,
                                     product.algo, workspace.map { UnsafeMutableRawPointer(bitPattern: UInt(addr($0))) } ?? nil,
                                     product.workspaceBytes, stream)
        }
        let started = profiler?.begin(stream)
        let status: CUBLASLt.Status
        if d.dtype == .float32 {
            var one: Float = 1, zero: Float = 0
            status = run(&one, &zero)
        } else {
            var one = 1.0, zero = 0.0
            status = run(&one, &zero)
        }
        withExtendedLifetime(workspace) {}
        if let started { profiler!.end(started, "\(epilogue) \(m)x\(n)x\(k)", stream) }
        lt.must(status, "cublasLtMatmul(\(epilogue) \(m)x\(n)x\(k), \(d.dtype)\(bf16 ? ", BF16" : key.tf32 ? ", TF32" : ""))")
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuBLASLt") }
        cublasLtCalls += 1
        return true
    }

    // MARK: - Attention

    /// Zeros of `count` elements, for a missing tangent or cotangent.
    private func zeros(_ count: Int, _ dtype: DType) -> Storage {
        let s = allocate(count, dtype)
        fill(s, value: 0)
        return s
    }

    /// Whether an attention call takes the flash kernels: float32, a head dim they are built for, a grid they
    /// can cover (batch * heads on the grid's y axis), every buffer 16-byte aligned (they load 16 bytes at a
    /// time; rows lie heads * dim floats apart, a multiple of 4 for the flash head dims).
    private func flashEligible(_ dtype: DType, _ g: AttentionGeometry, _ buffers: [Storage?]) -> Bool {
        guard useFlashAttention, dtype == .float32, KernelSource.flashDims.contains(g.dim), g.batch * g.heads <= 65535,
              supportsFlashAttention else { return false }
        return buffers.allSatisfy { $0.map { addr($0) % 16 == 0 } ?? true }
    }

    /// The flash kernels' operand precision: bf16Products, else allowTF32, else 3xTF32.
    private var flashPrecision: KernelSource.FlashPrecision { bf16Products ? .bf16 : allowTF32 ? .tf32 : .x3 }

    private func laneWidth(_ dim: Int) -> Int {
        guard let i = KernelSource.attentionLaneWidths.firstIndex(where: { 32 * $0 >= dim }) else {
            fatalError("CUDA attention: head dimension \(dim) is larger than \(32 * KernelSource.attentionLaneWidths.last!)")
        }
        return i
    }

    public func attention(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                          o: Storage, to: Storage?, lse: Storage, geometry g: AttentionGeometry) {
        let rows = g.rows
        guard rows > 0 && g.dim > 0 else { return }
        let dtype = q.dtype, count = g.count
        if flashEligible(dtype, g, [q, k, v, tq, tk, tv, o, to, lse]) {
            let z = to != nil && (tq == nil || tk == nil || tv == nil) ? zeros(count, dtype) : nil
            let f = flashSet().kernel(.forward, tangent: to != nil, dim: g.dim, precision: flashPrecision, capped: flashRegisterCaps)
            // The output and its tangent feed the output projection: their bf16 copies are written here.
            beginBF16Call()
            let (o16, to16) = (bf16Twin(o), to.map { bf16Twin($0) } ?? 0)
            launch(f.function, grid: ((g.seq + f.rows - 1) / f.rows, g.batch * g.heads), block: (f.threads, 1), shared: f.shared) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v))
                if to != nil { a.ptr(addr(tq ?? z!)); a.ptr(addr(tk ?? z!)); a.ptr(addr(tv ?? z!)) } else { a.ptr(0); a.ptr(0); a.ptr(0) }
                a.ptr(addr(o)); a.ptr(to.map { addr($0) } ?? 0); a.ptr(addr(lse)); a.ptr(o16); a.ptr(to16)
                a.ptr(0); a.ptr(0); a.ptr(0); a.ptr(0)  // go, gto, lseIn, stats: the backward's pre-pass only
                a.i32(g.seq); a.i32(g.heads); a.scalar(g.scale, dtype)
            }
            flashAttentionCalls += 1
            return
        }
        let set = attentionSet(dtype), w = laneWidth(g.dim)
        if let to {
            let z = (tq == nil || tk == nil || tv == nil) ? zeros(count, dtype) : nil
            let (tqs, tks, tvs) = (tq ?? z!, tk ?? z!, tv ?? z!)
            launch(set.forward[1][w], grid: ((rows + 7) / 8, 1)) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(addr(tqs)); a.ptr(addr(tks)); a.ptr(addr(tvs))
                a.ptr(addr(o)); a.ptr(addr(to)); a.ptr(addr(lse))
                a.i64(rows); a.i32(g.seq); a.i32(g.heads); a.i32(g.dim); a.scalar(g.scale, dtype)
            }
        } else {
            launch(set.forward[0][w], grid: ((rows + 7) / 8, 1)) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(0); a.ptr(0); a.ptr(0)
                a.ptr(addr(o)); a.ptr(0); a.ptr(addr(lse))
                a.i64(rows); a.i32(g.seq); a.i32(g.heads); a.i32(g.dim); a.scalar(g.scale, dtype)
            }
        }
    }

    public func attentionBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?,
                                  o: Storage, to: Storage?, lse: Storage, go: Storage?, gto: Storage?,
                                  dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                                  geometry g: AttentionGeometry) {
        let rows = g.rows
        guard rows > 0 && g.dim > 0 else { return }
        let dtype = q.dtype, count = g.count
        let tangent = tq != nil || tk != nil || tv != nil || gto != nil || dtq != nil || dtk != nil || dtv != nil
        let needZeros = go == nil || (tangent && (tq == nil || tk == nil || tv == nil || gto == nil))
        let z = needZeros ? zeros(count, dtype) : nil
        let goS = go ?? z!
        let t = tangent ? 1 : 0
        let tqS = tangent ? (tq ?? z!) : nil, tkS = tangent ? (tk ?? z!) : nil, tvS = tangent ? (tv ?? z!) : nil
        let gtoS = tangent ? (gto ?? z!) : nil
        let dtqS = tangent ? (dtq ?? allocate(count, dtype)) : nil
        let dtkS = tangent ? (dtk ?? allocate(count, dtype)) : nil
        let dtvS = tangent ? (dtv ?? allocate(count, dtype)) : nil
        func p(_ s: Storage?) -> DevicePointer { s.map { addr($0) } ?? 0 }
        if flashEligible(dtype, g, [q, k, v, tqS, tkS, tvS, lse, goS, gtoS, dq, dk, dv, dtqS, dtkS, dtvS]) {
            // Pre-pass (the forward recomputed, nothing stored but per-row float4 (lse, mu, rho, sum_j P dP)),
            // then the query side (dq, dtq) and the key side (dk, dv, dtk, dtv), P recomputed from lse.
            let set = flashSet(), precision = flashPrecision, bh = g.batch * g.heads
            let rowStats = allocate(rows * 4, dtype)
            let f = set.kernel(.forward, tangent: tangent, dim: g.dim, precision: precision, capped: flashRegisterCaps)
            launch(f.function, grid: ((g.seq + f.rows - 1) / f.rows, bh), block: (f.threads, 1), shared: f.shared) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(p(tqS)); a.ptr(p(tkS)); a.ptr(p(tvS))
                a.ptr(0); a.ptr(0); a.ptr(0); a.ptr(0); a.ptr(0)
                a.ptr(addr(goS)); a.ptr(p(gtoS)); a.ptr(addr(lse)); a.ptr(addr(rowStats))
                a.i32(g.seq); a.i32(g.heads); a.scalar(g.scale, dtype)
            }
            let fq = set.kernel(.dq, tangent: tangent, dim: g.dim, precision: precision, capped: flashRegisterCaps)
            launch(fq.function, grid: ((g.seq + fq.rows - 1) / fq.rows, bh), block: (fq.threads, 1), shared: fq.shared) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(p(tqS)); a.ptr(p(tkS)); a.ptr(p(tvS))
                a.ptr(addr(goS)); a.ptr(p(gtoS)); a.ptr(addr(rowStats)); a.ptr(addr(dq)); a.ptr(p(dtqS))
                a.i32(g.seq); a.i32(g.heads); a.scalar(g.scale, dtype)
            }
            let fk = set.kernel(.dkv, tangent: tangent, dim: g.dim, precision: precision, capped: flashRegisterCaps)
            // dv and dtv are the v projection's output cotangents, read by its backward products.
            beginBF16Call()
            let (dv16, dtv16) = (bf16Twin(dv), dtvS.map { bf16Twin($0) } ?? 0)
            launch(fk.function, grid: ((g.seq + fk.rows - 1) / fk.rows, bh), block: (fk.threads, 1), shared: fk.shared) { a in
                a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(p(tqS)); a.ptr(p(tkS)); a.ptr(p(tvS))
                a.ptr(addr(goS)); a.ptr(p(gtoS)); a.ptr(addr(rowStats))
                a.ptr(addr(dk)); a.ptr(addr(dv)); a.ptr(p(dtkS)); a.ptr(p(dtvS)); a.ptr(dv16); a.ptr(dtv16)
                a.i32(g.seq); a.i32(g.heads); a.scalar(g.scale, dtype)
            }
            flashAttentionCalls += 1
            return
        }
        let set = attentionSet(dtype), w = laneWidth(g.dim), stats = allocate(rows * 3, dtype)
        launch(set.backwardRows[t][w], grid: ((rows + 7) / 8, 1)) { a in
            a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(p(tqS)); a.ptr(p(tkS)); a.ptr(p(tvS))
            a.ptr(addr(lse)); a.ptr(addr(goS)); a.ptr(p(gtoS)); a.ptr(addr(dq)); a.ptr(p(dtqS)); a.ptr(addr(stats))
            a.i64(rows); a.i32(g.seq); a.i32(g.heads); a.i32(g.dim); a.scalar(g.scale, dtype)
        }
        launch(set.backwardCols[t][w], grid: ((rows + 7) / 8, 1)) { a in
            a.ptr(addr(q)); a.ptr(addr(k)); a.ptr(addr(v)); a.ptr(p(tqS)); a.ptr(p(tkS)); a.ptr(p(tvS))
            a.ptr(addr(lse)); a.ptr(addr(goS)); a.ptr(p(gtoS)); a.ptr(addr(stats))
            a.ptr(addr(dk)); a.ptr(addr(dv)); a.ptr(p(dtkS)); a.ptr(p(dtvS))
            a.i64(rows); a.i32(g.seq); a.i32(g.heads); a.i32(g.dim); a.scalar(g.scale, dtype)
        }
    }

    // MARK: - Optimizer

    public func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
                      eps: Double, weightDecay: Double, step: Int, gradScale: Double) {
        forgetBF16Copy(of: p)
        let n = p.count
        guard n > 0 else { return }
        // The CPU backend's arithmetic: constants in double, then in the element type.
        let bc1 = 1 - Glibc.pow(beta1, Double(step)), bc2 = 1 - Glibc.pow(beta2, Double(step))
        let dtype = p.dtype
        launch(core(dtype).adamw, grid: (blocks(packs(n, dtype)), 1)) { a in
            a.ptr(addr(p)); a.ptr(addr(g)); a.ptr(addr(m)); a.ptr(addr(v)); a.i64(n)
            a.scalar(lr / bc1, dtype); a.scalar(bc2.squareRoot(), dtype); a.scalar(1 - lr * weightDecay, dtype)
            a.scalar(beta1, dtype); a.scalar(beta2, dtype); a.scalar(eps, dtype); a.scalar(gradScale, dtype)
        }
    }

    public func emaUpdate(ema: Storage, p: Storage, decay: Double) {
        forgetBF16Copy(of: ema)
        let n = p.count
        guard n > 0 else { return }
        launch(core(p.dtype).ema, grid: (blocks(packs(n, p.dtype)), 1)) { a in
            a.ptr(addr(ema)); a.ptr(addr(p)); a.i64(n); a.scalar(decay, p.dtype)
        }
    }

    // MARK: - Timing

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

    // MARK: - Compiling without a device

    /// Compiles every kernel module with NVRTC alone (no driver or GPU needed) for `architecture` (e.g. 90),
    /// returning one line per module. For checking the kernel source on machines without a GPU.
    public static func compileKernelsWithoutDevice(architecture: Int = 90) throws -> [String] {
        let nvrtc = try NVRTC()
        var lines: [String] = []
        for dtype in [DType.float32, .float64] {
            for family in KernelSource.Family.allCases where family != .flash || dtype == .float32 {
                let start = now()
                let (image, log) = try nvrtc.compile(source: KernelSource.source(family, dtype),
                                                     name: "tvm_\(family.rawValue)_\(KernelSource.suffix(dtype)).cu",
                                                     options: ["--gpu-architecture=sm_\(architecture)", "--std=c++17",
                                                               "-default-device", "--ptxas-options=-v"],
                                                     cubin: true)
                lines.append("\(family.rawValue) \(dtype): \(image.count) bytes in \(Int((now() - start) * 1000)) ms"
                             + (log.isEmpty ? "" : "\n\(log)"))
            }
        }
        return lines
    }
}

// MARK: - Kernel tables (resolved once per module, so a launch does no name lookups)

final class CoreKernels {
    let unary: [Handle]
    let binaryDense: [[Handle]]
    let binaryStrided32: [Handle], binaryStrided64: [Handle], binaryRows: [Handle]
    let copyRows: Handle, copy32: Handle, copy64: Handle, affine: Handle, fill: Handle, select: Handle
    let rowsBlockSum: Handle, rowsBlockMax: Handle, rowsWarpSum: Handle, rowsWarpMax: Handle
    let colsSum: Handle, colsMax: Handle
    let softmaxWarp: [Handle], softmaxBlock: Handle, rmsWarp: [Handle], rmsBlock: Handle
    let rmsScaledWarp: [Handle], rmsScaledBlock: Handle
    let rmsLinear: Handle, rmsLinearBackward: Handle, scaledSum: Handle, rowSums: Handle
    /// rmsNormScaled's tangent and backward: register-row kernels per KernelSource.normRowWidths and
    /// normBackwardRowWidths, and for longer rows the kernels that read rows twice (the backward's column sums then
    /// a pass of their own).
    let rmsScaledJVPRows: [Handle], rmsScaledBackwardRows: [Handle]
    let rmsScaledJVP: Handle, rmsScaledBackward: Handle, normColSums: Handle
    let gather: Handle, scatterAdd: Handle, random: Handle, adamw: Handle, ema: Handle
    let convertF32F64: Handle, convertF64F32: Handle, convertF32BF16: Handle
    /// Per fused activation (KernelSource.fusedActivations): value and tangent, their backward, plain backward.
    let activationTangent: [UnaryOp: Handle], activationTangentBackward: [UnaryOp: Handle], activationBackward: [UnaryOp: Handle]

    init(_ f: [String: Handle], _ dtype: DType) throws {
        let s = KernelSource.suffix(dtype)
        func get(_ name: String) throws -> Handle {
            guard let h = f[name] else { throw CUDAError("CUDA kernels: \(name) missing from the compiled module") }
            return h
        }
        unary = try UnaryOp.allCases.map { try get("unary_\($0)_\(s)") }
        binaryDense = try KernelSource.binaryOps.map { op in try (0..<3).map { try get("binary_\(op)_d\($0)_\(s)") } }
        binaryStrided32 = try KernelSource.binaryOps.map { try get("binary_\($0)_s32_\(s)") }
        binaryStrided64 = try KernelSource.binaryOps.map { try get("binary_\($0)_s64_\(s)") }
        binaryRows = try KernelSource.binaryOps.map { try get("binary_\($0)_rows_\(s)") }
        copyRows = try get("copy_rows_\(s)")
        copy32 = try get("copy_s32_\(s)"); copy64 = try get("copy_s64_\(s)")
        affine = try get("affine_\(s)"); fill = try get("fill_\(s)"); select = try get("select_\(s)")
        rowsBlockSum = try get("reduce_rows_block_sum_\(s)"); rowsBlockMax = try get("reduce_rows_block_max_\(s)")
        rowsWarpSum = try get("reduce_rows_warp_sum_\(s)"); rowsWarpMax = try get("reduce_rows_warp_max_\(s)")
        colsSum = try get("reduce_cols_sum_\(s)"); colsMax = try get("reduce_cols_max_\(s)")
        softmaxWarp = try KernelSource.rowWidths.map { try get("softmax_warp\($0)_\(s)") }
        rmsWarp = try KernelSource.rowWidths.map { try get("rmsnorm_warp\($0)_\(s)") }
        softmaxBlock = try get("softmax_block_\(s)"); rmsBlock = try get("rmsnorm_block_\(s)")
        rmsScaledWarp = try KernelSource.rowWidths.map { try get("rmsnorm_scaled_warp\($0)_\(s)") }
        rmsScaledBlock = try get("rmsnorm_scaled_block_\(s)")
        rmsLinear = try get("rmsnorm_linear_\(s)"); rmsLinearBackward = try get("rmsnorm_linear_bwd_\(s)")
        scaledSum = try get("scaled_sum_\(s)"); rowSums = try get("row_sums_\(s)")
        rmsScaledJVP = try get("rmsnorm_scaled_jvp_\(s)"); rmsScaledBackward = try get("rmsnorm_scaled_bwd_\(s)")
        rmsScaledJVPRows = try KernelSource.normRowWidths.map { try get("rmsnorm_scaled_jvp_w\($0)_\(s)") }
        rmsScaledBackwardRows = try KernelSource.normBackwardRowWidths.map { try get("rmsnorm_scaled_bwd_w\($0)_\(s)") }
        normColSums = try get("norm_col_sums_\(s)")
        gather = try get("gather_\(s)"); scatterAdd = try get("scatter_add_\(s)"); random = try get("random_\(s)")
        adamw = try get("adamw_\(s)"); ema = try get("ema_\(s)")
        convertF32F64 = try get("convert_f32_f64"); convertF64F32 = try get("convert_f64_f32")
        convertF32BF16 = try get("convert_f32_bf16")
        func table(_ stem: String) throws -> [UnaryOp: Handle] {
            try Dictionary(uniqueKeysWithValues: KernelSource.fusedActivations.map { ($0, try get("\(stem)_\($0)_\(s)")) })
        }
        activationTangent = try table("act_tangent")
        activationTangentBackward = try table("act_tangent_bwd")
        activationBackward = try table("act_bwd")
    }
}

final class AttentionKernelSet {
    /// [plain 0 / with tangent 1][lane width index]
    let forward: [[Handle]], backwardRows: [[Handle]], backwardCols: [[Handle]]

    init(_ f: [String: Handle], _ dtype: DType) throws {
        let s = KernelSource.suffix(dtype)
        func table(_ stem: String) throws -> [[Handle]] {
            try ["p", "t"].map { t in
                try KernelSource.attentionLaneWidths.map { w in
                    guard let h = f["\(stem)_\(t)\(w)_\(s)"] else {
                        throw CUDAError("CUDA kernels: \(stem)_\(t)\(w)_\(s) missing from the compiled module")
                    }
                    return h
                }
            }
        }
        forward = try table("attn_fwd")
        backwardRows = try table("attn_bwd_rows")
        backwardCols = try table("attn_bwd_cols")
    }
}

final class FlashKernelSet {
    struct Kernel { let function: Handle; let threads: Int; let rows: Int; let shared: Int }
    /// By name (KernelSource.flashName).
    private let byName: [String: Kernel]
    /// Every kernel by name, sorted (for the resource report).
    var all: [(String, Kernel)] { byName.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }

    init(_ f: [String: Handle], driver: Driver) throws {
        var table: [String: Kernel] = [:]
        for (kind, tangent, dim, precision) in KernelSource.flashConfigurations {
            let shape = KernelSource.flashShape(kind, tangent: tangent, dim: dim, precision: precision)
            let shared = KernelSource.flashSharedBytes(kind, tangent: tangent, dim: dim, precision: precision)
            for uncapped in shape.minBlocks > 0 ? [false, true] : [false] {
                let name = KernelSource.flashName(kind, tangent: tangent, dim: dim, precision: precision, uncapped: uncapped)
                guard let h = f[name] else { throw CUDAError("CUDA kernels: \(name) missing from the compiled module") }
                try driver.check(driver.cuFuncSetAttribute(h, Driver.funcAttrMaxDynamicSharedSize, Int32(shared)),
                                 "cuFuncSetAttribute(\(name), max dynamic shared memory \(shared) bytes)")
                table[name] = Kernel(function: h, threads: 32 * shape.warps, rows: 16 * shape.warps, shared: shared)
            }
        }
        byName = table
    }

    func kernel(_ kind: KernelSource.FlashKind, tangent: Bool, dim: Int, precision: KernelSource.FlashPrecision, capped: Bool) -> Kernel {
        let uncapped = !capped && KernelSource.flashShape(kind, tangent: tangent, dim: dim, precision: precision).minBlocks > 0
        return byName[KernelSource.flashName(kind, tangent: tangent, dim: dim, precision: precision, uncapped: uncapped)]!
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
