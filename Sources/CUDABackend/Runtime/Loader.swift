#if canImport(Glibc)
import Glibc
#endif

/// Why the CUDA backend could not start or an operation failed. The message names the library, the function
/// and the library's own error string.
public struct CUDAError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A shared library opened at run time. Nothing CUDA-related is needed to build this module: the driver,
/// NVRTC and cuBLAS are found with dlopen when `CUDABackend.load()` runs.
struct DynamicLibrary {
    let handle: UnsafeMutableRawPointer
    let path: String

    /// Directories searched after the dynamic linker's own search: TVM_CUDA_LIB_DIRS (colon-separated),
    /// CUDA_HOME / CUDA_PATH, then the usual toolkit and driver locations.
    static var searchDirectories: [String] {
        var dirs: [String] = []
        if let extra = getenv("TVM_CUDA_LIB_DIRS") {
            dirs += String(cString: extra).split(separator: ":").map(String.init)
        }
        for variable in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
            if let root = getenv(variable) { dirs += ["\(String(cString: root))/lib64", "\(String(cString: root))/lib"] }
        }
        dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda-13/lib64", "/usr/local/cuda-12/lib64",
                 "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu",
                 "/usr/lib64", "/usr/lib/wsl/lib"]
        return dirs
    }

    /// Tries each name with the dynamic linker's search first (LD_LIBRARY_PATH, ld.so.cache), then each name in
    /// each directory by absolute path. `preload` names libraries of the same directory to open first (with
    /// RTLD_GLOBAL), for libraries whose dependencies are not on the linker's path (cuBLAS needs cuBLASLt).
    static func open(_ names: [String], preload: [String] = []) -> (library: DynamicLibrary?, errors: [String]) {
        var errors: [String] = []
        func attempt(_ path: String, flags: Int32 = RTLD_NOW | RTLD_LOCAL) -> DynamicLibrary? {
            if let h = dlopen(path, flags) { return DynamicLibrary(handle: h, path: path) }
            if let e = dlerror() { errors.append(String(cString: e)) }
            return nil
        }
        for name in names {
            for p in preload { _ = dlopen(p, RTLD_NOW | RTLD_GLOBAL) }
            if let lib = attempt(name) { return (lib, errors) }
        }
        for dir in searchDirectories {
            for name in names {
                let path = "\(dir)/\(name)"
                guard access(path, F_OK) == 0 else { continue }
                for p in preload { _ = dlopen("\(dir)/\(p)", RTLD_NOW | RTLD_GLOBAL) }
                if let lib = attempt(path) { return (lib, errors) }
            }
        }
        return (nil, errors)
    }

    /// A CUDA toolkit library (NVRTC, cuBLAS) or a clear error saying where it was looked for.
    static func require(_ what: String, _ names: [String], preload: [String] = []) throws -> DynamicLibrary {
        let (lib, errors) = open(names, preload: preload)
        guard let lib else {
            throw CUDAError("\(what) not found (tried \(names.joined(separator: ", ")) on the linker path and in "
                            + "/usr/local/cuda/lib64; set TVM_CUDA_LIB_DIRS to its folder)"
                            + (errors.isEmpty ? "" : ": \(errors[0])"))
        }
        return lib
    }

    /// The copies of `file` that pip installs with PyTorch (site-packages/nvidia/*/lib of virtual environments,
    /// conda, /opt, /usr/local, /usr and ~/.local), in that order.
    static func pythonWheelFiles(_ file: String) -> [String] {
        var roots: [String] = []
        if let v = environment("VIRTUAL_ENV") { roots.append(v) }
        if let c = environment("CONDA_PREFIX") { roots.append(c) }
        roots += ["/opt/*/.venv", "/opt/*", "/usr/local", "/usr"]
        if let home = environment("HOME") { roots.append(home + "/.local") }
        let patterns = roots.flatMap { root in
            ["site-packages", "dist-packages"].map { "\(root)/lib/python3*/\($0)/nvidia/*/lib/\(file)" }
        }
        var found: [String] = []
        for pattern in patterns {
            var g = glob_t()
            defer { globfree(&g) }
            guard glob(pattern, 0, nil, &g) == 0 else { continue }
            for i in 0..<Int(g.gl_pathc) { if let p = g.gl_pathv[i] { found.append(String(cString: p)) } }
        }
        return found
    }

    func symbol<T>(_ name: String) throws -> T {
        guard let p = dlsym(handle, name) else {
            throw CUDAError("\(path): symbol \(name) not found (library too old?)")
        }
        return unsafeBitCast(p, to: T.self)
    }

    func optionalSymbol<T>(_ name: String) -> T? {
        guard let p = dlsym(handle, name) else { return nil }
        return unsafeBitCast(p, to: T.self)
    }
}

/// A tiny mutex (pthread), for the allocator's free lists and the launch path.
final class Mutex {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        m = .allocate(capacity: 1)
        pthread_mutex_init(m, nil)
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    @inline(__always) func lock() { pthread_mutex_lock(m) }
    @inline(__always) func unlock() { pthread_mutex_unlock(m) }
    @inline(__always) func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}

/// Reads an environment variable as a string (nil when unset).
func environment(_ name: String) -> String? {
    guard let v = getenv(name) else { return nil }
    return String(cString: v)
}
