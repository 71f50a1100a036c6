#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// TCP connections among the ranks of one run, in a star: rank 0 listens at the master address, every other rank
/// connects to it. Rank 0 combines in rank order and sends every rank the same bytes back, so results are
/// identical everywhere. Each message carries an operation code and a size that the receiver checks: ranks that
/// call different collectives get an error naming both calls instead of a hang or garbage.
///
/// The star moves (worldSize - 1) copies through rank 0, which is fine for control data, for CPU training and for
/// a few processes sharing one GPU; NCCL carries GPU gradients. Not thread-safe: one caller at a time.
public final class HostChannel {
    public let rank: Int
    public let worldSize: Int
    /// Rank 0: the connection to rank r at index r (index 0 unused). Other ranks: the connection to rank 0 at 0.
    private var sockets: [Int32]

    enum Op: UInt32 {
        case sum = 1, average = 2, broadcast = 3
        var name: String {
            switch self {
            case .sum: return "a host sum"
            case .average: return "a tensor average"
            case .broadcast: return "a broadcast"
            }
        }
    }

    private static let frameMagic: UInt32 = 0x5456_4D43  // "TVMC"
    private static let helloMagic: UInt32 = 0x5456_4D52  // "TVMR"
    private static let protocolVersion: UInt32 = 1

    private init(rank: Int, worldSize: Int, sockets: [Int32]) {
        self.rank = rank
        self.worldSize = worldSize
        self.sockets = sockets
    }

    deinit { close() }

    public func close() {
        for fd in sockets where fd >= 0 { _ = Glibc.close(fd) }
        sockets = []
    }

    // MARK: - Rendezvous

    /// Connects the ranks: rank 0 listens on `address:port` and waits for the others, which retry until it
    /// answers. `runID` (the launcher's random number, or 0) keeps processes of another run from joining.
    /// Throws when not every rank has arrived within `timeout` seconds.
    public static func rendezvous(rank: Int, worldSize: Int, address: String, port: Int, runID: UInt64 = 0,
                                  timeout: Double = 300) throws -> HostChannel {
        precondition(worldSize >= 1 && rank >= 0 && rank < worldSize, "rank \(rank) of \(worldSize)")
        let target = try resolve(address, port: port)
        let deadline = monotonicSeconds() + timeout
        if rank == 0 {
            return HostChannel(rank: 0, worldSize: worldSize,
                               sockets: try accept(worldSize: worldSize, at: target, name: "\(address):\(port)",
                                                   runID: runID, deadline: deadline, timeout: timeout))
        }
        let fd = try connect(to: target, name: "\(address):\(port)", deadline: deadline, timeout: timeout)
        do {
            let hello = [helloMagic, protocolVersion, UInt32(rank), UInt32(worldSize),
                         UInt32(truncatingIfNeeded: runID), UInt32(truncatingIfNeeded: runID >> 32)]
            try hello.withUnsafeBytes { try sendAll(fd, $0, peer: 0) }
            var ack: UInt32 = 0
            try withUnsafeMutableBytes(of: &ack) { try receiveAll(fd, $0, peer: 0) }
            guard ack == helloMagic else { throw CommunicationError("rendezvous: rank 0 refused rank \(rank)") }
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        return HostChannel(rank: rank, worldSize: worldSize, sockets: [fd])
    }

    private static func accept(worldSize: Int, at target: sockaddr_in, name: String, runID: UInt64,
                               deadline: Double, timeout: Double) throws -> [Int32] {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw systemError("rendezvous: socket") }
        defer { _ = Glibc.close(listener) }
        var one: Int32 = 1
        _ = setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = target
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw systemError("rendezvous: rank 0 cannot listen on \(name)") }
        guard listen(listener, Int32(min(worldSize, 1024))) == 0 else { throw systemError("rendezvous: listen on \(name)") }
        var sockets = [Int32](repeating: -1, count: worldSize)
        var arrived = 1
        do {
            while arrived < worldSize {
                let left = deadline - monotonicSeconds()
                var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                let ready = left > 0 ? poll(&p, 1, Int32(min(left * 1000, 60_000))) : 0
                if ready < 0 && errno == EINTR { continue }
                if ready <= 0 && monotonicSeconds() >= deadline {
                    throw CommunicationError("rendezvous: only \(arrived) of \(worldSize) ranks reached rank 0 at \(name) "
                                             + "within \(Int(timeout)) s (TVM_DIST_TIMEOUT sets the wait)")
                }
                guard ready > 0 else { continue }
                let fd = Glibc.accept(listener, nil, nil)
                guard fd >= 0 else {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    throw systemError("rendezvous: accept")
                }
                setNoDelay(fd)
                var hello = [UInt32](repeating: 0, count: 6)
                do { try hello.withUnsafeMutableBytes { try receiveAll(fd, $0, peer: -1) } } catch {
                    // Something that is not a rank (a port scanner, a killed process): not fatal.
                    _ = Glibc.close(fd)
                    continue
                }
                let peerRun = UInt64(hello[4]) | UInt64(hello[5]) << 32
                let r = Int(hello[2])
                guard hello[0] == helloMagic, hello[1] == protocolVersion, peerRun == runID else {
                    _ = Glibc.close(fd)
                    continue
                }
                guard Int(hello[3]) == worldSize else {
                    _ = Glibc.close(fd)
                    throw CommunicationError("rendezvous: rank \(r) was started with WORLD_SIZE=\(hello[3]), rank 0 with \(worldSize)")
                }
                guard r >= 1 && r < worldSize, sockets[r] < 0 else {
                    _ = Glibc.close(fd)
                    throw CommunicationError("rendezvous: two processes claim rank \(r) (or it is out of range 1..<\(worldSize))")
                }
                sockets[r] = fd
                arrived += 1
            }
            // The acknowledgements go out once all have arrived, so no rank starts before the group is complete.
            var ack = helloMagic
            for r in 1..<worldSize { try withUnsafeBytes(of: &ack) { try sendAll(sockets[r], $0, peer: r) } }
        } catch {
            for fd in sockets where fd >= 0 { _ = Glibc.close(fd) }
            throw error
        }
        return sockets
    }

    private static func connect(to target: sockaddr_in, name: String, deadline: Double, timeout: Double) throws -> Int32 {
        var lastError: Int32 = 0
        while true {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw systemError("rendezvous: socket") }
            var addr = target
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if r == 0 {
                setNoDelay(fd)
                return fd
            }
            lastError = errno
            _ = Glibc.close(fd)
            // Rank 0 may not be listening yet: refused (or unreachable for a moment) means try again.
            guard monotonicSeconds() < deadline else {
                throw CommunicationError("rendezvous: rank 0 did not answer at \(name) within \(Int(timeout)) s "
                                         + "(last error: \(String(cString: strerror(lastError))); check MASTER_ADDR/MASTER_PORT)")
            }
            usleep(50_000)
        }
    }

    static func resolve(_ host: String, port: Int) throws -> sockaddr_in {
        guard port > 0 && port < 65536 else { throw CommunicationError("MASTER_PORT must be in 1...65535, got \(port)") }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let r = getaddrinfo(host, "\(port)", &hints, &result)
        guard r == 0, let first = result, let sa = first.pointee.ai_addr else {
            throw CommunicationError("cannot resolve MASTER_ADDR '\(host)': \(String(cString: gai_strerror(r)))")
        }
        defer { freeaddrinfo(result) }
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
    }

    private static func setNoDelay(_ fd: Int32) {
        // Control messages are small and latency-bound: no Nagle delay.
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    // MARK: - Collectives

    /// The elementwise sum across ranks, added in rank order.
    public func sum(_ values: [Double]) throws -> [Double] {
        try combine(.sum, values) { acc, part in for i in acc.indices { acc[i] += part[i] } } finish: { $0 }
    }

    /// The elementwise average across ranks, accumulated in float64 in rank order.
    public func average(_ values: [Float]) throws -> [Float] {
        let scale = 1 / Double(worldSize)
        return try combine(.average, values, accumulate: values.map(Double.init)) { acc, part in
            for i in acc.indices { acc[i] += Double(part[i]) }
        } finish: { acc in acc.map { Float($0 * scale) } }
    }

    /// Rank 0's values on every rank (the others give the count they expect).
    public func broadcast(_ values: [Float]) throws -> [Float] {
        if rank == 0 {
            for r in 1..<max(worldSize, 1) { try send(.broadcast, values, to: r) }
            return values
        }
        var out = [Float](repeating: 0, count: values.count)
        try receive(.broadcast, into: &out, from: 0)
        return out
    }

    private func combine<T, A>(_ op: Op, _ values: [T], accumulate initial: A, _ add: (inout A, [T]) -> Void,
                               finish: (A) -> [T]) throws -> [T] {
        if rank != 0 {
            try send(op, values, to: 0)
            var out = values
            try receive(op, into: &out, from: 0)
            return out
        }
        var acc = initial
        var part = values
        for r in 1..<max(worldSize, 1) {
            try receive(op, into: &part, from: r)
            add(&acc, part)
        }
        let result = finish(acc)
        for r in 1..<max(worldSize, 1) { try send(op, result, to: r) }
        return result
    }

    private func combine(_ op: Op, _ values: [Double], _ add: (inout [Double], [Double]) -> Void,
                         finish: ([Double]) -> [Double]) throws -> [Double] {
        try combine(op, values, accumulate: values, add, finish: finish)
    }

    private func connection(to r: Int) -> Int32 { rank == 0 ? sockets[r] : sockets[0] }

    private func send<T>(_ op: Op, _ values: [T], to r: Int) throws {
        let bytes = values.count * MemoryLayout<T>.stride
        let header = [Self.frameMagic, op.rawValue, UInt32(truncatingIfNeeded: bytes), UInt32(truncatingIfNeeded: bytes >> 32)]
        let fd = connection(to: r)
        try header.withUnsafeBytes { try Self.sendAll(fd, $0, peer: r) }
        try values.withUnsafeBytes { try Self.sendAll(fd, $0, peer: r) }
    }

    private func receive<T>(_ op: Op, into values: inout [T], from r: Int) throws {
        var header = [UInt32](repeating: 0, count: 4)
        let fd = connection(to: r)
        try header.withUnsafeMutableBytes { try Self.receiveAll(fd, $0, peer: r) }
        let bytes = Int(UInt64(header[2]) | UInt64(header[3]) << 32)
        let expected = values.count * MemoryLayout<T>.stride
        guard header[0] == Self.frameMagic, let theirs = Op(rawValue: header[1]) else {
            throw CommunicationError("rank \(r) sent a malformed message (the ranks are out of step)")
        }
        guard theirs == op, bytes == expected else {
            throw CommunicationError("the ranks are out of step: rank \(r) is in \(theirs.name) of \(bytes) bytes while rank "
                                     + "\(rank) is in \(op.name) of \(expected) bytes")
        }
        try values.withUnsafeMutableBytes { try Self.receiveAll(fd, $0, peer: r) }
    }

    static func sendAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, peer: Int) throws {
        var done = 0
        while done < buffer.count {
            // MSG_NOSIGNAL: a vanished peer is an error to report, not a SIGPIPE that kills the process silently.
            let n = Glibc.send(fd, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EPIPE || errno == ECONNRESET { throw closed(peer) }
                throw systemError("sending to rank \(peer) failed")
            }
            done += n
        }
    }

    static func receiveAll(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, peer: Int) throws {
        var done = 0
        while done < buffer.count {
            let n = recv(fd, buffer.baseAddress! + done, buffer.count - done, 0)
            if n < 0 {
                if errno == EINTR { continue }
                // A peer that closes with our data unread resets the connection instead of ending it.
                if errno == ECONNRESET { throw closed(peer) }
                throw systemError("receiving from rank \(peer) failed")
            }
            if n == 0 { throw closed(peer) }
            done += n
        }
    }

    static func closed(_ peer: Int) -> CommunicationError {
        CommunicationError("rank \(peer) closed its connection (it exited or failed)")
    }

    static func systemError(_ what: String) -> CommunicationError {
        CommunicationError("\(what): \(String(cString: strerror(errno)))")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
