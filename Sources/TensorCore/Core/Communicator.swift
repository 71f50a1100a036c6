/// Collective operations among the processes ("ranks") of one data-parallel run: what a backend is to a device,
/// a communicator is to the group of processes. Every rank must make the same calls in the same order with
/// tensors of the same shapes; results are identical on every rank.
///
/// Implementations: NCCL on GPUs (module CUDABackend) and TCP sockets through the host for CPUs or as a
/// fallback (module Distributed).
public protocol Communicator: AnyObject {
    /// This process's place, 0 ..< worldSize.
    var rank: Int { get }
    var worldSize: Int { get }
    /// "nccl" or "socket", for logs.
    var kind: String { get }

    /// Starts the elementwise average of `tensors` across ranks and returns without waiting for it. The inputs
    /// are only read (they must stay unchanged until `wait`); the averages are new tensors.
    func startAverage(_ tensors: [Tensor]) throws -> PendingAverage
    /// Rank 0's values of `tensors`, as new tensors, on every rank.
    func broadcast(_ tensors: [Tensor]) throws -> [Tensor]
    /// The sum across ranks of a few host values (control data: losses for the log, checksums, decisions),
    /// added in rank order so that every rank gets the same bits.
    func allReduceSum(_ values: [Double]) throws -> [Double]
    /// Releases the connections: the last call, made by every rank at the same point (NCCL's waits for the ranks
    /// of its host). A rank that fails exits without it.
    func close()
}

/// An average in flight.
public protocol PendingAverage {
    /// The averaged tensors, in the order given. On a GPU this may return before the values are computed: work
    /// queued afterwards on the device is ordered after them.
    func wait() throws -> [Tensor]
}

/// A collective failed (a rank exited, the ranks called different operations, a library error).
public struct CommunicationError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Communicator {
    /// Waits until every rank has reached this call.
    public func barrier() throws { _ = try allReduceSum([]) }

    /// Every rank's `values` (each rank giving the same count), by rank. Exact: the other ranks add zeros.
    public func allGather(_ values: [Double]) throws -> [[Double]] {
        var slots = [Double](repeating: 0, count: values.count * worldSize)
        for (i, v) in values.enumerated() { slots[rank * values.count + i] = v }
        let all = try allReduceSum(slots)
        return (0..<worldSize).map { Array(all[($0 * values.count)..<(($0 + 1) * values.count)]) }
    }

    /// Rank 0's bytes on every rank (the other ranks' `bytes` are ignored). For small control data.
    public func broadcastBytes(_ bytes: [UInt8]) throws -> [UInt8] {
        let count = Int(try allReduceSum([rank == 0 ? Double(bytes.count) : 0])[0])
        let values = try allReduceSum(rank == 0 ? bytes.map(Double.init) : [Double](repeating: 0, count: count))
        return values.map { UInt8($0) }
    }
}
