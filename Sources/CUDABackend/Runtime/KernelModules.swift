#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// One kernel family: a `.cu` file of this module with the headers it includes, as NVRTC compiles it. The
/// families (`KernelFamily.all`) and their kernel sets are generated at build time from the `.cu` files by
/// CUDAKernelTool (Plugins/CUDAKernelPlugin); nothing is read from disk at run time.
struct KernelFamily: Sendable {
    let name: String
    /// Compiled once per element type (kernels named `name_f32` / `name_f64`, `scalar_t` the element type), or
    /// once as float32 (float32-only kernels, or kernels whose types are fixed).
    let perElementType: Bool
    let source: String

    var elementTypes: [DType] { perElementType ? [.float32, .float64] : [.float32] }

    /// The element type a module of this family is built for when `dtype` is asked for.
    func moduleType(_ dtype: DType) -> DType { perElementType ? dtype : .float32 }

    func moduleName(_ dtype: DType) -> String { "tvm_\(name)\(perElementType ? "_" + dtype.kernelSuffix : "").cu" }

    /// NVRTC options besides the target architecture.
    func options(_ dtype: DType) -> [String] {
        ["--std=c++17", "-default-device"] + (perElementType && dtype == .float64 ? ["-DTVM_FLOAT64"] : [])
    }
}

extension DType {
    /// The suffix of kernel names built for this element type (common.cuh's TVM_EXPORT_NAME).
    var kernelSuffix: String { self == .float32 ? "f32" : "f64" }
}

/// A kernel of a loaded module, with what its declaration says (`__launch_bounds__`) and the element type of its
/// module (the type of its `scalar_t` arguments).
struct KernelFunction {
    let handle: Handle
    /// The exported name (with the element type's suffix), for messages and the profiler.
    let name: String
    let dtype: DType
    /// The most threads per block it was compiled for, and the blocks per multiprocessor its registers were
    /// capped for (nil: none).
    let threads: Int
    let minBlocks: Int?
}

/// A compiled and loaded module of one family and element type, from which a kernel set resolves its kernels.
struct KernelModule {
    let handle: Handle
    let family: KernelFamily
    let dtype: DType
    let driver: Driver

    /// The kernel `name` (its declared name; the element type's suffix is added here).
    func function(_ name: String, threads: Int, minBlocks: Int? = nil) throws -> KernelFunction {
        let exported = family.perElementType ? "\(name)_\(dtype.kernelSuffix)" : name
        var f: Handle? = nil
        try driver.check(driver.cuModuleGetFunction(&f, handle, exported), "cuModuleGetFunction(\(exported))")
        guard let f else { throw CUDAError("CUDA driver: cuModuleGetFunction(\(exported)) returned no function") }
        return KernelFunction(handle: f, name: exported, dtype: dtype, threads: threads, minBlocks: minBlocks)
    }
}

/// The kernels of one family resolved in one module (generated: one class per `.cu` file, a typed `launch`
/// per kernel).
protocol KernelSet: AnyObject {
    static var family: KernelFamily { get }
    init(_ module: KernelModule) throws
    /// Every kernel of the set, for resource reports.
    var functions: [KernelFunction] { get }
    /// Whatever the kernels need set once their module is loaded (the flash kernels' shared memory opt-in).
    func prepare(on backend: CUDABackend) throws
}

extension KernelSet {
    func prepare(on backend: CUDABackend) throws {}
}

/// A built kernel set in the backend's cache.
struct KernelSetKey: Hashable {
    let set: ObjectIdentifier
    let dtype: DType
}

extension CUDABackend {
    /// The kernel set `type` for `dtype`, compiled (or loaded from the disk cache) on first use.
    @inline(__always)
    func kernels<K: KernelSet>(_ type: K.Type, _ dtype: DType) -> K {
        let key = KernelSetKey(set: ObjectIdentifier(type), dtype: K.family.moduleType(dtype))
        if let k = moduleMutex.withLock({ kernelSets[key] }) { return unsafeDowncast(k, to: K.self) }
        do { return try buildKernels(type, dtype) } catch { fatalError("\(error)") }
    }

    @discardableResult
    func buildKernels<K: KernelSet>(_ type: K.Type, _ dtype: DType) throws -> K {
        try moduleMutex.withLock {
            let key = KernelSetKey(set: ObjectIdentifier(type), dtype: K.family.moduleType(dtype))
            if let k = kernelSets[key] { return unsafeDowncast(k, to: K.self) }
            let k = try K(loadModule(K.family, key.dtype))
            try k.prepare(on: self)
            kernelSets[key] = k
            builtFunctions += k.functions
            return k
        }
    }

    /// Compiles one family for one element type (or takes the image from the disk cache) and loads it.
    func loadModule(_ family: KernelFamily, _ dtype: DType) throws -> KernelModule {
        let start = Self.now()
        let options = [target.option] + family.options(dtype)
        let key = KernelCache.moduleKey(source: family.source, options: options, nvrtc: nvrtc.version, cubin: target.cubin)
        let moduleName = family.moduleName(dtype)
        var image: [UInt8]
        var cached = false
        if let c = KernelCache.load(key) { image = c; cached = true } else {
            image = try nvrtc.compile(source: family.source, name: moduleName, options: options, cubin: target.cubin).image
            KernelCache.store(key, image)
        }
        ensureCurrent()
        var module: Handle? = nil
        var r = image.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress) }
        if r != 0 && cached {
            // A stale or damaged cache entry: compile afresh.
            image = try nvrtc.compile(source: family.source, name: moduleName, options: options, cubin: target.cubin).image
            KernelCache.store(key, image)
            cached = false
            r = image.withUnsafeBytes { driver.cuModuleLoadData(&module, $0.baseAddress) }
        }
        try driver.check(r, "cuModuleLoadData(\(moduleName))")
        guard let module else { throw CUDAError("CUDA driver: cuModuleLoadData(\(moduleName)) returned no module") }
        let seconds = Self.now() - start
        kernelBuildSeconds += seconds
        kernelBuildLog.append("\(moduleName): \(cached ? "from disk cache" : "compiled"), \(Int(seconds * 1000)) ms")
        return KernelModule(handle: module, family: family, dtype: dtype, driver: driver)
    }

    /// Builds every kernel set for both element types now (the tests and benchmarks use this); the flash kernels
    /// only where the GPU can run them.
    public func buildAllKernels() throws {
        for set in allKernelSets where ObjectIdentifier(set) != ObjectIdentifier(FlashAttentionKernels.self) || supportsFlashAttention {
            for dtype in set.family.elementTypes { try buildKernels(set, dtype) }
        }
    }

    /// Registers and local (spilled) bytes per thread of every kernel built so far, one line each.
    public func kernelResourceReport() -> [String] {
        moduleMutex.withLock {
            builtFunctions.map { f -> String in
                var regs: Int32 = 0, local: Int32 = 0
                _ = driver.cuFuncGetAttribute(&regs, Driver.funcAttrNumRegs, f.handle)
                _ = driver.cuFuncGetAttribute(&local, Driver.funcAttrLocalSizeBytes, f.handle)
                return "\(f.name): \(regs) registers, \(local) bytes local"
            }.sorted()
        }
    }

    /// Compiles every kernel family with NVRTC alone (no driver or GPU needed) for `architecture` (e.g. 90),
    /// returning one line per module with ptxas' report of each kernel. For checking the kernels on machines
    /// without a GPU. `ptxDirectory`: also write each module's PTX there (`<module>.ptx`, for comparing the
    /// compiled code of two versions with scripts/split-ptx.py). `cacheDirectory`: also keep each image there under
    /// the key a process on a GPU of that architecture looks for (`KernelCache`), so that with the same NVRTC major
    /// and minor version and this folder as TVM_CUDA_CACHE_DIR it loads them instead of compiling (about a minute on
    /// a fresh device machine).
    public static func compileKernelsWithoutDevice(architecture: Int = 90, ptxDirectory: String? = nil,
                                                   cacheDirectory: String? = nil) throws -> [String] {
        let nvrtc = try NVRTC()
        var lines: [String] = []
        for family in KernelFamily.all {
            for dtype in family.elementTypes {
                let start = now()
                let options = [NVRTC.machineCodeOption(architecture)] + family.options(dtype)
                let name = family.moduleName(dtype)
                let (image, log) = try nvrtc.compile(source: family.source, name: name, options: options + ["--ptxas-options=-v"],
                                                     cubin: true)
                lines.append("\(name): \(image.count) bytes in \(Int((now() - start) * 1000)) ms" + (log.isEmpty ? "" : "\n\(log)"))
                if let cacheDirectory {
                    // ptxas' report option changes the log, not the image.
                    let key = KernelCache.moduleKey(source: family.source, options: options, nvrtc: nvrtc.version, cubin: true)
                    guard KernelCache.store(key, image, in: cacheDirectory) else { throw CUDAError("cannot write \(cacheDirectory)") }
                }
                if let ptxDirectory {
                    let ptx = try nvrtc.compile(source: family.source, name: name, options: options, cubin: false).image
                    let path = "\(ptxDirectory)/\(name.dropLast(3)).ptx"
                    guard let f = fopen(path, "wb") else { throw CUDAError("cannot write \(path)") }
                    defer { fclose(f) }
                    guard fwrite(ptx, 1, Swift.max(ptx.count - 1, 0), f) == Swift.max(ptx.count - 1, 0) else {
                        throw CUDAError("cannot write \(path)")
                    }
                }
            }
        }
        return lines
    }
}
