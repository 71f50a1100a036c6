#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// cuBLASLt, bound at run time (libcublasLt.so.13, then .12): the products of linear layers, whose epilogues add
/// the bias to the product (forward, and with the GELU after it where nothing is differentiated) and sum the
/// output cotangent's columns into the bias gradient (backward), each saving a separate pass over an
/// activation-sized matrix. Signatures and enum values follow cublasLt.h of CUDA 12 and 13 (unchanged between them).
final class CUBLASLt {
    typealias Status = Int32
    let library: DynamicLibrary

    /// cublasLtCreate(cublasLtHandle_t* handle).
    let cublasLtCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    /// size_t cublasLtGetVersion(void).
    let cublasLtGetVersion: @convention(c) () -> Int
    let cublasLtGetStatusString: (@convention(c) (Status) -> UnsafePointer<CChar>?)?
    /// cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t computeType, cudaDataType_t scaleType).
    let cublasLtMatmulDescCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> Status
    let cublasLtMatmulDescDestroy: @convention(c) (OpaquePointer?) -> Status
    /// cublasLtMatmulDescSetAttribute(desc, cublasLtMatmulDescAttributes_t attr, const void* buf, size_t sizeInBytes).
    let cublasLtMatmulDescSetAttribute: @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer?, Int) -> Status
    /// cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows, uint64_t cols,
    /// int64_t ld), column-major unless told otherwise.
    let cublasLtMatrixLayoutCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> Status
    let cublasLtMatrixLayoutDestroy: @convention(c) (OpaquePointer?) -> Status
    /// cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref).
    let cublasLtMatmulPreferenceCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    let cublasLtMatmulPreferenceDestroy: @convention(c) (OpaquePointer?) -> Status
    /// cublasLtMatmulPreferenceSetAttribute(pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    /// size_t sizeInBytes).
    let cublasLtMatmulPreferenceSetAttribute: @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer?, Int) -> Status
    /// cublasLtMatmulAlgoGetHeuristic(handle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, preference,
    /// int requestedAlgoCount, cublasLtMatmulHeuristicResult_t results[], int* returnAlgoCount).
    let cublasLtMatmulAlgoGetHeuristic: @convention(c) (
        OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?,
        Int32, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>) -> Status
    /// cublasLtMatmul(handle, computeDesc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc,
    /// const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceSizeInBytes, cudaStream_t stream).
    let cublasLtMatmul: @convention(c) (
        OpaquePointer?, OpaquePointer?, UnsafeRawPointer?, UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer?,
        OpaquePointer?, UnsafeRawPointer?, UnsafeRawPointer?, OpaquePointer?, UnsafeMutableRawPointer?, OpaquePointer?,
        UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, OpaquePointer?) -> Status

    // cublasLtMatmulDescAttributes_t: TRANSA and TRANSB (int32_t), EPILOGUE (uint32_t), BIAS_POINTER (void*).
    static let descTransA: Int32 = 3, descTransB: Int32 = 4, descEpilogue: Int32 = 7, descBiasPointer: Int32 = 8
    // cublasLtMatmulPreferenceAttributes_t: MAX_WORKSPACE_BYTES (uint64_t), MIN_ALIGNMENT_A/B/C/D_BYTES (uint32_t).
    static let preferenceMaxWorkspaceBytes: Int32 = 1
    static let preferenceMinAlignments: [Int32] = [5, 6, 7, 8]
    /// CUBLAS_STATUS_NOT_SUPPORTED: the heuristic has nothing for this configuration.
    static let statusNotSupported: Status = 15
    /// cublasLtMatmulHeuristicResult_t is { cublasLtMatmulAlgo_t algo (uint64_t[8]); size_t workspaceSize;
    /// cublasStatus_t state; float wavesCount; int reserved[4]; }: 96 bytes.
    static let heuristicResultBytes = 96, heuristicWorkspaceOffset = 64, heuristicStateOffset = 72
    /// The most workspace a product may use (taken from the caching allocator, as much as the chosen algorithm needs).
    static let maxWorkspaceBytes = 32 << 20

    init() throws {
        let lib = try DynamicLibrary.require("cuBLASLt", ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])
        library = lib
        cublasLtCreate = try lib.symbol("cublasLtCreate")
        cublasLtGetVersion = try lib.symbol("cublasLtGetVersion")
        cublasLtGetStatusString = lib.optionalSymbol("cublasLtGetStatusString")
        cublasLtMatmulDescCreate = try lib.symbol("cublasLtMatmulDescCreate")
        cublasLtMatmulDescDestroy = try lib.symbol("cublasLtMatmulDescDestroy")
        cublasLtMatmulDescSetAttribute = try lib.symbol("cublasLtMatmulDescSetAttribute")
        cublasLtMatrixLayoutCreate = try lib.symbol("cublasLtMatrixLayoutCreate")
        cublasLtMatrixLayoutDestroy = try lib.symbol("cublasLtMatrixLayoutDestroy")
        cublasLtMatmulPreferenceCreate = try lib.symbol("cublasLtMatmulPreferenceCreate")
        cublasLtMatmulPreferenceDestroy = try lib.symbol("cublasLtMatmulPreferenceDestroy")
        cublasLtMatmulPreferenceSetAttribute = try lib.symbol("cublasLtMatmulPreferenceSetAttribute")
        cublasLtMatmulAlgoGetHeuristic = try lib.symbol("cublasLtMatmulAlgoGetHeuristic")
        cublasLtMatmul = try lib.symbol("cublasLtMatmul")
    }

    /// Sets a descriptor attribute from a value of exactly the attribute's C type (cuBLASLt checks the size).
    func setDescAttribute<T>(_ desc: OpaquePointer, _ attribute: Int32, _ value: T, _ what: String) {
        withUnsafeBytes(of: value) {
            must(cublasLtMatmulDescSetAttribute(desc, attribute, $0.baseAddress, $0.count), "cublasLtMatmulDescSetAttribute(\(what))")
        }
    }

    private func setPreference<T>(_ preference: OpaquePointer, _ attribute: Int32, _ value: T, _ what: String) {
        withUnsafeBytes(of: value) {
            must(cublasLtMatmulPreferenceSetAttribute(preference, attribute, $0.baseAddress, $0.count),
                 "cublasLtMatmulPreferenceSetAttribute(\(what))")
        }
    }

    /// Descriptors and the heuristic's algorithm for one product with an epilogue, or nil where the heuristic has
    /// none (cuBLASLt does not support that configuration on this device). `vector` is the bias (or bias gradient)
    /// address (0: none), whose alignment the heuristic reads from the descriptor. C, where read, has D's layout.
    func plan(_ handle: OpaquePointer, _ key: LinearProductKey, vector: DevicePointer) -> LinearProduct? {
        let type = key.dtype == .float32 ? CUBLAS.r32F : CUBLAS.r64F
        // bf16 products: A and B are bfloat16 copies; D and the bias (but for an output kept as its bf16 copy alone,
        // whose bias is the bias's bf16 copy: cuBLASLt takes D's type for it) and the accumulation stay float32.
        let inputType = key.bf16 ? CUBLAS.r16BF : type
        let compute = key.dtype == .float64 ? CUBLAS.compute64F
            : (key.tf32 && !key.bf16 ? CUBLAS.compute32FFastTF32 : CUBLAS.compute32F)
        let (m, n, k, e) = (key.m, key.n, key.k, key.epilogue)
        var desc: OpaquePointer? = nil
        must(cublasLtMatmulDescCreate(&desc, compute, type), "cublasLtMatmulDescCreate")
        setDescAttribute(desc!, CUBLASLt.descTransA, e.transA ? CUBLAS.opT : CUBLAS.opN, "TRANSA")
        setDescAttribute(desc!, CUBLASLt.descTransB, e.transB ? CUBLAS.opT : CUBLAS.opN, "TRANSB")
        setDescAttribute(desc!, CUBLASLt.descEpilogue, e.value, "EPILOGUE")
        if vector != 0 { setDescAttribute(desc!, CUBLASLt.descBiasPointer, vector, "BIAS_POINTER") }
        // Layouts as stored (before the transposes), column-major, leading dimension = stored rows.
        func layout(_ rows: Int, _ cols: Int, _ what: String, _ type: Int32) -> OpaquePointer {
            var l: OpaquePointer? = nil
            must(cublasLtMatrixLayoutCreate(&l, type, UInt64(rows), UInt64(cols), Int64(rows)),
                 "cublasLtMatrixLayoutCreate(\(what) \(rows)x\(cols))")
            return l!
        }
        let a = e.transA ? layout(k, m, "A", inputType) : layout(m, k, "A", inputType)
        let b = e.transB ? layout(n, k, "B", inputType) : layout(k, n, "B", inputType)
        let d = layout(m, n, "D", key.bf16Output ? CUBLAS.r16BF : type)

        var preference: OpaquePointer? = nil
        must(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        defer { _ = cublasLtMatmulPreferenceDestroy(preference) }
        setPreference(preference!, CUBLASLt.preferenceMaxWorkspaceBytes, UInt64(CUBLASLt.maxWorkspaceBytes), "MAX_WORKSPACE_BYTES")
        for attribute in CUBLASLt.preferenceMinAlignments {
            setPreference(preference!, attribute, UInt32(key.alignment), "MIN_ALIGNMENT_BYTES")
        }
        let result = UnsafeMutableRawPointer.allocate(byteCount: CUBLASLt.heuristicResultBytes, alignment: 8)
        result.initializeMemory(as: UInt8.self, repeating: 0, count: CUBLASLt.heuristicResultBytes)
        var found: Int32 = 0
        let status = cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, d, d, preference, 1, result, &found)
        let state = result.load(fromByteOffset: CUBLASLt.heuristicStateOffset, as: Int32.self)
        // A bf16 D is an option: any refusal of it plans nothing (the caller takes the float32 path).
        if status == CUBLASLt.statusNotSupported || (status != 0 && key.bf16Output) || (status == 0 && (found < 1 || state != 0)) {
            result.deallocate()
            _ = cublasLtMatmulDescDestroy(desc)
            for l in [a, b, d] { _ = cublasLtMatrixLayoutDestroy(l) }
            return nil
        }
        must(status, "cublasLtMatmulAlgoGetHeuristic(\(e) \(m)x\(n)x\(k))")
        let workspace = result.load(fromByteOffset: CUBLASLt.heuristicWorkspaceOffset, as: Int.self)
        return LinearProduct(desc: desc!, a: a, b: b, d: d, algo: UnsafeRawPointer(result), workspaceBytes: workspace)
    }
}

/// The products of a linear layer that cuBLASLt fuses with the bias, in cuBLAS's column-major terms (a row-major
/// matrix [r, c] is the column-major [c, r] with leading dimension c), D = op(A) op(B) of size m x n with inner size k.
enum LinearEpilogue: Hashable, CustomStringConvertible {
    /// Row-major y [rows, out] = x W^T + b is column-major y^T [out, rows] = W'^T x' with W' = W^T stored [in, out]
    /// and x' = x^T stored [in, rows]: A is the weight (transposed), B the input, m = out, n = rows, k = in, and the
    /// bias (one value per row of D, i.e. per output feature, broadcast over the columns) is CUBLASLT_EPILOGUE_BIAS.
    case bias
    /// `bias`, then GELU on every element: CUBLASLT_EPILOGUE_GELU_BIAS, whose GELU cuBLAS documents as the tanh
    /// approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the same function as UnaryOp.gelu.
    case biasGELU
    /// Row-major gW [out, in] = g^T x is column-major gW^T [in, out] = x' g'^T with x' = x^T stored [in, rows] and
    /// g' = g^T stored [out, rows]: A is the input, B the output cotangent (transposed), m = in, n = out, k = rows,
    /// and the bias gradient (op(B) summed over k: one value per column of D, the column sums of g) is
    /// CUBLASLT_EPILOGUE_BGRADB.
    case biasGradient
    /// Row-major gx [rows, in] = g W + C is column-major gx^T [in, rows] = W' g' + C' with W' = W^T stored [in, out]
    /// and g' = g^T stored [out, rows]: A is the weight, B the output cotangent, neither transposed, m = in, n = rows,
    /// k = out, C (a gradient already summed for the input) read beside D with beta = 1: CUBLASLT_EPILOGUE_DEFAULT.
    case accumulate

    /// The cublasLtEpilogue_t value: DEFAULT = 1, BIAS = 4, GELU_BIAS = GELU (32) | BIAS, BGRADB = 512.
    var value: UInt32 {
        switch self {
        case .bias: return 4
        case .biasGELU: return 36
        case .biasGradient: return 512
        case .accumulate: return 1
        }
    }
    /// The forward products read the weight transposed, the weight gradient's the output cotangent.
    var transA: Bool { self == .bias || self == .biasGELU }
    var transB: Bool { self == .biasGradient }
    var description: String {
        switch self {
        case .bias: return "gemm+bias"
        case .biasGELU: return "gemm+bias+gelu"
        case .biasGradient: return "gemm+bgradb"
        case .accumulate: return "gemm+c"
        }
    }
}

/// What a prepared product depends on. `alignment` is the largest power of two (up to 256) dividing every operand's
/// address: the heuristic picks algorithms for it.
struct LinearProductKey: Hashable {
    let epilogue: LinearEpilogue
    let dtype: DType
    let tf32: Bool
    let bf16: Bool
    /// D written in bfloat16 (an output kept as its bf16 copy alone).
    let bf16Output: Bool
    let m: Int, n: Int, k: Int
    let alignment: Int
}

/// One product prepared once per key: its descriptors and the algorithm the heuristic chose (kept for the process).
final class LinearProduct {
    let desc: OpaquePointer
    let a: OpaquePointer, b: OpaquePointer, d: OpaquePointer
    /// The heuristic result, whose first 64 bytes are the cublasLtMatmulAlgo_t.
    let algo: UnsafeRawPointer
    let workspaceBytes: Int

    init(desc: OpaquePointer, a: OpaquePointer, b: OpaquePointer, d: OpaquePointer, algo: UnsafeRawPointer, workspaceBytes: Int) {
        self.desc = desc
        self.a = a
        self.b = b
        self.d = d
        self.algo = algo
        self.workspaceBytes = workspaceBytes
    }
}

extension CUBLASLt: BLASStatusReporting {
    static let libraryName = "cuBLASLt"
    var statusString: StatusString? { cublasLtGetStatusString }
}
