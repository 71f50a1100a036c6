import XCTest
import Foundation
import TensorCore
import Distributed

/// Several ranks as threads of this process, each with real sockets on the loopback interface.
func runRanks<T>(_ n: Int, timeout: Double = 30, runID: UInt64 = 0,
                 _ body: @escaping @Sendable (HostChannel) throws -> T) throws -> [Result<T, Error>] {
    let port = try freeLoopbackPort()
    let results = ResultBox<T>(count: n)
    let group = DispatchGroup()
    for r in 0..<n {
        group.enter()
        let thread = Thread {
            results.set(r, Result {
                let channel = try HostChannel.rendezvous(rank: r, worldSize: n, address: "127.0.0.1", port: port,
                                                         runID: runID, timeout: timeout)
                defer { channel.close() }
                return try body(channel)
            })
            group.leave()
        }
        thread.start()
    }
    XCTAssertEqual(group.wait(timeout: .now() + timeout + 30), .success, "ranks did not finish")
    return results.values.map { $0! }
}

final class ResultBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<T, Error>?]
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<T, Error>) { lock.withLock { values[i] = r } }
}

func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw CommunicationError("no free port") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

final class CommunicatorTests: XCTestCase {
    func testStarSumsAveragesAndBroadcastsIdenticallyOnEveryRank() throws {
        let results = try runRanks(3) { channel -> ([Double], [Float], [Float]) in
            let r = Double(channel.rank)
            let sum = try channel.sum([r, 10 * r, 0.1])
            let average = try channel.average([Float(r), Float(r) * 3, 1e-8 * Float(r + 1)])
            let broadcast = try channel.broadcast(channel.rank == 0 ? [4, 5] : [0, 0])
            return (sum, average, broadcast)
        }
        for result in results {
            let (sum, average, broadcast) = try result.get()
            XCTAssertEqual(sum, [3, 30, 0.1 + 0.1 + 0.1])
            XCTAssertEqual(average, [1, 3, 2e-8])
            XCTAssertEqual(broadcast, [4, 5])
        }
        // Bit-identical results: rank 0 adds in rank order and sends the same bytes to everyone.
        let sums = try results.map { try $0.get().0 }
        XCTAssertEqual(Set(sums.map { $0.map(\.bitPattern) }).count, 1)
    }

    func testRanksOutOfStepGetAnErrorNamingBothCalls() throws {
        let results = try runRanks(2) { channel -> [Double] in
            if channel.rank == 0 { return try channel.sum([1, 2]) }
            return try channel.average([1, 2, 3]).map(Double.init)
        }
        guard case .failure(let e) = results[0] else { return XCTFail("rank 0 should fail") }
        XCTAssertTrue("\(e)".contains("out of step"), "\(e)")
        XCTAssertTrue("\(e)".contains("rank 1 is in a tensor average of 12 bytes"), "\(e)")
        XCTAssertTrue("\(e)".contains("rank 0 is in a host sum of 16 bytes"), "\(e)")
        // Rank 1 sees rank 0 go away instead of hanging.
        guard case .failure(let e1) = results[1] else { return XCTFail("rank 1 should fail") }
        XCTAssertTrue("\(e1)".contains("rank 0 closed its connection"), "\(e1)")
    }

    func testRendezvousWaitsForEveryRankThenGivesUpWithAClearMessage() throws {
        let port = try freeLoopbackPort()
        let start = Date()
        XCTAssertThrowsError(try HostChannel.rendezvous(rank: 0, worldSize: 3, address: "127.0.0.1", port: port, timeout: 0.5)) {
            XCTAssertTrue("\($0)".contains("only 1 of 3 ranks reached rank 0"), "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertThrowsError(try HostChannel.rendezvous(rank: 1, worldSize: 2, address: "127.0.0.1", port: port, timeout: 0.3)) {
            XCTAssertTrue("\($0)".contains("rank 0 did not answer"), "\($0)")
        }
    }

    func testLaunchEnvironmentReadsTheLauncherVariables() throws {
        XCTAssertNil(try LaunchEnvironment.from(["RANK": "0"]))
        let env = try XCTUnwrap(LaunchEnvironment.from(["WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                                       "MASTER_ADDR": "node0", "MASTER_PORT": "29500", "TVM_COMM": "NCCL"]))
        XCTAssertEqual(env, LaunchEnvironment(rank: 3, worldSize: 4, localRank: 1, localWorldSize: 2, masterAddress: "node0",
                                              masterPort: 29500, communicator: "nccl"))
        // What a launcher sets reads back as the same place.
        XCTAssertEqual(try LaunchEnvironment.from(Dictionary(uniqueKeysWithValues: env.variables)), env)
        for (bad, says) in [(["WORLD_SIZE": "2", "RANK": "2", "MASTER_PORT": "1"], "RANK must be"),
                            (["WORLD_SIZE": "2", "RANK": "1"], "MASTER_PORT is not set"),
                            (["WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "9", "TVM_COMM": "mpi"], "TVM_COMM must be")] {
            XCTAssertThrowsError(try LaunchEnvironment.from(bad)) { XCTAssertTrue("\($0)".contains(says), "\($0)") }
        }
    }

    func testSocketCommunicatorAveragesBucketsInTheBackgroundAndKeepsTheOrder() throws {
        let results = try runRanks(2) { channel -> ([[Float]], [Double], [Float]) in
            let comm = SocketCommunicator(channel: channel)
            let r = Float(channel.rank)
            let a = try comm.startAverage([Tensor([r, 2 * r], shape: [2], on: .cpu), Tensor([r + 1], shape: [1, 1], on: .cpu)])
            let b = try comm.startAverage([Tensor([10 * r], shape: [1], on: .cpu)])
            // A host sum queued behind both averages reaches the sockets after them.
            let sum = try comm.allReduceSum([Double(channel.rank)])
            let values = try (a.wait() + b.wait()).map(\.floats)
            let broadcast = try comm.broadcast([Tensor([r + 7], shape: [1], on: .cpu)])[0].floats
            return (values, sum, broadcast)
        }
        for result in results {
            let (values, sum, broadcast) = try result.get()
            XCTAssertEqual(values, [[0.5, 1], [1.5], [5]])
            XCTAssertEqual(sum, [1])
            XCTAssertEqual(broadcast, [7])
        }
    }
}
