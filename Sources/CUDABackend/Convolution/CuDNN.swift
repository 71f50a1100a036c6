#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// cuDNN 9 (libcudnn.so.9), bound at run time and optional: the convolutions of channels-last images through its
/// legacy convolution API (NHWC tensors, KRSC filters). Signatures and enum values follow cudnn_graph.h, cudnn_ops.h
/// and cudnn_cnn.h of cuDNN 9. Where it is missing the convolutions are im2col kernels and GEMMs (ChannelsLastConvolution.swift).
///
/// libcudnn.so.9 is a shim that opens its sub-libraries (libcudnn_graph, _ops, _cnn, the engines, ...: the set grows
/// with the version) by bare name when first used; where they are not on the linker's path (a pip wheel's folder),
/// every libcudnn_*.so.9 beside the shim is opened first, so that the shim finds them already loaded.
final class CuDNN {
    typealias Status = Int32
    let library: DynamicLibrary
    /// "9.10.2".
    let version: String

    /// size_t cudnnGetVersion(void).
    let cudnnGetVersion: @convention(c) () -> Int
    let cudnnGetErrorString: @convention(c) (Status) -> UnsafePointer<CChar>?
    /// cudnnCreate(cudnnHandle_t* handle).
    let cudnnCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    /// cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId).
    let cudnnSetStream: @convention(c) (OpaquePointer?, OpaquePointer?) -> Status
    /// cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* tensorDesc).
    let cudnnCreateTensorDescriptor: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    /// cudnnSetTensor4dDescriptor(tensorDesc, cudnnTensorFormat_t format, cudnnDataType_t dataType, int n, int c,
    /// int h, int w).
    let cudnnSetTensor4dDescriptor: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, Int32) -> Status
    /// cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* filterDesc).
    let cudnnCreateFilterDescriptor: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    /// cudnnSetFilter4dDescriptor(filterDesc, cudnnDataType_t dataType, cudnnTensorFormat_t format, int k, int c,
    /// int h, int w): the data type comes before the format here, unlike the tensor descriptor.
    let cudnnSetFilter4dDescriptor: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, Int32) -> Status
    /// cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* convDesc).
    let cudnnCreateConvolutionDescriptor: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    /// cudnnSetConvolution2dDescriptor(convDesc, int pad_h, int pad_w, int u, int v, int dilation_h, int dilation_w,
    /// cudnnConvolutionMode_t mode, cudnnDataType_t computeType).
    let cudnnSetConvolution2dDescriptor: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, Int32, Int32,
                                                         Int32) -> Status
    /// cudnnSetConvolutionMathType(convDesc, cudnnMathType_t mathType).
    let cudnnSetConvolutionMathType: @convention(c) (OpaquePointer?, Int32) -> Status
    /// cudnnGetConvolutionForwardAlgorithm_v7(handle, xDesc, wDesc, convDesc, yDesc, int requestedAlgoCount,
    /// int* returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t* perfResults): the heuristic's ranking (nothing run).
    let cudnnGetConvolutionForwardAlgorithm_v7: @convention(c) (
        OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, Int32, UnsafeMutablePointer<Int32>,
        UnsafeMutableRawPointer?) -> Status
    /// cudnnGetConvolutionForwardWorkspaceSize(handle, xDesc, wDesc, convDesc, yDesc, cudnnConvolutionFwdAlgo_t algo,
    /// size_t* sizeInBytes).
    let cudnnGetConvolutionForwardWorkspaceSize: @convention(c) (
        OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, Int32, UnsafeMutablePointer<Int>) -> Status
    /// cudnnFindConvolutionForwardAlgorithmEx(handle, xDesc, const void* x, wDesc, const void* w, convDesc, yDesc,
    /// void* y, int requestedAlgoCount, int* returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t* perfResults,
    /// void* workSpace, size_t workSpaceSizeInBytes): every algorithm run and timed on the given operands (y written).
    let cudnnFindConvolutionForwardAlgorithmEx: @convention(c) (
        OpaquePointer?, OpaquePointer?, UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer?, OpaquePointer?, OpaquePointer?,
        UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<Int32>, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, Int) -> Status
    /// cudnnConvolutionForward(handle, const void* alpha, xDesc, const void* x, wDesc, const void* w, convDesc,
    /// cudnnConvolutionFwdAlgo_t algo, void* workSpace, size_t workSpaceSizeInBytes, const void* beta, yDesc, void* y).
    let cudnnConvolutionForward: @convention(c) (
        OpaquePointer?, UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer?, OpaquePointer?,
        Int32, UnsafeMutableRawPointer?, Int, UnsafeRawPointer?, OpaquePointer?, UnsafeMutableRawPointer?) -> Status

    // cudnnTensorFormat_t, cudnnDataType_t, cudnnConvolutionMode_t, cudnnMathType_t.
    static let formatNHWC: Int32 = 1
    static let dataFloat: Int32 = 0, dataBFloat16: Int32 = 9
    static let crossCorrelation: Int32 = 1
    /// CUDNN_DEFAULT_MATH (0) lets float32 convolutions use TF32 tensor cores on Ampere and later; CUDNN_TENSOR_OP_MATH
    /// (1) permits tensor cores without converting data types; CUDNN_FMA_MATH (3) keeps float32 FMA kernels only.
    static let mathDefault: Int32 = 0, mathTensorOp: Int32 = 1, mathFMA: Int32 = 3
    /// CUDNN_CONVOLUTION_FWD_ALGO_COUNT: the most results the heuristic ranks.
    static let forwardAlgorithmCount = 8
    /// cudnnConvolutionFwdAlgoPerf_t is { cudnnConvolutionFwdAlgo_t algo; cudnnStatus_t status; float time;
    /// size_t memory; cudnnDeterminism_t determinism; cudnnMathType_t mathType; int reserved[3]; }: 48 bytes.
    static let perfBytes = 48, perfStatusOffset = 4, perfMemoryOffset = 16, perfMathTypeOffset = 28
    /// The most workspace a convolution's algorithm may ask for (taken from the caching allocator as needed).
    static let maxWorkspaceBytes = 256 << 20
    /// The workspace the timed search (cudnnTimesAlgorithms) offers the algorithms it runs, once per configuration.
    static let findWorkspaceBytes = 64 << 20

    init(_ lib: DynamicLibrary) throws {
        library = lib
        cudnnGetVersion = try lib.symbol("cudnnGetVersion")
        let v = cudnnGetVersion()
        // cuDNN 9 encodes major * 10000 + minor * 100 + patch.
        version = "\(v / 10000).\(v % 10000 / 100).\(v % 100)"
        guard v >= 90000 else {
            throw CUDAError("cuDNN \(version) at \(lib.path) is too old: TerminalVelocity needs cuDNN 9")
        }
        cudnnGetErrorString = try lib.symbol("cudnnGetErrorString")
        cudnnCreate = try lib.symbol("cudnnCreate")
        cudnnSetStream = try lib.symbol("cudnnSetStream")
        cudnnCreateTensorDescriptor = try lib.symbol("cudnnCreateTensorDescriptor")
        cudnnSetTensor4dDescriptor = try lib.symbol("cudnnSetTensor4dDescriptor")
        cudnnCreateFilterDescriptor = try lib.symbol("cudnnCreateFilterDescriptor")
        cudnnSetFilter4dDescriptor = try lib.symbol("cudnnSetFilter4dDescriptor")
        cudnnCreateConvolutionDescriptor = try lib.symbol("cudnnCreateConvolutionDescriptor")
        cudnnSetConvolution2dDescriptor = try lib.symbol("cudnnSetConvolution2dDescriptor")
        cudnnSetConvolutionMathType = try lib.symbol("cudnnSetConvolutionMathType")
        cudnnGetConvolutionForwardAlgorithm_v7 = try lib.symbol("cudnnGetConvolutionForwardAlgorithm_v7")
        cudnnGetConvolutionForwardWorkspaceSize = try lib.symbol("cudnnGetConvolutionForwardWorkspaceSize")
        cudnnFindConvolutionForwardAlgorithmEx = try lib.symbol("cudnnFindConvolutionForwardAlgorithmEx")
        cudnnConvolutionForward = try lib.symbol("cudnnConvolutionForward")
    }

    /// Opens libcudnn.so.9: TVM_CUDNN_LIB (the file or its folder) when set, else the first that opens among the
    /// linker's path, the CUDA folders (TVM_CUDA_LIB_DIRS, CUDA_HOME, /usr/local/cuda, the system library folders) and
    /// the cuDNN that pip installs with PyTorch (site-packages/nvidia/cudnn/lib).
    static func load() throws -> CuDNN {
        if let given = environment("TVM_CUDNN_LIB"), !given.isEmpty {
            var st = stat()
            let path = stat(given, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR ? given + "/libcudnn.so.9" : given
            guard let lib = openWithSubLibraries(path) else {
                throw CUDAError("cannot open TVM_CUDNN_LIB=\(given): \(dlerror().map { String(cString: $0) } ?? "?")")
            }
            return try CuDNN(lib)
        }
        // On the linker's path the shim finds its sub-libraries there too.
        if let h = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL) { return try CuDNN(DynamicLibrary(handle: h, path: "libcudnn.so.9")) }
        var errors: [String] = []
        for path in DynamicLibrary.searchDirectories.map({ $0 + "/libcudnn.so.9" }) + DynamicLibrary.pythonWheelFiles("libcudnn.so.9")
        where access(path, F_OK) == 0 {
            if let lib = openWithSubLibraries(path) { return try CuDNN(lib) }
            if let e = dlerror() { errors.append(String(cString: e)) }
        }
        throw CUDAError("libcudnn.so.9 not found on the linker path, in the CUDA folders or in a Python installation's "
                        + "site-packages/nvidia/cudnn/lib; set TVM_CUDNN_LIB to the file or its folder"
                        + (errors.isEmpty ? "" : " (dlopen: \(errors[0]))"))
    }

    /// Opens every libcudnn_*.so.9 in the folder of `path` (in passes, until none more opens: some need others first),
    /// then the shim at `path`.
    static func openWithSubLibraries(_ path: String) -> DynamicLibrary? {
        let folder = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        var pending: [String] = []
        var g = glob_t()
        if glob(folder + "/libcudnn_*.so.9", 0, nil, &g) == 0 {
            for i in 0..<Int(g.gl_pathc) { if let p = g.gl_pathv[i] { pending.append(String(cString: p)) } }
        }
        globfree(&g)
        var opened = true
        while opened && !pending.isEmpty {
            opened = false
            pending.removeAll { sub in
                guard dlopen(sub, RTLD_NOW | RTLD_GLOBAL) != nil else { return false }
                opened = true
                return true
            }
        }
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else { return nil }
        return DynamicLibrary(handle: h, path: path)
    }
}

extension CuDNN: BLASStatusReporting {
    static let libraryName = "cuDNN"
    var statusString: StatusString? { cudnnGetErrorString }
}

/// What a prepared convolution depends on: its geometry and how its products round.
struct ConvolutionPlanKey: Hashable {
    let geometry: ChannelsLastConvolution
    /// bfloat16 operands (and output, converted to float32 with the bias added).
    let bf16: Bool
    /// float32 operands on TF32 tensor cores.
    let tf32: Bool
    /// The algorithm chosen by timing (cudnnTimesAlgorithms) rather than by the heuristic.
    let timed: Bool
}

/// One convolution prepared once per key: descriptors and the algorithm chosen (kept for the process).
struct ConvolutionPlan {
    let x: OpaquePointer, w: OpaquePointer, y: OpaquePointer, convolution: OpaquePointer
    let algorithm: Int32
    let workspaceBytes: Int

    /// cuDNN pads both sides of an axis alike: the padding it is given (the smaller side's, per axis) and the rest,
    /// put around a copy of the input first (the VAE's downsampler pads the bottom and right only).
    static func padding(_ p: EdgePadding) -> (y: Int, x: Int, explicit: EdgePadding) {
        let y = Swift.min(p.top, p.bottom), x = Swift.min(p.left, p.right)
        return (y, x, EdgePadding(top: p.top - y, bottom: p.bottom - y, left: p.left - x, right: p.right - x))
    }
}
