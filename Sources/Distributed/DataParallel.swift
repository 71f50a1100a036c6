#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// One process's part in data-parallel training: which rows of each global batch it evaluates, and gradients
/// averaged across ranks in buckets that start while backward is still running.
///
/// Every rank holds the same weights and makes the same random draws for the whole global batch (module TVM
/// draws the batch's times and noise before cutting out `rows`), so a sample's data and noise depend on the
/// seed, the step and its place in the batch, never on the number of ranks: a run resumed with another world
/// size continues the same sequence.
public final class DataParallel {
    public let communicator: Communicator
    /// A bucket is started once the gradients gathered in it reach this size (the last one may be smaller).
    public let bucketBytes: Int
    public var rank: Int { communicator.rank }
    public var worldSize: Int { communicator.worldSize }
    /// Buckets of the last `averagedGradients`, and how many of them were started before backward had returned
    /// (their exchange overlapped the rest of backward).
    public private(set) var lastBucketCount = 0
    public private(set) var lastBucketsStartedDuringBackward = 0
    private let fail: (String) -> Never

    /// `onFailure` ends the process when a collective fails inside a training step, which has no error path
    /// (default: one "error:" line naming the rank, exit status 1; the launcher then stops the other ranks).
    public init(communicator: Communicator, bucketBytes: Int = 25 << 20,
                onFailure: @escaping (String) -> Never = DataParallel.exitWithError) {
        precondition(bucketBytes > 0, "bucket size must be positive")
        self.communicator = communicator
        self.bucketBytes = bucketBytes
        fail = onFailure
    }

    public static func exitWithError(_ message: String) -> Never {
        fputs("error: \(message)\n", stderr)
        exit(1)
    }

    /// This rank's rows of a global batch of `batch` rows (which the world size must divide).
    public func rows(ofBatch batch: Int) -> Range<Int> {
        precondition(batch % worldSize == 0, "a batch of \(batch) rows cannot be split evenly over \(worldSize) ranks")
        let n = batch / worldSize
        return (rank * n)..<((rank + 1) * n)
    }

    /// The gradients of this rank's `loss` averaged across ranks, one per `params` entry. Backward hands each
    /// gradient over as soon as it is final; once the gathered ones reach `bucketBytes` they are averaged
    /// asynchronously (on a GPU, NCCL on its own stream; on sockets, a worker thread) while backward goes on.
    /// Buckets are formed in the same order on every rank, since every rank differentiates the same graph.
    /// `initial`: this rank's gradients of earlier loss terms, added before averaging (see `gradients`).
    public func averagedGradients(of loss: Tensor, wrt params: [Tensor], initial: [Tensor]? = nil) -> [Tensor] {
        var pending: [(indices: [Int], average: PendingAverage)] = []
        var indices: [Int] = [], tensors: [Tensor] = [], bytes = 0
        var backwardRunning = true, startedDuringBackward = 0
        func flush() {
            guard !indices.isEmpty else { return }
            do { pending.append((indices, try communicator.startAverage(tensors))) } catch {
                fail("rank \(rank): averaging gradients: \(error)")
            }
            if backwardRunning { startedDuringBackward += 1 }
            indices = []
            tensors = []
            bytes = 0
        }
        _ = gradients(of: loss, wrt: params, initial: initial) { i, g in
            indices.append(i)
            tensors.append(g)
            bytes += g.count * g.dtype.byteSize
            if bytes >= self.bucketBytes { flush() }
        }
        backwardRunning = false
        flush()
        var averaged = [Tensor?](repeating: nil, count: params.count)
        for (bucket, average) in pending {
            let values: [Tensor]
            do { values = try average.wait() } catch { fail("rank \(rank): averaging gradients: \(error)") }
            for (i, v) in zip(bucket, values) { averaged[i] = v }
        }
        lastBucketCount = pending.count
        lastBucketsStartedDuringBackward = startedDuringBackward
        return averaged.map { $0! }
    }

    /// The average across ranks of a few host values (each rank's figures for its equal share of the batch).
    public func averageAcrossRanks(_ values: [Double]) -> [Double] {
        let n = Double(worldSize)
        return sum(values).map { $0 / n }
    }

    /// Whether any rank passes true: decisions that must be taken together (stop at a time budget).
    public func anyRank(_ flag: Bool) -> Bool { sum([flag ? 1 : 0])[0] > 0 }

    private func sum(_ values: [Double]) -> [Double] {
        do { return try communicator.allReduceSum(values) } catch { fail("rank \(rank): \(error)") }
    }
}
