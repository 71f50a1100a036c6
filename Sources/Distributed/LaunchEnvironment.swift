#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// Where this process stands in a data-parallel run, read from the environment: the variables `tvm train --gpus N`
/// sets for the processes it starts, which are also those of torchrun and most cluster launchers (RANK,
/// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), plus TVM_COMM (nccl or socket),
/// TVM_RUN_ID (keeps another run's processes out of the rendezvous) and TVM_DIST_TIMEOUT (seconds the
/// rendezvous waits, default 300).
public struct LaunchEnvironment: Equatable, Sendable {
    public var rank: Int
    public var worldSize: Int
    /// This process's index among the ranks on its host (its GPU, with one GPU per process).
    public var localRank: Int
    public var localWorldSize: Int
    public var masterAddress: String
    public var masterPort: Int
    /// The communicator asked for (nil: NCCL on a GPU, sockets on the CPU).
    public var communicator: String?
    public var runID: UInt64
    public var timeout: Double

    public init(rank: Int, worldSize: Int, localRank: Int, localWorldSize: Int, masterAddress: String = "127.0.0.1",
                masterPort: Int, communicator: String? = nil, runID: UInt64 = 0, timeout: Double = 300) {
        self.rank = rank
        self.worldSize = worldSize
        self.localRank = localRank
        self.localWorldSize = localWorldSize
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.communicator = communicator
        self.runID = runID
        self.timeout = timeout
    }

    /// The variables that describe this process to the one it starts (launchers set them).
    public var variables: [(String, String)] {
        var v = [("RANK", "\(rank)"), ("WORLD_SIZE", "\(worldSize)"), ("LOCAL_RANK", "\(localRank)"),
                 ("LOCAL_WORLD_SIZE", "\(localWorldSize)"), ("MASTER_ADDR", masterAddress), ("MASTER_PORT", "\(masterPort)"),
                 ("TVM_RUN_ID", "\(runID)"), ("TVM_DIST_TIMEOUT", "\(timeout)")]
        if let communicator { v.append(("TVM_COMM", communicator)) }
        return v
    }

    /// The run described by `env`, or nil when WORLD_SIZE is not set (the process trains alone). Throws a
    /// message naming the variable when one is missing or invalid.
    public static func from(_ env: [String: String]) throws -> LaunchEnvironment? {
        guard let worldText = env["WORLD_SIZE"] else { return nil }
        func int(_ name: String, _ text: String?, _ range: ClosedRange<Int>) throws -> Int {
            guard let text else { throw CommunicationError("\(name) is not set (WORLD_SIZE is \(worldText))") }
            guard let v = Int(text), range.contains(v) else {
                throw CommunicationError("\(name) must be a whole number in \(range.lowerBound)...\(range.upperBound), got '\(text)'")
            }
            return v
        }
        let world = try int("WORLD_SIZE", worldText, 1...65536)
        let rank = try int("RANK", env["RANK"], 0...(world - 1))
        let localWorld = try int("LOCAL_WORLD_SIZE", env["LOCAL_WORLD_SIZE"] ?? "\(world)", 1...world)
        let localRank = try int("LOCAL_RANK", env["LOCAL_RANK"] ?? "\(rank % localWorld)", 0...(localWorld - 1))
        let port = try int("MASTER_PORT", env["MASTER_PORT"], 1...65535)
        let comm = env["TVM_COMM"].map { $0.lowercased() }
        if let comm, comm != "nccl" && comm != "socket" {
            throw CommunicationError("TVM_COMM must be nccl or socket, got '\(comm)'")
        }
        guard let runID = UInt64(env["TVM_RUN_ID"] ?? "0") else { throw CommunicationError("TVM_RUN_ID must be a whole number") }
        guard let timeout = Double(env["TVM_DIST_TIMEOUT"] ?? "300"), timeout > 0, timeout.isFinite else {
            throw CommunicationError("TVM_DIST_TIMEOUT must be a positive number of seconds")
        }
        return LaunchEnvironment(rank: rank, worldSize: world, localRank: localRank, localWorldSize: localWorld,
                                 masterAddress: env["MASTER_ADDR"] ?? "127.0.0.1", masterPort: port, communicator: comm,
                                 runID: runID, timeout: timeout)
    }

    /// `from` applied to this process's environment.
    public static func current() throws -> LaunchEnvironment? { try from(processEnvironment()) }

    /// Connects to the other ranks (the host channel every communicator starts from).
    public func rendezvous() throws -> HostChannel {
        try HostChannel.rendezvous(rank: rank, worldSize: worldSize, address: masterAddress, port: masterPort,
                                   runID: runID, timeout: timeout)
    }
}

/// The environment as a dictionary.
public func processEnvironment() -> [String: String] {
    var out: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return out
}
