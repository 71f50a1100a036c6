import XCTest
import Foundation
import TensorCore
import NN
import Data
import TVM
import Distributed

/// A communicator of one rank that records what it is asked and when.
final class RecordingCommunicator: Communicator {
    var rank: Int { 0 }
    var worldSize: Int { 1 }
    var kind: String { "recording" }
    /// Element counts of each bucket, in the order started.
    var buckets: [[Int]] = []
    var waited = 0

    struct Pending: PendingAverage {
        let owner: RecordingCommunicator
        let tensors: [Tensor]
        func wait() throws -> [Tensor] {
            owner.waited += 1
            return tensors.map { $0 * 1.0 }
        }
    }

    func startAverage(_ tensors: [Tensor]) throws -> PendingAverage {
        buckets.append(tensors.map(\.count))
        return Pending(owner: self, tensors: tensors)
    }
    func broadcast(_ tensors: [Tensor]) throws -> [Tensor] { tensors }
    func allReduceSum(_ values: [Double]) throws -> [Double] { values }
    func close() {}
}

final class DataParallelTests: XCTestCase {
    func testRowsSplitTheBatchEvenlyInRankOrder() throws {
        let results = try runRanks(3) { channel in
            DataParallel(communicator: SocketCommunicator(channel: channel)).rows(ofBatch: 12)
        }
        XCTAssertEqual(try results.map { try $0.get() }, [0..<4, 4..<8, 8..<12])
    }

    func testBucketsFillInBackwardOrderAndStartBeforeBackwardReturns() {
        var rng = RandomGenerator(seed: 1)
        let x = Tensor.randomNormal([8, 16], rng: &rng, on: .cpu)
        let params = ParameterSet([("l1.weight", Tensor.randomNormal([32, 16], rng: &rng, on: .cpu)),
                                   ("l1.bias", Tensor.randomNormal([32], rng: &rng, on: .cpu)),
                                   ("l2.weight", Tensor.randomNormal([32, 32], rng: &rng, on: .cpu)),
                                   ("l2.bias", Tensor.randomNormal([32], rng: &rng, on: .cpu)),
                                   ("l3.weight", Tensor.randomNormal([4, 32], rng: &rng, on: .cpu)),
                                   ("l3.bias", Tensor.randomNormal([4], rng: &rng, on: .cpu))])
        func loss(_ p: ParameterSet) -> Tensor {
            linear(linear(linear(x, p, "l1").silu(), p, "l2").silu(), p, "l3").square().mean()
        }
        let leaves = params.leaves()
        let expected = gradients(of: loss(leaves), wrt: leaves.all)

        let recorder = RecordingCommunicator()
        // 1 KiB buckets: the first closes with l2's weight (l3 and l2 are final first), the second with l1's.
        let parallel = DataParallel(communicator: recorder, bucketBytes: 1024)
        let leaves2 = params.leaves()
        let averaged = parallel.averagedGradients(of: loss(leaves2), wrt: leaves2.all)

        XCTAssertEqual(zip(averaged, expected).map { $0.floats == $1.floats }, Array(repeating: true, count: 6))
        // The last layer's gradients are final first: the first bucket holds them, the last the first layer's.
        let firstBucket = Set(recorder.buckets[0]), lastBucket = Set(recorder.buckets.last!)
        XCTAssertTrue(firstBucket.isSuperset(of: [128, 4]), "\(recorder.buckets)")
        XCTAssertTrue(lastBucket.isSubset(of: [512, 32]) && !lastBucket.isEmpty, "\(recorder.buckets)")
        XCTAssertEqual(recorder.buckets.flatMap { $0 }.sorted(), [4, 32, 32, 128, 512, 1024])
        XCTAssertEqual(parallel.lastBucketCount, recorder.buckets.count)
        XCTAssertGreaterThanOrEqual(parallel.lastBucketsStartedDuringBackward, 2,
                                    "buckets are started from inside backward, not after it")
        XCTAssertEqual(recorder.waited, recorder.buckets.count)
    }

    /// Three trainers as three ranks: different weights until rank 0's state is broadcast, then identical; a
    /// replica that drifts is named with the part that differs.
    func testSynchronizeMakesRanksIdenticalAndTheCheckNamesADriftedReplica() throws {
        let trainers = (0..<3).map { r -> Trainer<MLPFlowMap> in
            var config = TrainConfig()
            config.seed = UInt64(r)  // different initial weights on every rank
            config.extraEMAs = [.fixed(0.5)]
            return Trainer(network: MLPFlowMap(width: 8, depth: 2), config: config, on: .cpu)
        }
        // Rank 0's extra EMA differs from its student, so a rank that copied the student would differ from it.
        let extra = trainers[0].extraEMAs[0], first = extra.names[0]
        extra[first] = extra[first] + 0.25
        let results = try runRanks(3) { channel -> (String, String) in
            let comm = SocketCommunicator(channel: channel)
            let trainer = trainers[channel.rank]
            var sampler = BatchSampler(count: 10, seed: 7)
            if channel.rank == 0 { _ = sampler.next(3) }
            try trainer.synchronize(sampler: &sampler, over: comm)
            let same = try trainer.checkReplicas(sampler: sampler, over: comm)
            XCTAssertEqual(sampler.state.position, 3, "rank 0's sampler")
            if channel.rank == 2 {
                let name = trainer.teacher.names[0]
                trainer.teacher[name] = trainer.teacher[name] + 1e-7
            }
            do {
                _ = try trainer.checkReplicas(sampler: sampler, over: comm)
                return (same, "no error")
            } catch {
                return (same, "\(error)")
            }
        }
        let hashes = Set(trainers.map { parameterHash($0.student) })
        XCTAssertEqual(hashes.count, 1, "every student is rank 0's")
        XCTAssertEqual(Set(trainers.map { parameterHash($0.extraEMAs[0]) }), [parameterHash(extra)], "every extra EMA is rank 0's")
        XCTAssertNotEqual(parameterHash(extra), parameterHash(trainers[0].student))
        for result in results {
            let (same, drift) = try result.get()
            XCTAssertTrue(same.hasPrefix("replicas identical on 3 ranks at step 0"), same)
            XCTAssertTrue(drift.contains("teacher differs between rank 0"), drift)
            XCTAssertTrue(drift.contains("and rank 2"), drift)
        }
    }
}
