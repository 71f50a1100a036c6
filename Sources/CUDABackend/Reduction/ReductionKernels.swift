import TensorCore

// Backend's reductions on Reduction.cu's kernels, and the chunked grid of the column-sum kernels of other families.
extension CUDABackend {
    public func reduce(_ op: ReduceOp, _ x: Storage, _ y: Storage, outer: Int, n: Int, inner: Int) {
        guard outer > 0 && inner > 0 else { return }
        let dtype = x.dtype, k = kernels(ReductionKernels.self, dtype), isMax = op == .max
        if n == 0 {
            fill(y, value: isMax ? -.infinity : 0)
            return
        }
        let target = multiprocessorCount * 4
        if inner == 1 {
            reduceRows(k, op, addr(x), addr(y), outer: outer, n: n, target: target, dtype: dtype)
            return
        }
        let tiles = (inner + 31) / 32, blocksX = outer * tiles
        var splits = 1
        if blocksX < target && n >= 128 {
            splits = Swift.min((target + blocksX - 1) / blocksX, n / 64, 1024)
        }
        let f = k.reduceCols(op)
        if splits <= 1 {
            f.launch(on: self, grid: (blocksX, 1), block: (32, 8), x: addr(x), y: addr(y), n: n, inner: inner, chunk: n)
            return
        }
        let chunk = (n + splits - 1) / splits
        let parts = allocate(outer * splits * inner, dtype)
        f.launch(on: self, grid: (blocksX, splits), block: (32, 8), x: addr(x), y: addr(parts), n: n, inner: inner, chunk: chunk)
        f.launch(on: self, grid: (blocksX, 1), block: (32, 8), x: addr(parts), y: addr(y), n: splits, inner: inner, chunk: splits)
    }

    private func reduceRows(_ k: ReductionKernels, _ op: ReduceOp, _ x: DevicePointer, _ y: DevicePointer,
                            outer: Int, n: Int, target: Int, dtype: DType) {
        let warp = k.reduceRowsWarp(op)
        if n <= 1024 {
            warp.launch(on: self, grid: (blocks(outer * 32), 1), x: x, y: y, outer: outer, n: n)
            return
        }
        let f = k.reduceRowsBlock(op)
        var splits = 1
        if outer < target { splits = Swift.min((target + outer - 1) / outer, n / 2048, 1024) }
        if splits <= 1 {
            f.launch(on: self, grid: (outer, 1), x: x, y: y, n: n, chunk: n)
            return
        }
        let chunk = (n + splits - 1) / splits
        let parts = allocate(outer * splits, dtype)
        f.launch(on: self, grid: (outer, splits), x: x, y: addr(parts), n: n, chunk: chunk)
        warp.launch(on: self, grid: (blocks(outer * 32), 1), x: addr(parts), y: y, outer: outer, n: splits)
    }

    /// Launches a column-sum kernel of row_sums' shape (grid: `tiles` column tiles x chunks x batch entries,
    /// blockIdx.y = chunk * batch + entry) for `outs` [batch, cols] (nil: not wanted); `launchKernel` gets the grid,
    /// the buffers the kernel writes and the rows per chunk. Few batch entries with many rows (a weight shared by
    /// every row: batch 1) would leave most of the GPU idle: the rows are then cut into chunks of at least
    /// `minChunkRows`, each summed by its own blocks into partial sums, which a second pass adds.
    func columnSums(_ outs: [Storage?], batch: Int, rows: Int, cols: Int, tiles: Int? = nil, minChunkRows: Int = 256,
                    _ launchKernel: (_ grid: (Int, Int), _ outputs: [Storage?], _ chunkRows: Int) -> Void) {
        guard batch > 0 && cols > 0 else { return }
        let dtype = outs.lazy.compactMap { $0 }.first?.dtype ?? .float32
        let tiles = tiles ?? (cols + 31) / 32
        let wanted = 8 * multiprocessorCount
        let chunks = Swift.max(1, Swift.min(Swift.min(wanted / Swift.max(tiles * batch, 1), (rows + minChunkRows - 1) / minChunkRows),
                                            65535 / batch))
        let chunkRows = Swift.max((rows + chunks - 1) / chunks, 1)
        let used = Swift.max((rows + chunkRows - 1) / chunkRows, 1)
        precondition(batch * used <= 65535, "column sums: batch \(batch) exceeds the grid's y limit")
        let partials = used > 1 ? outs.map { $0.map { _ in allocate(used * batch * cols, dtype) } } : outs
        launchKernel((tiles, batch * used), partials, chunkRows)
        if used > 1 {
            for (p, o) in zip(partials, outs) {
                if let p, let o { reduce(.sum, p, o, outer: 1, n: used, inner: batch * cols) }
            }
        }
    }
}

extension ReductionKernels {
    func reduceCols(_ op: ReduceOp) -> ReduceCols {
        guard let k = reduceCols.first(where: { $0.op == op }) else { preconditionFailure("Reduction.cu has no reduce_cols kernel for \(op)") }
        return k
    }

    func reduceRowsWarp(_ op: ReduceOp) -> ReduceRowsWarp {
        guard let k = reduceRowsWarp.first(where: { $0.op == op }) else {
            preconditionFailure("Reduction.cu has no reduce_rows_warp kernel for \(op)")
        }
        return k
    }

    func reduceRowsBlock(_ op: ReduceOp) -> ReduceRowsBlock {
        guard let k = reduceRowsBlock.first(where: { $0.op == op }) else {
            preconditionFailure("Reduction.cu has no reduce_rows_block kernel for \(op)")
        }
        return k
    }
}
