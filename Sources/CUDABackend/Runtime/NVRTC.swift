#if canImport(Glibc)
import Glibc
#endif

/// NVRTC, the run-time CUDA C++ compiler, bound at run time (libnvrtc.so.13, then .12, then unversioned).
/// The kernels of this module are compiled once per process (and cached on disk, see `KernelCache`).
final class NVRTC {
    typealias Result = Int32
    let library: DynamicLibrary
    let version: (major: Int, minor: Int)

    let nvrtcVersion: @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Result
    let nvrtcGetErrorString: @convention(c) (Result) -> UnsafePointer<CChar>?
    let nvrtcCreateProgram: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?,
                                            Int32, UnsafePointer<UnsafePointer<CChar>?>?,
                                            UnsafePointer<UnsafePointer<CChar>?>?) -> Result
    let nvrtcCompileProgram: @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Result
    let nvrtcDestroyProgram: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Result
    let nvrtcGetProgramLogSize: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Result
    let nvrtcGetProgramLog: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Result
    let nvrtcGetCUBINSize: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Result
    let nvrtcGetCUBIN: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Result
    let nvrtcGetPTXSize: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Result
    let nvrtcGetPTX: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Result
    let nvrtcGetNumSupportedArchs: (@convention(c) (UnsafeMutablePointer<Int32>) -> Result)?
    let nvrtcGetSupportedArchs: (@convention(c) (UnsafeMutablePointer<Int32>) -> Result)?

    init() throws {
        let names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        // NVRTC opens its builtins library by name at compile time; preloading it from NVRTC's own folder makes
        // that work where the folder is not on the linker's path.
        let builtins = (0...9).map { "libnvrtc-builtins.so.13.\($0)" } + (0...9).map { "libnvrtc-builtins.so.12.\($0)" }
        let lib = try DynamicLibrary.require("NVRTC", names, preload: builtins)
        library = lib
        nvrtcVersion = try lib.symbol("nvrtcVersion")
        nvrtcGetErrorString = try lib.symbol("nvrtcGetErrorString")
        nvrtcCreateProgram = try lib.symbol("nvrtcCreateProgram")
        nvrtcCompileProgram = try lib.symbol("nvrtcCompileProgram")
        nvrtcDestroyProgram = try lib.symbol("nvrtcDestroyProgram")
        nvrtcGetProgramLogSize = try lib.symbol("nvrtcGetProgramLogSize")
        nvrtcGetProgramLog = try lib.symbol("nvrtcGetProgramLog")
        nvrtcGetCUBINSize = try lib.symbol("nvrtcGetCUBINSize")
        nvrtcGetCUBIN = try lib.symbol("nvrtcGetCUBIN")
        nvrtcGetPTXSize = try lib.symbol("nvrtcGetPTXSize")
        nvrtcGetPTX = try lib.symbol("nvrtcGetPTX")
        nvrtcGetNumSupportedArchs = lib.optionalSymbol("nvrtcGetNumSupportedArchs")
        nvrtcGetSupportedArchs = lib.optionalSymbol("nvrtcGetSupportedArchs")
        var major: Int32 = 0, minor: Int32 = 0
        _ = nvrtcVersion(&major, &minor)
        version = (Int(major), Int(minor))
    }

    private func describe(_ r: Result) -> String {
        nvrtcGetErrorString(r).map { String(cString: $0) } ?? "nvrtcResult \(r)"
    }

    private func check(_ r: Result, _ function: String) throws {
        if r != 0 { throw CUDAError("NVRTC: \(function) failed: \(describe(r))") }
    }

    /// The virtual architectures this NVRTC can compile for (e.g. [75, 80, 86, 89, 90, 100, 120]).
    var supportedArchitectures: [Int] {
        guard let count = nvrtcGetNumSupportedArchs, let list = nvrtcGetSupportedArchs else { return [] }
        var n: Int32 = 0
        guard count(&n) == 0, n > 0 else { return [] }
        var archs = [Int32](repeating: 0, count: Int(n))
        guard list(&archs) == 0 else { return [] }
        return archs.map(Int.init)
    }

    /// What to compile for a device of compute capability `arch` (e.g. 90): machine code (a CUBIN) when NVRTC
    /// knows the architecture, else PTX for the newest older one it knows, which the driver compiles.
    func target(for arch: Int) -> (option: String, cubin: Bool) {
        let known = supportedArchitectures
        if known.isEmpty || known.contains(arch) { return (Self.machineCodeOption(arch), true) }
        let older = known.filter { $0 <= arch }.max() ?? known.min()!
        return ("--gpu-architecture=compute_\(older)", false)
    }

    /// The option for machine code of compute capability `arch`: 9.0 as sm_90a, whose machine code runs on 9.0 devices
    /// alone and has Hopper's own instructions (wgmma: the flash kernels' FP_WG); other kernels compile as for sm_90.
    static func machineCodeOption(_ arch: Int) -> String { "--gpu-architecture=sm_\(arch)\(arch == 90 ? "a" : "")" }

    /// Compiles `source` and returns the image (CUBIN or NUL-terminated PTX) and the compiler's log.
    func compile(source: String, name: String, options: [String], cubin: Bool) throws -> (image: [UInt8], log: String) {
        var program: OpaquePointer? = nil
        try check(nvrtcCreateProgram(&program, source, name, 0, nil, nil), "nvrtcCreateProgram(\(name))")
        defer { _ = nvrtcDestroyProgram(&program) }
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        let result = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { buf in
            nvrtcCompileProgram(program, Int32(buf.count), buf.baseAddress)
        }
        var logSize = 0
        _ = nvrtcGetProgramLogSize(program, &logSize)
        var log = ""
        if logSize > 1 {
            var buf = [CChar](repeating: 0, count: logSize + 1)
            _ = nvrtcGetProgramLog(program, &buf)
            log = String(cString: buf)
        }
        if result != 0 {
            throw CUDAError("NVRTC: nvrtcCompileProgram(\(name)) failed: \(describe(result))\n\(log)")
        }
        var size = 0
        try check(cubin ? nvrtcGetCUBINSize(program, &size) : nvrtcGetPTXSize(program, &size),
                  cubin ? "nvrtcGetCUBINSize" : "nvrtcGetPTXSize")
        var image = [CChar](repeating: 0, count: size)
        try check(cubin ? nvrtcGetCUBIN(program, &image) : nvrtcGetPTX(program, &image),
                  cubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX")
        return (image.map { UInt8(bitPattern: $0) }, log)
    }
}
