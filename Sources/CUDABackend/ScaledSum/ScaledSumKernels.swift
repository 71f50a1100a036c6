import TensorCore

// Scaled sums and their factors' cotangents (ScaledSumBackend) on ScaledSum.cu's kernels.
extension CUDABackend: ScaledSumBackend {
    public func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                          batch: Int, rows: Int, cols: Int) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        kernels(ScaledSumKernels.self, a.dtype).scaledSum
            .launch(on: self, grid: (Swift.min((nrows + 7) / 8, maxBlocks * 8), 1), block: (32, 8), a: addr(a), s: addr(s),
                    b: addr(b), t: addr(t), c: addr(c), cFull: cFull ? 1 : 0, y: addr(y), nrows: nrows, rows: rows, cols: cols)
    }

    public func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int) {
        precondition(xs.count == outs.count && (1...3).contains(outs.count), "rowSumsOfProducts takes 1 to 3 outputs")
        let kernel = kernels(ScaledSumKernels.self, g.dtype).rowSums
        func x(_ i: Int) -> DevicePointer { i < xs.count ? addr(xs[i]) : 0 }
        columnSums(outs, batch: batch, rows: rows, cols: cols) { grid, o, chunkRows in
            func out(_ i: Int) -> DevicePointer { i < o.count ? addr(o[i]) : 0 }
            kernel.launch(on: self, grid: grid, block: (32, 8), g: addr(g), x0: x(0), x1: x(1), x2: x(2), o0: out(0), o1: out(1),
                          o2: out(2), nout: outs.count, rows: rows, cols: cols, batch: batch, chunkRows: chunkRows)
        }
    }
}
