#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// A bad argument to an evaluation routine; the message is one line saying what was wrong.
public struct EvalError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Exact 2-Wasserstein distance between two empirical measures with the same number of atoms.
///
/// With equal weights 1/n on both sides the optimal transport plan is a permutation (Birkhoff), so
/// W2² is the optimum of a linear assignment problem on the squared-distance matrix. We solve that
/// exactly instead of using Sinkhorn because the value is used as an evaluation metric: an entropic
/// bias would depend on the regulariser and make numbers from different runs hard to compare.
public enum Wasserstein {

    /// W2 = sqrt(min_π (1/n) Σ_i ||a_i − b_π(i)||²) for row-major point sets `a`, `b` of dimension `dim`.
    public static func w2(_ a: [Float], _ b: [Float], dim: Int) throws -> Double {
        guard dim > 0 else { throw EvalError("w2: dim must be positive, got \(dim)") }
        guard a.count % dim == 0 else {
            throw EvalError("w2: first point set has \(a.count) values, not a multiple of dim \(dim)")
        }
        guard b.count % dim == 0 else {
            throw EvalError("w2: second point set has \(b.count) values, not a multiple of dim \(dim)")
        }
        let n = a.count / dim
        guard n == b.count / dim else {
            throw EvalError("w2: point sets differ in size (\(n) vs \(b.count / dim) points); exact W2 needs equal counts")
        }
        guard n > 0 else { throw EvalError("w2: point sets are empty") }
        if let k = a.firstIndex(where: { !$0.isFinite }) {
            throw EvalError("w2: first point set has a non-finite value (\(a[k])) at point \(k / dim)")
        }
        if let k = b.firstIndex(where: { !$0.isFinite }) {
            throw EvalError("w2: second point set has a non-finite value (\(b[k])) at point \(k / dim)")
        }
        // Finite Floats cannot overflow here: (2 · Float.greatestFiniteMagnitude)² · dim stays far
        // below Double's range, so the matrix is finite whenever the inputs are.
        let cost = squaredDistances(a, b, n: n, dim: dim)
        let total = assignment(cost: cost, n: n).total
        return (total / Double(n)).squareRoot()
    }

    /// The data-vs-data floor: W2 between two independent samples of size `n` from the same sampler.
    /// A model's W2 against a data sample cannot be expected to go below this (finite-sample noise).
    public static func floor(sampler: (Int, inout RandomGenerator) -> [Float], n: Int, dim: Int,
                             rng: inout RandomGenerator) throws -> Double {
        guard n > 0 else { throw EvalError("floor: sample size must be positive, got \(n)") }
        let first = sampler(n, &rng)
        let second = sampler(n, &rng)
        guard first.count == n * dim, second.count == n * dim else {
            throw EvalError("floor: sampler returned \(first.count) and \(second.count) values, expected \(n * dim) (n \(n) × dim \(dim))")
        }
        return try w2(first, second, dim: dim)
    }

    /// Dense n×n matrix of squared Euclidean distances, accumulated in Double so that the cost of the
    /// optimum is not limited by Float rounding of the individual terms.
    static func squaredDistances(_ a: [Float], _ b: [Float], n: Int, dim: Int) -> [Double] {
        var cost = [Double](repeating: 0, count: n * n)
        let ad = a.map(Double.init), bd = b.map(Double.init)
        ad.withUnsafeBufferPointer { pa in
            bd.withUnsafeBufferPointer { pb in
                cost.withUnsafeMutableBufferPointer { pc in
                    for i in 0..<n {
                        let ai = i * dim, row = i * n
                        for j in 0..<n {
                            let bj = j * dim
                            var s = 0.0
                            for k in 0..<dim {
                                let t = pa[ai + k] - pb[bj + k]
                                s += t * t
                            }
                            pc[row + j] = s
                        }
                    }
                }
            }
        }
        return cost
    }

    /// Like `assignment(cost:n:)` but checks its input and throws instead of trapping.
    public static func checkedAssignment(cost: [Double], n: Int) throws -> (perm: [Int], total: Double) {
        guard n >= 0 else { throw EvalError("assignment: n must be non-negative, got \(n)") }
        guard cost.count == n * n else {
            throw EvalError("assignment: cost has \(cost.count) entries, expected n*n = \(n * n)")
        }
        if let k = cost.firstIndex(where: { !$0.isFinite }) {
            throw EvalError("assignment: cost[\(k / max(n, 1))][\(k % max(n, 1))] is not finite (\(cost[k]))")
        }
        return assignment(cost: cost, n: n)
    }

    /// Minimum-cost perfect matching on a dense row-major n×n cost matrix (Jonker & Volgenant, 1987).
    ///
    /// `perm[i]` is the column given to row i; `total` = Σ_i cost[i][perm[i]]. The result is an exact
    /// optimum (up to Double rounding of the sums). Requires `cost.count == n*n` and finite costs:
    /// this entry point is for callers that built the matrix themselves; use `checkedAssignment`
    /// for untrusted input.
    public static func assignment(cost: [Double], n: Int) -> (perm: [Int], total: Double) {
        precondition(n >= 0 && cost.count == n * n,
                     "Wasserstein.assignment: cost has \(cost.count) entries, expected n*n with n = \(n)")
        precondition(!cost.contains(where: { !$0.isFinite }), "Wasserstein.assignment: cost contains non-finite values")
        if n == 0 { return ([], 0) }
        if n == 1 { return ([0], cost[0]) }
        var solver = JonkerVolgenant(n: n)
        cost.withUnsafeBufferPointer { solver.solve($0) }
        var total = 0.0
        for i in 0..<n { total += cost[i * n + solver.x[i]] }
        return (solver.x, total)
    }
}

/// State of the Jonker–Volgenant solver.
///
/// Invariant kept through every phase (it is what makes the final matching optimal): with column
/// prices `v`, every assigned row i sits on a column minimising its reduced cost c[i][j] − v[j].
/// Setting u[i] to that minimum gives a dual-feasible (u, v) that is complementary-slack with the
/// current partial matching, so when the matching becomes perfect it is optimal (LP duality).
struct JonkerVolgenant {
    let n: Int
    /// x[i]: column of row i (−1 if free); y[j]: row of column j (−1 if free); v: column prices.
    var x: [Int], y: [Int], v: [Double]

    init(n: Int) {
        self.n = n
        x = [Int](repeating: -1, count: n)
        y = [Int](repeating: -1, count: n)
        v = [Double](repeating: 0, count: n)
    }

    mutating func solve(_ c: UnsafeBufferPointer<Double>) {
        var free = columnReduction(c)
        // Two passes, as in the paper: they assign most rows cheaply; what is left is done by the
        // shortest augmenting paths, which alone guarantee termination in O(n³).
        for _ in 0..<2 where !free.isEmpty { free = augmentingRowReduction(c, free) }
        augment(c, free)
    }

    /// Prices every column at its cheapest row and gives each column to that row when the row is still
    /// unassigned. Then "reduction transfer": a row holding exactly one column lowers that column's
    /// price to its second-best reduced cost, which leaves slack for later augmentations.
    /// Returns the free rows.
    mutating func columnReduction(_ c: UnsafeBufferPointer<Double>) -> [Int] {
        var matches = [Int](repeating: 0, count: n)
        // Reverse order as in the original; it only changes tie-breaking.
        for j in stride(from: n - 1, through: 0, by: -1) {
            var imin = 0, best = c[j]
            for i in 1..<n where c[i * n + j] < best { best = c[i * n + j]; imin = i }
            v[j] = best
            matches[imin] += 1
            if matches[imin] == 1 { x[imin] = j; y[j] = imin }
        }
        var free: [Int] = []
        for i in 0..<n {
            if matches[i] == 0 {
                free.append(i)
            } else if matches[i] == 1 {
                let j1 = x[i], row = i * n
                var mu = Double.infinity
                for j in 0..<n where j != j1 { mu = min(mu, c[row + j] - v[j]) }
                // mu ≥ 0 here (column j1 was the row's minimum at reduced cost 0).
                v[j1] -= mu
            }
        }
        return free
    }

    /// One pass of augmenting row reduction: each free row takes the column with its smallest reduced
    /// cost, lowering that column's price down to the row's second-smallest so the row stays at a
    /// minimum; the evicted row (if any) becomes free. Each step keeps the invariant, so the pass may
    /// be stopped at any point; the step budget guards against slow ping-pong between rows when two
    /// reduced costs differ only by rounding-sized amounts.
    mutating func augmentingRowReduction(_ c: UnsafeBufferPointer<Double>, _ freeRows: [Int]) -> [Int] {
        var queue = freeRows, next: [Int] = []
        var k = 0, steps = 0
        let budget = 8 * n
        while k < queue.count {
            let i = queue[k]; k += 1
            steps += 1
            if steps > budget { next.append(i); continue }
            let row = i * n
            var umin = c[row] - v[0], usub = Double.infinity, j1 = 0, j2 = -1
            for j in 1..<n {
                let h = c[row + j] - v[j]
                if h < usub {
                    if h >= umin { usub = h; j2 = j } else { usub = umin; umin = h; j2 = j1; j1 = j }
                }
            }
            var i0 = y[j1]
            if umin < usub {
                v[j1] -= usub - umin
            } else if i0 >= 0 {
                // Tie: take the equally cheap second column instead, avoiding a pointless eviction.
                j1 = j2; i0 = y[j1]
            }
            x[i] = j1; y[j1] = i
            if i0 >= 0 {
                x[i0] = -1
                if umin < usub {
                    // The price of j1 strictly dropped, so re-examining i0 at once is progress.
                    k -= 1; queue[k] = i0
                } else {
                    next.append(i0)
                }
            }
        }
        return next
    }

    /// For each free row, a Dijkstra search over columns with reduced costs (non-negative by the
    /// invariant) finds a shortest alternating path to a free column; prices of the columns settled
    /// before it are raised so that all reduced costs stay non-negative and the path is tight, then
    /// the matching is flipped along the path.
    mutating func augment(_ c: UnsafeBufferPointer<Double>, _ freeRows: [Int]) {
        var d = [Double](repeating: 0, count: n)
        var pred = [Int](repeating: 0, count: n)
        // cols[0..<low]: settled; cols[low..<up]: at the current minimum distance, to scan;
        // cols[up..<n]: not yet reached at the minimum.
        var cols = [Int](repeating: 0, count: n)
        d.withUnsafeMutableBufferPointer { d in
        pred.withUnsafeMutableBufferPointer { pred in
        cols.withUnsafeMutableBufferPointer { cols in
        v.withUnsafeMutableBufferPointer { v in
        x.withUnsafeMutableBufferPointer { x in
        y.withUnsafeMutableBufferPointer { y in
            for f in freeRows {
                let frow = f * n
                for j in 0..<n { d[j] = c[frow + j] - v[j]; pred[j] = f; cols[j] = j }
                var low = 0, up = 0, minD = 0.0, end = -1
                search: while true {
                    if up == low {
                        // Collect every column at the new minimum distance.
                        minD = d[cols[up]]; up += 1
                        var k = up
                        while k < n {
                            let j = cols[k], h = d[j]
                            if h <= minD {
                                if h < minD { up = low; minD = h }
                                cols[k] = cols[up]; cols[up] = j; up += 1
                            }
                            k += 1
                        }
                        for k in low..<up where y[cols[k]] < 0 { end = cols[k]; break search }
                    }
                    // Settle one column and relax the edges of the row that holds it.
                    let j1 = cols[low]; low += 1
                    let i = y[j1], row = i * n
                    let u1 = c[row + j1] - v[j1] - minD
                    var k = up
                    while k < n {
                        let j = cols[k]
                        let h = c[row + j] - v[j] - u1
                        if h < d[j] {
                            d[j] = h; pred[j] = i
                            if h == minD {
                                if y[j] < 0 { end = j; break search }
                                cols[k] = cols[up]; cols[up] = j; up += 1
                            }
                        }
                        k += 1
                    }
                }
                // Price update on settled columns (those at minD change by zero).
                for k in 0..<low { let j = cols[k]; v[j] += d[j] - minD }
                // Flip the alternating path back to f.
                var j = end
                while true {
                    let i = pred[j]
                    y[j] = i
                    let prev = x[i]
                    x[i] = j
                    if i == f { break }
                    j = prev
                }
            }
        }}}}}}
    }
}
