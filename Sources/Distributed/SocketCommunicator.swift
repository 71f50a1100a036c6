import Dispatch
import TensorCore

/// The communicator through the host: tensors are copied to host memory and averaged over a `HostChannel` by a
/// worker thread, so the exchange of one bucket of gradients runs while the calling thread goes on computing
/// the next (overlap with backward). Used on the CPU, and on GPUs where NCCL cannot be used (several processes
/// on one GPU with an NCCL that refuses it). Every operation, control data included, goes through one serial
/// queue, so they reach the sockets in the order they were called.
public final class SocketCommunicator: Communicator {
    public let channel: HostChannel
    public var rank: Int { channel.rank }
    public var worldSize: Int { channel.worldSize }
    public var kind: String { "socket" }
    private let queue = DispatchQueue(label: "terminalvelocity.socket-communicator")

    public init(channel: HostChannel) { self.channel = channel }

    public func startAverage(_ tensors: [Tensor]) throws -> PendingAverage {
        let job = Job(shapes: tensors.map(\.shape), device: tensors.first?.device ?? .default)
        // Read on the calling thread: a backend is used from one thread at a time.
        let flat = try Self.flatten(tensors)
        queue.async { [channel] in job.complete(Result { try channel.average(flat) }) }
        return job
    }

    public func broadcast(_ tensors: [Tensor]) throws -> [Tensor] {
        let flat = try Self.flatten(tensors)
        let values = try queue.sync { [channel] in try channel.broadcast(flat) }
        return Self.split(values, shapes: tensors.map(\.shape), device: tensors.first?.device ?? .default)
    }

    public func allReduceSum(_ values: [Double]) throws -> [Double] {
        try queue.sync { [channel] in try channel.sum(values) }
    }

    public func close() {
        queue.sync { channel.close() }
    }

    private static func flatten(_ tensors: [Tensor]) throws -> [Float] {
        var flat: [Float] = []
        flat.reserveCapacity(tensors.reduce(0) { $0 + $1.count })
        for t in tensors {
            guard t.dtype == .float32 else { throw CommunicationError("the socket communicator carries float32 tensors, got \(t.dtype)") }
            flat += t.floats
        }
        return flat
    }

    static func split(_ values: [Float], shapes: [[Int]], device: Device) -> [Tensor] {
        var start = 0
        return shapes.map { shape in
            let n = Shape.count(shape)
            defer { start += n }
            return Tensor(Array(values[start..<(start + n)]), shape: shape, on: device)
        }
    }

    /// One average in flight: the worker stores the result and signals.
    final class Job: PendingAverage, @unchecked Sendable {
        let shapes: [[Int]]
        let device: Device
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<[Float], Error>?

        init(shapes: [[Int]], device: Device) {
            self.shapes = shapes
            self.device = device
        }

        func complete(_ r: Result<[Float], Error>) {
            result = r
            done.signal()
        }

        func wait() throws -> [Tensor] {
            done.wait()
            return SocketCommunicator.split(try result!.get(), shapes: shapes, device: device)
        }
    }
}
