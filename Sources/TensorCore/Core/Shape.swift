/// Shape arithmetic shared by the ops and the backends.
public enum Shape {
    public static func count(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = acc
            acc *= shape[i]
        }
        return strides
    }

    /// NumPy broadcasting of two shapes, or nil when they are incompatible.
    public static func broadcast(_ a: [Int], _ b: [Int]) -> [Int]? {
        let n = max(a.count, b.count)
        var out = [Int](repeating: 1, count: n)
        for i in 0..<n {
            let da = i < n - a.count ? 1 : a[i - (n - a.count)]
            let db = i < n - b.count ? 1 : b[i - (n - b.count)]
            if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else { return nil }
        }
        return out
    }

    /// Strides that read a dense tensor of `shape` as if broadcast to `target` (0 on broadcast axes).
    public static func broadcastStrides(_ shape: [Int], to target: [Int]) -> [Int] {
        let own = contiguousStrides(shape)
        let lead = target.count - shape.count
        return (0..<target.count).map { i in
            i < lead ? 0 : (shape[i - lead] == 1 && target[i] != 1 ? 0 : own[i - lead])
        }
    }

    /// Normalises a possibly negative axis.
    public static func axis(_ a: Int, rank: Int) -> Int {
        let r = a < 0 ? a + rank : a
        precondition(r >= 0 && r < rank, "axis \(a) out of range for rank \(rank)")
        return r
    }

    /// Merges adjacent axes that are contiguous in every view, so kernels loop over as few axes as possible.
    public static func collapse(shape: [Int], strides: [[Int]]) -> (shape: [Int], strides: [[Int]]) {
        var outShape: [Int] = []
        var outStrides = [[Int]](repeating: [], count: strides.count)
        for i in 0..<shape.count where shape[i] != 1 {
            if let last = outShape.last,
               strides.indices.allSatisfy({ v in outStrides[v].last! == strides[v][i] * shape[i] }) {
                outShape[outShape.count - 1] = last * shape[i]
                for v in strides.indices { outStrides[v][outStrides[v].count - 1] = strides[v][i] }
            } else {
                outShape.append(shape[i])
                for v in strides.indices { outStrides[v].append(strides[v][i]) }
            }
        }
        if outShape.isEmpty { return ([1], strides.map { _ in [1] }) }
        return (outShape, outStrides)
    }
}
