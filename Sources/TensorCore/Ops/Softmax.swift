extension Tensor {
    /// Softmax over the last axis.
    public func softmax() -> Tensor {
        let cols = shape.last!
        let y = empty(shape)
        backend.softmax(storage, y.storage, rows: count / Swift.max(cols, 1), cols: cols)
        return record1("softmax", [self], y, saves: [], jvp: { _, y, t in
            [y[0] * (t[0]! - (y[0] * t[0]!).sum(axes: [-1], keepDims: true))]
        }) { _, y, g in [y[0] * (g[0]! - (g[0]! * y[0]).sum(axes: [-1], keepDims: true))] }
    }
}
