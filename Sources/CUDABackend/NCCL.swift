#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// NCCL (libnccl.so.2), bound at run time like the rest of CUDA: nothing NCCL-related is needed to build.
final class NCCLLibrary {
    typealias Result = Int32
    typealias Comm = OpaquePointer
    let library: DynamicLibrary
    /// "2.27.3".
    let version: String

    let ncclGetUniqueId: @convention(c) (UnsafeMutableRawPointer) -> Result
    /// The initialisation that takes the unique id by pointer (NCCL 2.23+): ncclCommInitRank takes a 128-byte
    /// struct by value, which a C function pointer type in Swift cannot express.
    let ncclCommInitRankScalable: @convention(c) (UnsafeMutablePointer<Comm?>, Int32, Int32, Int32, UnsafeMutableRawPointer,
                                                  UnsafeMutableRawPointer?) -> Result
    let ncclAllReduce: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Int32, Int32, Comm?, Handle?) -> Result
    let ncclBroadcast: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Int32, Int32, Comm?, Handle?) -> Result
    let ncclGroupStart: @convention(c) () -> Result
    let ncclGroupEnd: @convention(c) () -> Result
    let ncclCommDestroy: @convention(c) (Comm?) -> Result
    let ncclGetErrorString: @convention(c) (Result) -> UnsafePointer<CChar>?
    let ncclGetLastError: @convention(c) (Comm?) -> UnsafePointer<CChar>?

    static let float32: Int32 = 7, float64: Int32 = 8
    static let average: Int32 = 4
    static let uniqueIdBytes = 128
    static let invalidUsage: Result = 5

    init(_ lib: DynamicLibrary) throws {
        library = lib
        let getVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Result = try lib.symbol("ncclGetVersion")
        var code: Int32 = 0
        _ = getVersion(&code)
        // Since 2.9 the code is major * 10000 + minor * 100 + patch.
        version = "\(code / 10000).\(code % 10000 / 100).\(code % 100)"
        guard let initScalable: @convention(c) (UnsafeMutablePointer<Comm?>, Int32, Int32, Int32, UnsafeMutableRawPointer,
                                                UnsafeMutableRawPointer?) -> Result = lib.optionalSymbol("ncclCommInitRankScalable") else {
            throw CUDAError("NCCL \(version) at \(lib.path) is too old: TerminalVelocity needs NCCL 2.23 or later "
                            + "(ncclCommInitRankScalable); set TVM_NCCL_LIB to a newer libnccl.so.2")
        }
        ncclCommInitRankScalable = initScalable
        ncclGetUniqueId = try lib.symbol("ncclGetUniqueId")
        ncclAllReduce = try lib.symbol("ncclAllReduce")
        ncclBroadcast = try lib.symbol("ncclBroadcast")
        ncclGroupStart = try lib.symbol("ncclGroupStart")
        ncclGroupEnd = try lib.symbol("ncclGroupEnd")
        ncclCommDestroy = try lib.symbol("ncclCommDestroy")
        ncclGetErrorString = try lib.symbol("ncclGetErrorString")
        ncclGetLastError = try lib.symbol("ncclGetLastError")
    }

    /// Opens libnccl.so.2: TVM_NCCL_LIB (the file or its folder) when set, else the first NCCL recent enough among
    /// the linker's path and the CUDA folders (TVM_CUDA_LIB_DIRS, CUDA_HOME, /usr/local/cuda) and the NCCL that pip
    /// installs with PyTorch (site-packages/nvidia/*/lib in virtual environments, conda, /usr/local and ~/.local):
    /// a system NCCL older than 2.23 does not hide a newer one in a Python installation.
    static func load() throws -> NCCLLibrary {
        if let given = environment("TVM_NCCL_LIB") {
            var st = stat()
            let path = stat(given, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR ? given + "/libnccl.so.2" : given
            guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
                throw CUDAError("NCCL: cannot open TVM_NCCL_LIB=\(given): \(dlerror().map { String(cString: $0) } ?? "?")")
            }
            return try NCCLLibrary(DynamicLibrary(handle: h, path: path))
        }
        var tooOld: Error?
        func usable(_ lib: DynamicLibrary) -> NCCLLibrary? {
            do { return try NCCLLibrary(lib) } catch {
                tooOld = tooOld ?? error
                return nil
            }
        }
        let (lib, errors) = DynamicLibrary.open(["libnccl.so.2", "libnccl.so"])
        if let lib, let nccl = usable(lib) { return nccl }
        for path in wheelCandidates() {
            if let h = dlopen(path, RTLD_NOW | RTLD_LOCAL), let nccl = usable(DynamicLibrary(handle: h, path: path)) { return nccl }
        }
        if let tooOld { throw tooOld }
        throw CUDAError("NCCL (libnccl.so.2) not found on the linker path, in the CUDA folders or in a Python "
                        + "installation's site-packages/nvidia/*/lib; set TVM_NCCL_LIB to the file or its folder"
                        + (errors.isEmpty ? "" : " (dlopen: \(errors[0]))"))
    }

    static func wheelCandidates() -> [String] {
        var found = DynamicLibrary.pythonWheelFiles("libnccl.so.2")
        if let c = environment("CONDA_PREFIX"), access(c + "/lib/libnccl.so.2", F_OK) == 0 { found.append(c + "/lib/libnccl.so.2") }
        return found
    }

    func describe(_ r: Result, _ comm: Comm?) -> String {
        let text = ncclGetErrorString(r).map { String(cString: $0) } ?? "ncclResult \(r)"
        let last = ncclGetLastError(comm).map { String(cString: $0) } ?? ""
        return last.isEmpty ? text : "\(text): \(last)"
    }
}

/// Data-parallel collectives on the GPU through NCCL, one process per GPU (one rank per GPU; NCCL 2.30+ also
/// takes several ranks on one GPU with NCCL_MULTI_RANK_GPU_ENABLE=1, which `tvm train --gpus` sets when the
/// ranks outnumber the GPUs).
///
/// Averages run on a stream of their own: `startAverage` records an event on the backend's stream, makes the
/// NCCL stream wait for it and queues the all-reduce there, so it overlaps whatever the backend queues next
/// (the rest of backward); `wait` makes the backend's stream wait for the NCCL stream, without stopping the host.
/// The inputs are kept alive until then: the backend's allocator reuses a freed block at once, which is safe on
/// its one stream but not while another stream still reads it.
public final class NCCLCommunicator: Communicator {
    public let rank: Int
    public let worldSize: Int
    public var kind: String { "nccl" }
    /// The NCCL version and the library file, for logs.
    public let library: String
    let backend: CUDABackend
    let nccl: NCCLLibrary
    let control: Communicator
    private var comm: NCCLLibrary.Comm?
    private let commStream: Handle
    private let computeDone: Handle
    private let averagesDone: Handle

    /// NVLink multicast stays off in every process (NVLS can put a shared host's GPUs out of service): NCCL,
    /// PyTorch's symmetric memory and NVSHMEM read these. Set before NCCL starts, and by the launcher for
    /// every process it starts.
    public static let multicastOff: [(String, String)] = [
        ("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1"),
    ]

    /// The NCCL communicator of `control`'s ranks on `backend`'s GPU. `control` (sockets among the same ranks)
    /// carries NCCL's unique id from rank 0 and, afterwards, the host values of `allReduceSum`.
    public init(backend: CUDABackend, control: Communicator) throws {
        for (name, value) in Self.multicastOff { setenv(name, value, 1) }
        self.backend = backend
        self.control = control
        rank = control.rank
        worldSize = control.worldSize
        let nccl = try NCCLLibrary.load()
        self.nccl = nccl
        library = "NCCL \(nccl.version) (\(nccl.library.path))"
        let rank = control.rank, worldSize = control.worldSize
        var id = [UInt8](repeating: 0, count: NCCLLibrary.uniqueIdBytes)
        if rank == 0 {
            let r = id.withUnsafeMutableBytes { nccl.ncclGetUniqueId($0.baseAddress!) }
            if r != 0 { throw CUDAError("NCCL: ncclGetUniqueId failed: \(nccl.describe(r, nil))") }
        }
        do { id = try control.broadcastBytes(id) } catch { throw CUDAError("NCCL: sharing the unique id: \(error)") }
        backend.ensureCurrent()
        var c: NCCLLibrary.Comm?
        let r = id.withUnsafeMutableBytes {
            nccl.ncclCommInitRankScalable(&c, Int32(worldSize), Int32(rank), 1, $0.baseAddress!, nil)
        }
        if r != 0 {
            let hint = r == NCCLLibrary.invalidUsage
                ? " (NCCL before 2.30 refuses two ranks on one GPU; --comm socket works with any number)" : ""
            throw CUDAError("NCCL: ncclCommInitRankScalable (rank \(rank) of \(worldSize)) failed: \(nccl.describe(r, c))\(hint)")
        }
        comm = c
        let driver = backend.driver
        var s: Handle?
        try driver.check(driver.cuStreamCreate(&s, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate(NCCL)")
        var e1: Handle?, e2: Handle?
        try driver.check(driver.cuEventCreate(&e1, 2 /* CU_EVENT_DISABLE_TIMING */), "cuEventCreate")
        try driver.check(driver.cuEventCreate(&e2, 2 /* CU_EVENT_DISABLE_TIMING */), "cuEventCreate")
        guard let s, let e1, let e2 else { throw CUDAError("CUDA driver: no stream or event for NCCL") }
        commStream = s
        computeDone = e1
        averagesDone = e2
    }

    public func startAverage(_ tensors: [Tensor]) throws -> PendingAverage {
        let outputs = tensors.map { Tensor(storage: backend.allocate($0.count, $0.dtype), shape: $0.shape) }
        let driver = backend.driver
        backend.ensureCurrent()
        try driver.check(driver.cuEventRecord(computeDone, backend.stream), "cuEventRecord")
        try driver.check(driver.cuStreamWaitEvent(commStream, computeDone, 0), "cuStreamWaitEvent")
        try group("ncclAllReduce") {
            for (x, y) in zip(tensors, outputs) {
                let r = nccl.ncclAllReduce(pointer(x), mutablePointer(y), x.count, try type(x), NCCLLibrary.average, comm, commStream)
                if r != 0 { return r }
            }
            return 0
        }
        return Pending(communicator: self, inputs: tensors, outputs: outputs)
    }

    /// Orders the backend's stream after every average queued so far.
    fileprivate func joinAverages() throws {
        let driver = backend.driver
        backend.ensureCurrent()
        try driver.check(driver.cuEventRecord(averagesDone, commStream), "cuEventRecord")
        try driver.check(driver.cuStreamWaitEvent(backend.stream, averagesDone, 0), "cuStreamWaitEvent")
    }

    public func broadcast(_ tensors: [Tensor]) throws -> [Tensor] {
        let outputs = tensors.map { Tensor(storage: backend.allocate($0.count, $0.dtype), shape: $0.shape) }
        backend.ensureCurrent()
        // On the backend's stream: a broadcast happens once, at the start, with nothing to overlap.
        try group("ncclBroadcast") {
            for (x, y) in zip(tensors, outputs) {
                let r = nccl.ncclBroadcast(pointer(x), mutablePointer(y), x.count, try type(x), 0, comm, backend.stream)
                if r != 0 { return r }
            }
            return 0
        }
        return outputs
    }

    public func allReduceSum(_ values: [Double]) throws -> [Double] { try control.allReduceSum(values) }

    public func close() {
        if let c = comm {
            backend.synchronize()
            _ = nccl.ncclCommDestroy(c)
            comm = nil
        }
        control.close()
    }

    private func group(_ what: String, _ body: () throws -> NCCLLibrary.Result) throws {
        var r = nccl.ncclGroupStart()
        if r == 0 {
            let inner = try body()
            r = nccl.ncclGroupEnd()
            if inner != 0 { r = inner }
        }
        if r != 0 { throw CommunicationError("NCCL: \(what) (rank \(rank) of \(worldSize)) failed: \(nccl.describe(r, comm))") }
    }

    private func type(_ t: Tensor) throws -> Int32 {
        guard t.backend === backend else { throw CommunicationError("NCCL: a \(t.backend.name) tensor was given to the NCCL communicator") }
        return t.dtype == .float32 ? NCCLLibrary.float32 : NCCLLibrary.float64
    }

    private func pointer(_ t: Tensor) -> UnsafeRawPointer? { UnsafeRawPointer(bitPattern: UInt(backend.addr(t.storage))) }
    private func mutablePointer(_ t: Tensor) -> UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: UInt(backend.addr(t.storage)))
    }

    private final class Pending: PendingAverage {
        let communicator: NCCLCommunicator
        /// Held until the backend's stream is ordered after the average that reads them.
        let inputs: [Tensor]
        let outputs: [Tensor]
        init(communicator: NCCLCommunicator, inputs: [Tensor], outputs: [Tensor]) {
            self.communicator = communicator
            self.inputs = inputs
            self.outputs = outputs
        }
        func wait() throws -> [Tensor] {
            try communicator.joinAverages()
            return outputs
        }
    }
}

extension CUDABackend {
    /// How many GPUs the driver sees (without creating a context): the launcher's check of `--gpus`.
    public static func deviceCount() throws -> Int {
        let driver = try Driver()
        let r = driver.cuInit(0)
        if r != 0 { throw CUDAError("CUDA driver: cuInit failed: \(driver.describe(r)) (no usable NVIDIA GPU?)") }
        var count: Int32 = 0
        try driver.check(driver.cuDeviceGetCount(&count), "cuDeviceGetCount")
        return Int(count)
    }
}
