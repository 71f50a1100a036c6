#if canImport(Glibc)
import Glibc
#endif

/// A BLAS found at run time (Debian's OpenBLAS), so that building needs nothing but the toolchain.
/// Without one, matrix products use the built-in kernel (`CPUBackend.blasNotice` says so where it matters).
enum BLAS {
    typealias Sgemm = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Float,
                                      UnsafePointer<Float>?, Int32, UnsafePointer<Float>?, Int32, Float,
                                      UnsafeMutablePointer<Float>?, Int32) -> Void
    typealias Dgemm = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Double,
                                      UnsafePointer<Double>?, Int32, UnsafePointer<Double>?, Int32, Double,
                                      UnsafeMutablePointer<Double>?, Int32) -> Void

    struct Library {
        let name: String
        let sgemm: Sgemm
        let dgemm: Dgemm
    }

    /// TVM_BLAS_LIBRARY=PATH first (e.g. the OpenBLAS that NumPy's wheels bundle, for comparisons), then the system's.
    static var candidates: [String] {
        (getenv("TVM_BLAS_LIBRARY").map { [String(cString: $0)] } ?? []) + ["libopenblas.so.0", "libopenblas.so", "libblas.so.3"]
    }

    /// Loaded once. TVM_NO_BLAS=1 forces the fallback (for tests and comparisons).
    static let library: Library? = {
        if getenv("TVM_NO_BLAS") != nil { return nil }
        for name in candidates {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            // SciPy's OpenBLAS builds (inside NumPy's wheels) prefix every symbol with "scipy_".
            for prefix in ["", "scipy_"] {
                guard let s = dlsym(handle, prefix + "cblas_sgemm"), let d = dlsym(handle, prefix + "cblas_dgemm") else { continue }
                // One BLAS thread per call: CPUKernels splits products across cores itself. OpenBLAS's own pool
                // busy-waits between calls and then fights our elementwise workers for the same cores.
                if let setThreads = dlsym(handle, prefix + "openblas_set_num_threads") {
                    typealias SetThreads = @convention(c) (Int32) -> Void
                    unsafeBitCast(setThreads, to: SetThreads.self)(1)
                }
                return Library(name: name, sgemm: unsafeBitCast(s, to: Sgemm.self), dgemm: unsafeBitCast(d, to: Dgemm.self))
            }
            dlclose(handle)
        }
        return nil
    }()

    static let rowMajor: Int32 = 101, noTrans: Int32 = 111, trans: Int32 = 112
}
