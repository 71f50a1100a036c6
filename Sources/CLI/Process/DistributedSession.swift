import TensorCore
import CUDABackend
import Distributed
#if canImport(Glibc)
import Glibc
#endif

/// This process's part in a data-parallel run, when the environment describes one (LaunchEnvironment): the
/// communicator for its device (NCCL on a GPU unless TVM_COMM=socket, sockets on the CPU) and the gradient
/// averaging built on it. Ranks other than 0 print nothing but errors (main.swift sets Console.quiet).
final class DistributedSession {
    let environment: LaunchEnvironment
    let communicator: Communicator
    let parallel: DataParallel
    var rank: Int { environment.rank }
    var worldSize: Int { environment.worldSize }

    private init(environment: LaunchEnvironment, communicator: Communicator, bucketBytes: Int) {
        self.environment = environment
        self.communicator = communicator
        parallel = DataParallel(communicator: communicator, bucketBytes: bucketBytes)
    }

    /// The session of this process, or nil when WORLD_SIZE is unset (it runs alone). Connects to the other ranks.
    static func start(bucketMB: Double) throws -> DistributedSession? {
        guard let env = try LaunchEnvironment.current() else { return nil }
        let onGPU = activeCUDA != nil && !Device.default.isCPU
        let kind = env.communicator ?? (onGPU ? "nccl" : "socket")
        let control = SocketCommunicator(channel: try onRank(env.rank) { try env.rendezvous() })
        let comm: Communicator
        if kind == "nccl" {
            guard let cuda = activeCUDA, onGPU else { throw CLIError("rank \(env.rank): TVM_COMM=nccl needs --device cuda") }
            comm = try onRank(env.rank) { try NCCLCommunicator(backend: cuda, control: control) }
        } else {
            comm = control
        }
        return DistributedSession(environment: env, communicator: comm, bucketBytes: max(1, Int(bucketMB * 1_048_576)))
    }

    /// "data-parallel over 2 ranks (NCCL 2.27.3 (/path/libnccl.so.2))", for the run's first line.
    var description: String {
        let via = (communicator as? NCCLCommunicator)?.library ?? "sockets"
        return "data-parallel over \(worldSize) rank\(worldSize == 1 ? "" : "s") (\(via))"
    }

    /// The last call, made by every rank at the same point (closing NCCL waits for the other ranks on the host).
    func close() { communicator.close() }
}

/// The GPU of this process: TVM_CUDA_DEVICE when set (the launcher sets it), else LOCAL_RANK modulo the number of
/// GPUs under an outside launcher, else GPU 0.
func localGPUOrdinal() throws -> Int {
    if let text = getenv("TVM_CUDA_DEVICE").map({ String(cString: $0) }) {
        guard let v = Int(text), v >= 0 else { throw CLIError("TVM_CUDA_DEVICE must be a GPU number, got '\(text)'") }
        return v
    }
    guard let env = try LaunchEnvironment.current() else { return 0 }
    return env.localRank % max(1, try CUDABackend.deviceCount())
}
