extension Tensor {
    /// Same storage, new shape (free: storage is always dense row-major). One dimension may be -1.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let i = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != i }.reduce(1) { $0 * $1.element }
            s[i] = known == 0 ? 0 : count / known
        }
        precondition(Shape.count(s) == count, "cannot reshape \(shape) to \(newShape)")
        if s == shape { return self }
        let oldShape = shape
        return record1("reshape", [self], Tensor(storage: storage, shape: s), saves: [], savesOutputs: false, jvp: { _, _, t in
            [t[0]!.reshaped(s)]
        }) { _, _, g in [g[0]!.reshaped(oldShape)] }
    }

    public func flattened() -> Tensor { reshaped([count]) }

    /// Materialises NumPy broadcasting to `target`.
    public func broadcast(to target: [Int]) -> Tensor {
        if target == shape { return self }
        precondition(Shape.broadcast(shape, target) == target, "cannot broadcast \(shape) to \(target)")
        let y = empty(target)
        backend.copy(storage, StridedView(strides: Shape.broadcastStrides(shape, to: target)),
                     y.storage, StridedView(strides: Shape.contiguousStrides(target)), shape: target)
        let inShape = shape
        return record1("broadcast", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.broadcast(to: target)] }) { _, _, g in
            [g[0]!.sum(to: inShape)]
        }
    }

    /// Reorders axes: output axis i is input axis perm[i].
    public func permuted(_ perm: [Int]) -> Tensor {
        precondition(perm.sorted() == Array(0..<rank), "invalid permutation \(perm) for rank \(rank)")
        if perm == Array(0..<rank) { return self }
        let outShape = perm.map { shape[$0] }
        let inStrides = Shape.contiguousStrides(shape)
        let y = empty(outShape)
        backend.copy(storage, StridedView(strides: perm.map { inStrides[$0] }),
                     y.storage, StridedView(strides: Shape.contiguousStrides(outShape)), shape: outShape)
        var inverse = [Int](repeating: 0, count: rank)
        for (i, p) in perm.enumerated() { inverse[p] = i }
        return record1("permute", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.permuted(perm)] }) { _, _, g in
            [g[0]!.permuted(inverse)]
        }
    }

    /// Swaps the last two axes.
    public var transposed: Tensor {
        var p = Array(0..<rank)
        p.swapAt(rank - 1, rank - 2)
        return permuted(p)
    }

    /// `length` entries of `axis` starting at `start`.
    public func slice(axis: Int, start: Int, length: Int) -> Tensor {
        let a = Shape.axis(axis, rank: rank)
        precondition(start >= 0 && length >= 0 && start + length <= shape[a],
                     "slice \(start)..<\(start + length) out of range for axis of size \(shape[a])")
        if start == 0 && length == shape[a] { return self }
        var outShape = shape
        outShape[a] = length
        let strides = Shape.contiguousStrides(shape)
        let y = empty(outShape)
        backend.copy(storage, StridedView(offset: start * strides[a], strides: strides),
                     y.storage, StridedView(strides: Shape.contiguousStrides(outShape)), shape: outShape)
        let total = shape[a]
        return record1("slice", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.slice(axis: a, start: start, length: length)] }) {
            _, _, g in [g[0]!.padded(axis: a, before: start, total: total)]
        }
    }

    /// Zero padding along `axis`: this tensor placed at `before` in an axis of size `total`.
    public func padded(axis: Int, before: Int, total: Int) -> Tensor {
        let a = Shape.axis(axis, rank: rank)
        precondition(before >= 0 && before + shape[a] <= total, "padding does not fit")
        var outShape = shape
        outShape[a] = total
        let y = Tensor.zeros(outShape, dtype: dtype, on: device)
        let outStrides = Shape.contiguousStrides(outShape)
        backend.copy(storage, StridedView(strides: Shape.contiguousStrides(shape)),
                     y.storage, StridedView(offset: before * outStrides[a], strides: outStrides), shape: shape)
        let length = shape[a]
        return record1("pad", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.padded(axis: a, before: before, total: total)] }) {
            _, _, g in [g[0]!.slice(axis: a, start: before, length: length)]
        }
    }

    /// Splits `axis` into pieces of the given sizes. Pieces of the first axis are contiguous ranges of the storage:
    /// where the backend makes views (`OptimizerBackend.views`) they are views of it, one node and no copies.
    public func split(axis: Int, sizes: [Int]) -> [Tensor] {
        let a = Shape.axis(axis, rank: rank)
        precondition(sizes.reduce(0, +) == shape[a], "split sizes \(sizes) do not add up to \(shape[a])")
        if a == 0, sizes.count > 1, sizes.allSatisfy({ $0 > 0 }), let viewing = backend as? any OptimizerBackend {
            return leadingViews(sizes, viewing)
        }
        var start = 0
        return sizes.map { n in
            defer { start += n }
            return slice(axis: a, start: start, length: n)
        }
    }

    /// `split` along the first axis as views of this tensor's storage. The pieces alias it, which is safe because
    /// nothing writes an op's output in place (only parameters and optimizer state change in place).
    private func leadingViews(_ sizes: [Int], _ backend: any OptimizerBackend) -> [Tensor] {
        let inner = count / shape[0]
        var offsets: [Int] = [], start = 0
        for n in sizes {
            offsets.append(start * inner)
            start += n
        }
        let storages = backend.views(of: storage, offsets: offsets, counts: sizes.map { $0 * inner })
        let pieces = zip(storages, sizes).map { s, n in Tensor(storage: s, shape: [n] + shape.dropFirst()) }
        return record("split", inputs: [self], outputs: pieces, saves: [], savesOutputs: false, jvp: { _, _, t in
            t[0]!.split(axis: 0, sizes: sizes)
        }) { _, outs, g in
            g.allSatisfy({ $0 == nil }) ? [nil] : [concat(zip(outs, g).map { o, gi in gi ?? o.zerosLike() }, axis: 0)]
        }
    }

    /// `parts` equal pieces along `axis`.
    public func chunked(_ parts: Int, axis: Int) -> [Tensor] {
        let a = Shape.axis(axis, rank: rank)
        precondition(shape[a] % parts == 0, "axis of size \(shape[a]) does not split into \(parts)")
        return split(axis: a, sizes: Array(repeating: shape[a] / parts, count: parts))
    }
}

/// Joins tensors along `axis` (all other axes equal).
public func concat(_ xs: [Tensor], axis: Int) -> Tensor {
    precondition(!xs.isEmpty, "concat of nothing")
    let first = xs[0]
    let a = Shape.axis(axis, rank: first.rank)
    for x in xs {
        first.checkSameDType(x, "concat")
        precondition(x.rank == first.rank && (0..<x.rank).allSatisfy { $0 == a || x.shape[$0] == first.shape[$0] },
                     "concat: shapes \(xs.map(\.shape)) differ off axis \(a)")
    }
    var outShape = first.shape
    outShape[a] = xs.reduce(0) { $0 + $1.shape[a] }
    let y = first.empty(outShape)
    let outStrides = Shape.contiguousStrides(outShape)
    var start = 0
    for x in xs {
        first.backend.copy(x.storage, StridedView(strides: Shape.contiguousStrides(x.shape)),
                           y.storage, StridedView(offset: start * outStrides[a], strides: outStrides), shape: x.shape)
        start += x.shape[a]
    }
    let sizes = xs.map { $0.shape[a] }
    return record1("concat", xs, y, saves: [], savesOutputs: false, jvp: { x, _, t in
        [concat(zip(x, t).map { $1 ?? $0.zerosLike() }, axis: a)]
    }) { _, _, g in g[0]!.split(axis: a, sizes: sizes) }
}

/// Stacks equal-shape tensors along a new axis.
public func stack(_ xs: [Tensor], axis: Int = 0) -> Tensor {
    let shape = xs[0].shape
    let a = axis < 0 ? axis + shape.count + 1 : axis
    var expanded = shape
    expanded.insert(1, at: a)
    return concat(xs.map { $0.reshaped(expanded) }, axis: a)
}

extension Tensor {
    /// Rows of `self` ([rows, ...]) picked by `indices` (a float tensor of whole numbers, not differentiable).
    public func gatherRows(_ indices: Tensor) -> Tensor {
        let cols = count / shape[0]
        let n = indices.count
        let y = empty([n] + shape.dropFirst())
        backend.gatherRows(storage, indices.storage, y.storage, rows: n, cols: cols)
        let idx = indices.detached(), rows = shape[0]
        return record1("gather", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.gatherRows(idx)] }) { _, _, g in
            [g[0]!.scatterAddRows(idx, rows: rows)]
        }
    }

    /// A [rows, ...] tensor of zeros with each row of `self` added at its index.
    public func scatterAddRows(_ indices: Tensor, rows: Int) -> Tensor {
        let cols = count / Swift.max(shape[0], 1)
        let y = Tensor.zeros([rows] + shape.dropFirst(), dtype: dtype, on: device)
        backend.scatterAddRows(storage, indices.storage, y.storage, rows: shape[0], cols: cols)
        let idx = indices.detached()
        return record1("scatterAdd", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.scatterAddRows(idx, rows: rows)] }) {
            _, _, g in [g[0]!.gatherRows(idx)]
        }
    }

    /// The same values in another precision (float64 for gradient checks).
    public func cast(_ to: DType) -> Tensor {
        if to == dtype { return self }
        let from = dtype
        let y = Tensor(storage: backend.convert(storage, to: to), shape: shape)
        return record1("cast", [self], y, saves: [], savesOutputs: false, jvp: { _, _, t in [t[0]!.cast(to)] }) { _, _, g in [g[0]!.cast(from)] }
    }
}
