import Dispatch
#if canImport(Glibc)
import Glibc
#endif
#if os(Linux)
import Synchronization
#endif

/// Work splitting for CPU kernels: below `grain` elements one thread is faster than waking others.
enum Parallel {
    static let cores = max(1, sysconfCores())

    /// Calls `body(range)` over disjoint ranges covering 0..<count, in parallel when worth it.
    @inline(__always)
    static func forRanges(_ count: Int, grain: Int = 32_768, _ body: (Range<Int>) -> Void) {
        let chunks = min(cores * 4, count / Swift.max(grain, 1))
        if chunks <= 1 {
            body(0..<count)
            return
        }
        let step = (count + chunks - 1) / chunks
        let piece = { (c: Int) in
            let lo = c * step
            if lo < count { body(lo..<Swift.min(count, lo + step)) }
        }
        #if os(Linux)
        if WorkerPool.shared.run(chunks, piece) { return }
        #endif
        // A loop started inside another one, or beside one on another thread.
        DispatchQueue.concurrentPerform(iterations: chunks, execute: piece)
    }

    private static func sysconfCores() -> Int {
        #if canImport(Glibc)
        return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        return 1
        #endif
    }
}

#if os(Linux)
/// Threads (one per core besides the caller's) that stay awake for a moment after each parallel loop. A training
/// step on the CPU runs about a hundred loops, tens to hundreds of microseconds each with little in between: a
/// worker woken from sleep for each (what DispatchQueue.concurrentPerform does) starts late, and the caller waits
/// for it. An idle worker polls for `spinMicroseconds` (TVM_CPU_SPIN_US, default 100; 0: sleep at once, for a
/// machine shared with other busy programs) and then sleeps until the next loop.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool(workers: Parallel.cores - 1, spinMicroseconds: {
        guard let text = getenv("TVM_CPU_SPIN_US"), let value = Int(String(cString: text)), value >= 0 else { return 100 }
        return value
    }())

    /// The loop in progress as one word: generation << 32 | open << 31 | workers inside. A worker enters only an open
    /// loop of a generation it has not run, by adding one; the caller closes the loop when it runs out of pieces
    /// and waits for the count to drop to zero, so no worker reads a loop's fields after its caller moved on.
    private let state = Atomic<Int>(0)
    private let nextPiece = Atomic<Int>(0)
    private let inUse = Atomic<Bool>(false)
    private static let open = 1 << 31, countMask = (1 << 31) - 1
    private var pieces = 0
    private var body: ((Int) -> Void)?
    private var mutex = pthread_mutex_t(), wake = pthread_cond_t()
    private var sleepers = 0
    private let spinNanoseconds: Int

    init(workers: Int, spinMicroseconds: Int) {
        spinNanoseconds = spinMicroseconds * 1000
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&wake, nil)
        for _ in 0..<workers {
            var thread = pthread_t()
            let context = Unmanaged.passRetained(self).toOpaque()
            pthread_create(&thread, nil, { context in
                Unmanaged<WorkerPool>.fromOpaque(context!).takeRetainedValue().workerLoop()
                return nil
            }, context)
            pthread_detach(thread)
        }
    }

    /// Runs body(i) for each i in 0..<pieces on the calling thread and the workers. False, with nothing run, when
    /// the pool is already running a loop (one nested in it, or one on another thread).
    func run(_ pieces: Int, _ body: (Int) -> Void) -> Bool {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        withoutActuallyEscaping(body) { body in
            self.body = body
            self.pieces = pieces
            nextPiece.store(0, ordering: .relaxed)
            let generation = (state.load(ordering: .relaxed) >> 32) + 1
            state.store(generation << 32 | Self.open, ordering: .releasing)
            pthread_mutex_lock(&mutex)
            if sleepers > 0 { pthread_cond_broadcast(&wake) }
            pthread_mutex_unlock(&mutex)
            work()
            var word = state.load(ordering: .relaxed)
            while true {
                let (closed, current) = state.compareExchange(expected: word, desired: word & ~Self.open,
                                                              ordering: .acquiringAndReleasing)
                if closed { break }
                word = current
            }
            var polls = 0
            while state.load(ordering: .acquiring) & Self.countMask != 0 {
                polls += 1
                // A worker descheduled in the middle of a piece: let it run.
                if polls % 1024 == 0 { sched_yield() }
            }
            self.body = nil
        }
        inUse.store(false, ordering: .releasing)
        return true
    }

    private func work() {
        while true {
            let i = nextPiece.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= pieces { return }
            body!(i)
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            var word = waitForLoop(after: seen)
            seen = word >> 32
            // Enter while the loop stays open (the caller may have run every piece itself meanwhile).
            var entered = false
            while word >> 32 == seen && word & Self.open != 0 {
                let (exchanged, current) = state.compareExchange(expected: word, desired: word + 1, ordering: .acquiringAndReleasing)
                if exchanged { entered = true; break }
                word = current
            }
            guard entered else { continue }
            work()
            state.wrappingSubtract(1, ordering: .releasing)
        }
    }

    /// The state word of the first open loop of a generation other than `seen`: polled for a while, then slept for.
    private func waitForLoop(after seen: Int) -> Int {
        func isNew(_ word: Int) -> Bool { word >> 32 != seen && word & Self.open != 0 }
        let start = Self.nanoseconds()
        var polls = 0
        while Self.nanoseconds() - start < spinNanoseconds {
            let word = state.load(ordering: .acquiring)
            if isNew(word) { return word }
            polls += 1
            if polls % 1024 == 0 { sched_yield() }
        }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        sleepers += 1
        defer { sleepers -= 1 }
        while true {
            let word = state.load(ordering: .acquiring)
            if isNew(word) { return word }
            pthread_cond_wait(&wake, &mutex)
        }
    }

    private static func nanoseconds() -> Int {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return t.tv_sec * 1_000_000_000 + t.tv_nsec
    }
}
#endif
