extension Tensor {
    /// Sum over `axes` (all axes when empty), keeping them as size 1 when `keepDims`.
    public func sum(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        reduce(.sum, axes: axes, keepDims: keepDims)
    }

    public func mean(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        let ax = axes.isEmpty ? Array(0..<rank) : axes.map { Shape.axis($0, rank: rank) }
        let n = ax.reduce(1) { $0 * shape[$1] }
        return sum(axes: axes, keepDims: keepDims) * (1.0 / Double(n))
    }

    public func max(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        reduce(.max, axes: axes, keepDims: keepDims)
    }

    /// Sums away broadcast axes so the result has `target` shape (the VJP of broadcasting).
    public func sum(to target: [Int]) -> Tensor {
        if shape == target { return self }
        let lead = rank - target.count
        precondition(lead >= 0, "sum(to:) cannot grow \(shape) to \(target)")
        var axes = Array(0..<lead)
        for i in 0..<target.count where target[i] == 1 && shape[lead + i] != 1 { axes.append(lead + i) }
        return sum(axes: axes, keepDims: true).reshaped(target)
    }

    private func reduce(_ op: ReduceOp, axes: [Int], keepDims: Bool) -> Tensor {
        let ax = Set(axes.isEmpty ? Array(0..<rank) : axes.map { Shape.axis($0, rank: rank) })
        let keptShape = shape.enumerated().map { ax.contains($0.offset) ? 1 : $0.element }
        let outShape = keepDims ? keptShape : shape.enumerated().filter { !ax.contains($0.offset) }.map(\.element)
        // Reduce one run of adjacent axes at a time, as [outer, n, inner] views.
        var current = self.detached()
        var curShape = shape
        var i = 0
        while i < curShape.count {
            guard ax.contains(i), curShape[i] != 1 else { i += 1; continue }
            var j = i
            while j + 1 < curShape.count && ax.contains(j + 1) { j += 1 }
            let outer = curShape[..<i].reduce(1, *), n = curShape[i...j].reduce(1, *)
            let inner = curShape[(j + 1)...].reduce(1, *)
            let next = current.empty(Array(curShape[..<i]) + Array(repeating: 1, count: j - i + 1) + Array(curShape[(j + 1)...]))
            backend.reduce(op, current.storage, next.storage, outer: outer, n: n, inner: inner)
            current = next
            curShape = next.shape
            i = j + 1
        }
        let y = Tensor(storage: current.storage, shape: outShape)
        let inShape = shape
        switch op {
        case .sum:
            return record1("sum", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in
                [t[0]!.sum(axes: Array(ax), keepDims: keepDims)]
            }) { _, _, g in [g[0]!.reshaped(keptShape).broadcast(to: inShape)] }
        case .max:
            // Ties share the gradient equally, so the rule is symmetric (as PyTorch's amax).
            func weights(_ x: Tensor, _ y: Tensor) -> Tensor {
                let hit = x.equal(y.reshaped(keptShape))
                return hit / hit.sum(axes: Array(ax), keepDims: true)
            }
            return record1("max", [self], y, jvp: { x, y, t in
                [(t[0]! * weights(x[0], y[0])).sum(axes: Array(ax), keepDims: keepDims)]
            }) { x, y, g in [g[0]!.reshaped(keptShape) * weights(x[0], y[0])] }
        }
    }
}
