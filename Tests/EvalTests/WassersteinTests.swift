#if canImport(Glibc)
import Glibc
#endif
import XCTest
import TensorCore
import Eval

final class WassersteinTests: XCTestCase {

    /// Exhaustive minimum over all permutations (Heap's algorithm), the reference for small n.
    func bruteForce(_ cost: [Double], _ n: Int) -> Double {
        var perm = Array(0..<n), best = Double.infinity
        func eval() { var s = 0.0; for i in 0..<n { s += cost[i * n + perm[i]] }; best = min(best, s) }
        var c = [Int](repeating: 0, count: n)
        eval()
        var i = 0
        while i < n {
            if c[i] < i {
                if i % 2 == 0 { perm.swapAt(0, i) } else { perm.swapAt(c[i], i) }
                eval(); c[i] += 1; i = 0
            } else { c[i] = 0; i += 1 }
        }
        return best
    }

    /// Squared-distance matrix in Double, computed independently of the module under test.
    func sqDist(_ a: [Float], _ b: [Float], _ n: Int, _ dim: Int) -> [Double] {
        var c = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { for k in 0..<dim {
            let t = Double(a[i * dim + k]) - Double(b[j * dim + k]); c[i * n + j] += t * t } } }
        return c
    }

    func isPermutation(_ p: [Int], _ n: Int) -> Bool { p.count == n && Set(p) == Set(0..<n) }

    func testAssignmentMatchesBruteForceOnPointSets() throws {
        for n in 1...7 {
            for seed in 0..<40 {
                var rng = RandomGenerator(seed: UInt64(1000 * n + seed))
                let dim = 1 + seed % 3
                let a = rng.normalFloats(n * dim), b = rng.normalFloats(n * dim)
                let cost = sqDist(a, b, n, dim)
                let (perm, total) = Wasserstein.assignment(cost: cost, n: n)
                XCTAssertTrue(isPermutation(perm, n))
                // The reported total must be the cost of the reported permutation...
                var s = 0.0; for i in 0..<n { s += cost[i * n + perm[i]] }
                XCTAssertEqual(total, s, accuracy: 1e-12)
                // ...and the optimum.
                let ref = bruteForce(cost, n)
                XCTAssertEqual(total, ref, accuracy: 1e-9, "n \(n) seed \(seed)")
                XCTAssertEqual(try Wasserstein.w2(a, b, dim: dim), (ref / Double(n)).squareRoot(), accuracy: 1e-9)
            }
        }
    }

    func testAssignmentMatchesBruteForceOnGeneralAndDegenerateCosts() {
        for n in 2...7 {
            for seed in 0..<60 {
                var rng = RandomGenerator(seed: UInt64(77_000 + 100 * n + seed))
                let cost: [Double]
                switch seed % 3 {
                case 0: cost = rng.uniformFloats(n * n).map { Double($0) * 100 }            // generic
                case 1: cost = (0..<(n * n)).map { _ in Double(rng.int(below: 4)) }        // many ties
                default: cost = rng.uniformFloats(n * n).map { Double($0) * 1e6 - 5e5 }    // negative costs
                }
                let (perm, total) = Wasserstein.assignment(cost: cost, n: n)
                XCTAssertTrue(isPermutation(perm, n))
                XCTAssertEqual(total, bruteForce(cost, n), accuracy: 1e-9 * max(1, abs(total)), "n \(n) seed \(seed)")
            }
        }
        // All-equal costs: every permutation is optimal.
        let flat = Wasserstein.assignment(cost: [Double](repeating: 3, count: 36), n: 6)
        XCTAssertTrue(isPermutation(flat.perm, 6))
        XCTAssertEqual(flat.total, 18)
    }

    /// A perfect matching is optimal iff its residual graph has no negative cycle (rows → columns
    /// along unused edges at +c, columns → rows along used edges at −c). Bellman–Ford checks that for
    /// n too large to brute force.
    func assertOptimalByResidualGraph(_ cost: [Double], _ n: Int, _ p: [Int], _ label: String) {
        XCTAssertTrue(isPermutation(p, n), label)
        guard isPermutation(p, n) else { return }
        let tol = 1e-9 * max(1, cost.map(abs).max() ?? 1)
        var dist = [Double](repeating: 0, count: 2 * n)
        var changed = true, rounds = 0
        while changed && rounds <= 2 * n {
            changed = false; rounds += 1
            for i in 0..<n {
                for j in 0..<n where p[i] != j {
                    if dist[i] + cost[i * n + j] < dist[n + j] - tol { dist[n + j] = dist[i] + cost[i * n + j]; changed = true }
                }
                let j = p[i]
                if dist[n + j] - cost[i * n + j] < dist[i] - tol { dist[i] = dist[n + j] - cost[i * n + j]; changed = true }
            }
        }
        XCTAssertFalse(changed, "\(label): residual graph has a negative cycle, assignment not optimal")
    }

    func testLargerAssignmentsHaveNoNegativeCycle() {
        let n = 60
        for seed in 0..<12 {
            var rng = RandomGenerator(seed: UInt64(4242 + seed))
            let cost: [Double]
            switch seed % 3 {
            case 0: let a = rng.normalFloats(2 * n), b = rng.normalFloats(2 * n); cost = sqDist(a, b, n, 2)
            case 1: cost = (0..<(n * n)).map { _ in Double(rng.int(below: 5)) }   // heavy ties
            default:                                                            // clustered points: near-ties
                let a = rng.uniformFloats(2 * n).map { ($0 * 3).rounded() + 1e-3 * $0 }
                let b = rng.uniformFloats(2 * n).map { ($0 * 3).rounded() - 1e-3 * $0 }
                cost = sqDist(a, b, n, 2)
            }
            let p = Wasserstein.assignment(cost: cost, n: n).perm
            assertOptimalByResidualGraph(cost, n, p, "seed \(seed)")
        }
    }

    func testShiftedCopyGivesNormOfShift() throws {
        var rng = RandomGenerator(seed: 7)
        for dim in [1, 2, 3] {
            let n = 300
            let a = rng.normalFloats(n * dim)
            let c: [Float] = Array([0.75, -0.5, 0.25].prefix(dim))
            let b = (0..<(n * dim)).map { a[$0] + c[$0 % dim] }
            let norm = Double(c.map { $0 * $0 }.reduce(0, +)).squareRoot()
            // Translating one measure moves W2² by exactly |c|² (cross term vanishes only for equal
            // means, which holds here), and the identity matching stays optimal.
            XCTAssertEqual(try Wasserstein.w2(a, b, dim: dim), norm, accuracy: 1e-5)
        }
    }

    func testPermutedCopyGivesZero() throws {
        var rng = RandomGenerator(seed: 11)
        let n = 500
        let a = rng.normalFloats(2 * n)
        var order = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, rng.int(below: i + 1)) }
        var b = [Float](repeating: 0, count: 2 * n)
        for i in 0..<n { b[2 * i] = a[2 * order[i]]; b[2 * i + 1] = a[2 * order[i] + 1] }
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(try Wasserstein.w2(a, b, dim: 2), 0, accuracy: 1e-12)
    }

    func testOneDimensionalMatchesSortedMatching() throws {
        for seed in 0..<5 {
            var rng = RandomGenerator(seed: UInt64(500 + seed))
            let n = 500
            let a = rng.normalFloats(n)
            let b = rng.uniformFloats(n).map { 3 * $0 - 1 }
            // In 1-D with convex cost the monotone (sorted) coupling is optimal.
            let sa = a.sorted(), sb = b.sorted()
            var s = 0.0
            for i in 0..<n { let t = Double(sa[i]) - Double(sb[i]); s += t * t }
            XCTAssertEqual(try Wasserstein.w2(a, b, dim: 1), (s / Double(n)).squareRoot(), accuracy: 1e-9)
        }
    }

    func testSymmetry() throws {
        for seed in 0..<5 {
            var rng = RandomGenerator(seed: UInt64(900 + seed))
            let n = 400
            let a = rng.normalFloats(2 * n), b = rng.uniformFloats(2 * n).map { 4 * $0 - 2 }
            let ab = try Wasserstein.w2(a, b, dim: 2), ba = try Wasserstein.w2(b, a, dim: 2)
            XCTAssertGreaterThan(ab, 0.1)
            XCTAssertEqual(ab, ba, accuracy: 1e-9)
        }
    }

    func testBadInputThrowsWithMessage() {
        func message(_ body: () throws -> Double) -> String? {
            do { _ = try body(); return nil } catch let e as EvalError { return e.description } catch { return "\(error)" }
        }
        XCTAssertEqual(message { try Wasserstein.w2([1, 2, 3], [1, 2], dim: 2) },
                       "w2: first point set has 3 values, not a multiple of dim 2")
        XCTAssertEqual(message { try Wasserstein.w2([1, 2], [1, 2, 3], dim: 2) },
                       "w2: second point set has 3 values, not a multiple of dim 2")
        XCTAssertEqual(message { try Wasserstein.w2([1, 2, 3, 4], [1, 2], dim: 2) },
                       "w2: point sets differ in size (2 vs 1 points); exact W2 needs equal counts")
        XCTAssertEqual(message { try Wasserstein.w2([], [], dim: 2) }, "w2: point sets are empty")
        XCTAssertEqual(message { try Wasserstein.w2([1], [1], dim: 0) }, "w2: dim must be positive, got 0")
        XCTAssertEqual(message { try Wasserstein.w2([1, .nan], [1, 2], dim: 2) },
                       "w2: first point set has a non-finite value (nan) at point 0")
        XCTAssertEqual(message { try Wasserstein.w2([1, 2, 3, 4], [1, 2, .infinity, 0], dim: 2) },
                       "w2: second point set has a non-finite value (inf) at point 1")
        // Extreme but finite coordinates are fine: the distances are formed in Double.
        XCTAssertEqual(try Wasserstein.w2([3e38, 0], [-3e38, 0], dim: 2), 2 * Double(Float(3e38)), accuracy: 1e26)
        XCTAssertEqual(message { try Wasserstein.checkedAssignment(cost: [1, 2, 3], n: 2).total },
                       "assignment: cost has 3 entries, expected n*n = 4")
        XCTAssertEqual(message { try Wasserstein.checkedAssignment(cost: [1, 2, .nan, 4], n: 2).total },
                       "assignment: cost[1][0] is not finite (nan)")
        XCTAssertEqual(try Wasserstein.checkedAssignment(cost: [1, 2, 2, 1], n: 2).total, 2)
        var rng = RandomGenerator(seed: 1)
        XCTAssertEqual(message { try Wasserstein.floor(sampler: { n, r in r.uniformFloats(n) }, n: 10, dim: 2, rng: &rng) },
                       "floor: sampler returned 10 and 10 values, expected 20 (n 10 × dim 2)")
        XCTAssertEqual(message { try Wasserstein.floor(sampler: { n, r in r.uniformFloats(2 * n) }, n: 0, dim: 2, rng: &rng) },
                       "floor: sample size must be positive, got 0")
    }

    func testSinglePoint() throws {
        XCTAssertEqual(try Wasserstein.w2([0, 0], [3, 4], dim: 2), 5, accuracy: 1e-12)
        XCTAssertEqual(Wasserstein.assignment(cost: [], n: 0).perm, [])
    }

    func testFloorIsDeterministicAndPositive() throws {
        let sampler: (Int, inout RandomGenerator) -> [Float] = { n, r in r.uniformFloats(2 * n) }
        var r1 = RandomGenerator(seed: 5), r2 = RandomGenerator(seed: 5)
        let f1 = try Wasserstein.floor(sampler: sampler, n: 500, dim: 2, rng: &r1)
        let f2 = try Wasserstein.floor(sampler: sampler, n: 500, dim: 2, rng: &r2)
        XCTAssertEqual(f1, f2)
        XCTAssertGreaterThan(f1, 0.01)
        XCTAssertLessThan(f1, 0.1)
    }

    /// n = 2000, d = 2 timing on uniform data (the Data module's checkerboard timing is in DataTests).
    func testTimingN2000() throws {
        var rng = RandomGenerator(seed: 2000)
        let a = rng.uniformFloats(4000).map { 4 * $0 - 2 }, b = rng.uniformFloats(4000).map { 4 * $0 - 2 }
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        let w = try Wasserstein.w2(a, b, dim: 2)
        clock_gettime(CLOCK_MONOTONIC, &t1)
        let secs = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) * 1e-9
        print("w2 timing: n 2000 dim 2 uniform[-2,2]^2 vs same: \(secs) s, W2 = \(w)")
        XCTAssertGreaterThan(w, 0.02)
        XCTAssertLessThan(w, 0.3)
        XCTAssertLessThan(secs, 30, "exact W2 for n 2000 took far longer than expected")
    }
}
