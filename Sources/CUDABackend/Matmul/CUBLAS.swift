#if canImport(Glibc)
import Glibc
#endif

/// cuBLAS, bound at run time (libcublas.so.13, then .12). Matrix products go through its strided-batched GEMMs.
final class CUBLAS {
    typealias Status = Int32
    let library: DynamicLibrary

    typealias SgemmStridedBatched = @convention(c) (
        OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafePointer<Float>,
        UnsafeRawPointer?, Int32, Int64, UnsafeRawPointer?, Int32, Int64,
        UnsafePointer<Float>, UnsafeMutableRawPointer?, Int32, Int64, Int32) -> Status
    typealias DgemmStridedBatched = @convention(c) (
        OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafePointer<Double>,
        UnsafeRawPointer?, Int32, Int64, UnsafeRawPointer?, Int32, Int64,
        UnsafePointer<Double>, UnsafeMutableRawPointer?, Int32, Int64, Int32) -> Status
    /// cublasGemmStridedBatchedEx(handle, ta, tb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB,
    /// beta, C, Ctype, ldc, strideC, batch, computeType, algo).
    typealias GemmStridedBatchedEx = @convention(c) (
        OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer?,
        UnsafeRawPointer?, Int32, Int32, Int64, UnsafeRawPointer?, Int32, Int32, Int64,
        UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, Int32, Int64, Int32, Int32, Int32) -> Status

    let cublasCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    let cublasSetStream: @convention(c) (OpaquePointer?, OpaquePointer?) -> Status
    let cublasSetMathMode: @convention(c) (OpaquePointer?, Int32) -> Status
    let cublasGetVersion: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>) -> Status
    let cublasGetStatusString: (@convention(c) (Status) -> UnsafePointer<CChar>?)?
    let sgemmStridedBatched: SgemmStridedBatched
    let dgemmStridedBatched: DgemmStridedBatched
    let gemmStridedBatchedEx: GemmStridedBatchedEx

    static let opN: Int32 = 0, opT: Int32 = 1
    static let defaultMath: Int32 = 0
    /// cudaDataType_t values.
    static let r32F: Int32 = 0, r64F: Int32 = 1, r16BF: Int32 = 14
    /// cublasComputeType_t values.
    static let compute32F: Int32 = 68, compute32FFastTF32: Int32 = 77, compute64F: Int32 = 70
    static let gemmDefault: Int32 = -1

    init() throws {
        let names = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
        // cuBLAS needs cuBLASLt from its own folder, which need not be on the linker's path.
        let lib = try DynamicLibrary.require("cuBLAS", names, preload: ["libcublasLt.so.13", "libcublasLt.so.12"])
        library = lib
        cublasCreate = try lib.symbol("cublasCreate_v2")
        cublasSetStream = try lib.symbol("cublasSetStream_v2")
        cublasSetMathMode = try lib.symbol("cublasSetMathMode")
        cublasGetVersion = try lib.symbol("cublasGetVersion_v2")
        cublasGetStatusString = lib.optionalSymbol("cublasGetStatusString")
        sgemmStridedBatched = try lib.symbol("cublasSgemmStridedBatched")
        dgemmStridedBatched = try lib.symbol("cublasDgemmStridedBatched")
        gemmStridedBatchedEx = try lib.symbol("cublasGemmStridedBatchedEx")
    }

}

extension CUBLAS: BLASStatusReporting {
    static let libraryName = "cuBLAS"
    var statusString: StatusString? { cublasGetStatusString }
}

/// cuBLAS and cuBLASLt report failures alike: a cublasStatus_t, named by the library's own function where it
/// has one.
protocol BLASStatusReporting {
    typealias StatusString = @convention(c) (Int32) -> UnsafePointer<CChar>?
    static var libraryName: String { get }
    var statusString: StatusString? { get }
}

extension BLASStatusReporting {
    func describe(_ s: Int32) -> String {
        if let f = statusString, let p = f(s) { return String(cString: p) }
        return "cublasStatus_t \(s)"
    }

    func check(_ s: Int32, _ function: @autoclosure () -> String) throws {
        if s != 0 { throw CUDAError("\(Self.libraryName): \(function()) failed: \(describe(s))") }
    }

    @inline(__always)
    func must(_ s: Int32, _ function: @autoclosure () -> String) {
        if s != 0 { fatalError("\(Self.libraryName): \(function()) failed: \(describe(s))") }
    }
}
