import Dispatch

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
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = c * step
            if lo < count { body(lo..<Swift.min(count, lo + step)) }
        }
    }

    private static func sysconfCores() -> Int {
        #if canImport(Glibc)
        return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        return 1
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#endif
