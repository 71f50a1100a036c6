#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// The CUDA backend: TensorCore's kernels on an NVIDIA GPU.
///
/// Nothing CUDA-related is needed to build it: the driver (libcuda.so.1), NVRTC and cuBLAS are opened at run
/// time by `load()`, the kernels are CUDA C++ in this module's `.cu` files (one per kernel family, made into Swift at
/// build time by CUDAKernelTool) compiled by NVRTC for the device's architecture on first use (and cached on disk),
/// and matrix products go to cuBLAS. Runtime/ holds the driver, compiler, module and launch machinery, Matmul/ the
/// cuBLAS(Lt) products, and one folder per kernel family its `.cu` file and the Backend methods that launch it.
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
    /// Float32 attention with head dims 64 and 72 (FlashAttention.cu's instances) takes the fused flash-attention kernels
    /// (tensor-core tiles, no seq x seq matrix in memory): 3xTF32 products (float32 accuracy) by default, single
    /// TF32 products with `allowTF32`, bfloat16 products with `bf16Products`. Off (TVM_CUDA_NO_FLASH=1, or false
    /// here): the warp-per-row kernels, which also serve every other head dim and float64.
    public var useFlashAttention: Bool = environment("TVM_CUDA_NO_FLASH") != "1"
    /// The register caps that let some 3xTF32 flash kernels run 3 blocks per multiprocessor (a few values
    /// spilled; see FlashAttention.cu). false: their uncapped builds (2 blocks), for measurements.
    public var flashRegisterCaps = true
    /// Under `bf16Products`, the flash kernels' products as Hopper's warpgroup products (wgmma, FlashTiles.cuh's FP_WG)
    /// where the kernels were built as sm_90a machine code (`warpgroupProducts`); else the mma.sync kernels, which
    /// give the same results up to the order of their float32 sums. Off by default: on an H100 the wgmma kernels were
    /// correct but 0.96-0.98x as fast in training (TVM_CUDA_WGMMA=1 turns them on; docs/CUDA_NOTES.md says why).
    public var flashWarpgroupProducts = environment("TVM_CUDA_WGMMA") == "1"
    /// Whether the flash backward takes its per-row statistics from the forward's saved outputs where the caller kept
    /// them (`flash_row_stats`); false: the pre-pass that computes the forward again, for comparisons and as the
    /// fallback (TVM_CUDA_NO_SAVED_STATS=1 sets it).
    public var flashSavedStatistics: Bool = environment("TVM_CUDA_NO_SAVED_STATS") != "1"
    /// EXPERIMENT (to be removed once the variants are measured; docs/CUDA_NOTES.md): TVM_CUDA_FLASH_VARIANT=<name> runs
    /// a variant of the flash kernels, the instance named ..._v<name>, or `wgp` (the pipelined plain forward) or `split`
    /// (the key side in two kernels).
    public var flashVariant: String? = environment("TVM_CUDA_FLASH_VARIANT")
    /// Attention calls (forward or backward) that took the flash kernels (for tests).
    public internal(set) var flashAttentionCalls = 0
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
    public internal(set) var cublasLtCalls = 0
    /// linearGELU calls whose GELU ran in the product's epilogue rather than as a separate kernel (for tests).
    public internal(set) var geluEpilogueCalls = 0
    /// Convolutions of channels-last images go through cuDNN where it is found (Convolution/CuDNN.swift); false
    /// (TVM_CUDA_NO_CUDNN=1 sets it), as where cuDNN is missing: im2col kernels and matrix products, for comparisons.
    public var useCuDNN: Bool = environment("TVM_CUDA_NO_CUDNN") != "1"
    /// Under bf16 products the VAE's activations hold bf16 values alone (`lowPrecisionStorage`); false
    /// (TVM_CUDA_NO_BF16_ACTIVATIONS=1 sets it): float32 activations with bf16 operand copies, for comparisons.
    public var bf16Activations: Bool = environment("TVM_CUDA_NO_BF16_ACTIVATIONS") != "1"
    /// cuDNN's algorithms are chosen by timing each on the first call of every configuration
    /// (cudnnFindConvolutionForwardAlgorithmEx, as PyTorch's cudnn.benchmark) rather than by its heuristic ranking;
    /// TVM_CUDNN_FIND=1 sets it. Off by default: the timing costs a few milliseconds per new shape.
    public var cudnnTimesAlgorithms: Bool = environment("TVM_CUDNN_FIND") == "1"
    /// The largest im2col matrix (elements) one product of the convolutions without cuDNN is given; larger outputs
    /// go in bands of output pixels (tests make it small).
    public var im2colBandElements = 1 << 25
    /// Convolutions that cuDNN computed (for tests).
    public internal(set) var cudnnConvolutions = 0
    /// Why the last convolution cuDNN was asked for went to the im2col path instead (no algorithm, a descriptor
    /// refused), nil while none did: for tests and reports.
    public internal(set) var cudnnPlanFailure: String?
    /// cuDNN and its handle, opened on first use (the first convolution or `cudnnNotice`); nil where it could not be.
    lazy var cudnn: (library: CuDNN, handle: OpaquePointer)? = openCuDNN()
    /// Why cuDNN could not be opened, once it was tried.
    var cudnnLoadError: String?
    /// Prepared cuDNN convolutions by configuration; nil where cuDNN has no algorithm for one (the im2col path).
    var convolutionPlans: [ConvolutionPlanKey: ConvolutionPlan?] = [:]
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
    var linearProducts: [LinearProductKey: LinearProduct?] = [:]
    let allocator: BlockAllocator
    /// Set by gatherRows / scatterAddRows on a bad index, read by `synchronize`.
    let errorFlag: DevicePointer
    let target: (option: String, cubin: Bool)
    let maxBlocks: Int
    /// TVM_CUDA_SYNC=1: wait after every kernel and check it (slow; names the kernel that failed).
    let syncEveryLaunch = environment("TVM_CUDA_SYNC") == "1"
    /// TVM_CUDA_PROFILE=1: device time per kernel (see `profileReport`); TVM_CUDA_PROFILE=grid: per kernel and launch
    /// grid, which tells the launches of one kernel on different tensors apart.
    lazy var profiler: KernelProfiler? = {
        let mode = environment("TVM_CUDA_PROFILE")
        return mode == "1" || mode == "grid" ? KernelProfiler(driver: driver, byGrid: mode == "grid") : nil
    }()
    /// Whether the profiler names launches with their grid (TVM_CUDA_PROFILE=grid).
    public var profilesByGrid: Bool { profiler?.byGrid == true }
    /// Under TVM_CUDA_PROFILE=grid, added to the next launch's name (the element count of a conversion, whose grid
    /// is capped at one wave and so does not tell sizes apart).
    var profileTag: String?

    let launchMutex = Mutex()
    let argumentBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 16)
    let argumentPointers = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 64)

    let moduleMutex = Mutex()
    /// Kernel sets built so far, by set and element type (Runtime/KernelModules.swift).
    var kernelSets: [KernelSetKey: AnyObject] = [:]
    /// Every kernel of the sets built so far, for `kernelResourceReport`.
    var builtFunctions: [KernelFunction] = []
    /// Seconds spent compiling (or loading cached) kernel modules.
    public internal(set) var kernelBuildSeconds: Double = 0
    /// One line per module built: name, whether the disk cache had it, seconds.
    public internal(set) var kernelBuildLog: [String] = []

    /// Device-to-host reads made so far (each waits for the queued work): a training step makes one, its figures
    /// (tests count them).
    public internal(set) var hostReads = 0

    // The bfloat16 operand copies of bf16 products (Matmul/BF16Operands.swift).

    /// Storages holding a bf16 copy, oldest first. Entries whose storage died or whose copy was freed are swept
    /// out when copies are evicted or the list grows.
    var bf16Holders: [WeakStorage] = []
    /// Bytes the bf16 operand copies may hold at once: an eighth of the device, halved each time the device fills.
    public var bf16CopyBudget: Int { didSet { trimBF16Copies() } }
    /// Copies are kept only while all tensors together stay below this, three quarters of the device: a model that
    /// needs the memory itself (XL/2 at batch 32) keeps only the newest copies and converts again, rather than grow
    /// its peak.
    public var bf16CopyCeiling: Int { didSet { trimBF16Copies() } }
    /// Copies kept whatever the budget: an input's three products (q, k, v) and an output with its tangent
    /// feeding the next layer's two products find theirs.
    let bf16NewestKept = 4
    /// The storages whose copies the current backend call has handed out. Its kernels are not queued yet, so
    /// neither eviction nor a full device frees these copies; each call that takes copies starts with
    /// `beginBF16Call`.
    var inCallCopies: [ObjectIdentifier] = []

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
        // Build the float32 kernels of the general operations now, so a compiler problem shows at load rather than
        // at the first op.
        for set in Self.kernelsBuiltAtLoad { try buildKernels(set, .float32) }
        allocator.onMemoryPressure = { [unowned self] in dropBF16Copies() }
    }

    /// The kernel sets of the general operations (the rest are built on first use).
    static let kernelsBuiltAtLoad: [any KernelSet.Type] = [ElementwiseKernels.self, ShapingKernels.self, ReductionKernels.self,
                                                             SoftmaxKernels.self, RMSNormKernels.self, RMSNormBackwardKernels.self,
                                                             ScaledSumKernels.self, RandomKernels.self, OptimizerKernels.self,
                                                             ConversionKernels.self]
}
