import XCTest
import TensorCore
import CUDABackend
import Distributed
#if canImport(Glibc)
import Glibc
#endif

/// NCCL with a world of one process: the whole GPU path of data-parallel training (the library found and
/// loaded at run time, the communicator, averages on NCCL's own stream ordered by events, broadcast) on a
/// machine with one GPU. Skipped without a GPU or without libnccl.so.2.
final class NCCLTests: XCTestCase {
    func ncclOrSkip(_ cuda: CUDABackend) throws -> NCCLCommunicator {
        var port = 29500 + Int(getpid() % 1000)
        var channel: HostChannel?
        // A port another process holds only means trying the next.
        for _ in 0..<20 where channel == nil {
            channel = try? HostChannel.rendezvous(rank: 0, worldSize: 1, address: "127.0.0.1", port: port, timeout: 5)
            port += 1
        }
        let control = SocketCommunicator(channel: try XCTUnwrap(channel, "no free port for the rendezvous"))
        do {
            return try NCCLCommunicator(backend: cuda, control: control)
        } catch let e as CUDAError where e.message.contains("not found") {
            throw XCTSkip("no NCCL here: \(e)")
        }
    }

    func testOneRankAveragesBroadcastsAndAveragesGradientsInBuckets() throws {
        let cuda = try cudaOrSkip()
        let nccl = try ncclOrSkip(cuda)
        defer { nccl.close() }
        print("CUDA: \(nccl.library)")
        XCTAssertEqual(String(cString: getenv("NCCL_NVLS_ENABLE")), "0", "multicast stays off")
        XCTAssertEqual(nccl.worldSize, 1)

        var rng = RandomGenerator(seed: 11)
        let a = Tensor.randomNormal([37, 5], rng: &rng, on: cuda.device)
        let b = Tensor.randomNormal([3], rng: &rng, on: cuda.device)
        // Outputs start as NaN (poisoned allocations): every element must have been written.
        let first = try nccl.startAverage([a, b]), second = try nccl.startAverage([b])
        let averaged = try first.wait() + second.wait()
        XCTAssertEqual(averaged.map(\.floats), [a.floats, b.floats, b.floats])
        XCTAssertEqual(try nccl.broadcast([a])[0].floats, a.floats)
        XCTAssertEqual(try nccl.allReduceSum([1.5, 2]), [1.5, 2])

        // Gradients of a small network averaged in 1 KiB buckets started during backward: the plain gradients.
        let x = Tensor.randomNormal([16, 24], rng: &rng, on: cuda.device)
        let weights = [[32, 24], [32], [8, 32], [8]].map { Tensor.randomNormal($0, rng: &rng, on: cuda.device) }
        func loss(_ w: [Tensor]) -> Tensor {
            ((x.matmul(w[0], transposeOther: true) + w[1]).silu().matmul(w[2], transposeOther: true) + w[3]).square().mean()
        }
        let plainLeaves = weights.map { $0.detached().requiringGrad() }
        let plain = gradients(of: loss(plainLeaves), wrt: plainLeaves)
        let parallel = DataParallel(communicator: nccl, bucketBytes: 1024)
        let leaves = weights.map { $0.detached().requiringGrad() }
        let viaNCCL = parallel.averagedGradients(of: loss(leaves), wrt: leaves)
        XCTAssertGreaterThanOrEqual(parallel.lastBucketsStartedDuringBackward, 1)
        for (g, p) in zip(viaNCCL, plain) { XCTAssertEqual(g.floats, p.floats) }
    }
}
