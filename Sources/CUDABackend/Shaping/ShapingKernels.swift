import TensorCore

// Backend's copies and row gathers on Shaping.cu's kernels.
extension CUDABackend {
    public func copy(_ x: Storage, _ xv: StridedView, _ y: Storage, _ yv: StridedView, shape: [Int]) {
        let total = Shape.count(shape)
        guard total > 0 else { return }
        let es = y.dtype.byteSize
        let (cs, st) = Shape.collapse(shape: shape, strides: [xv.strides, yv.strides])
        let px = addr(x) + UInt64(xv.offset * es), py = addr(y) + UInt64(yv.offset * es)
        if cs.count == 1 && st[0][0] == 1 && st[1][0] == 1 {
            ensureCurrent()
            driver.must(driver.cuMemcpyDtoDAsync(py, px, total * es, stream), "cuMemcpyDtoDAsync_v2")
            return
        }
        precondition(cs.count <= 8, "CUDA copy: more than 8 axes after collapsing (\(shape))")
        let k = kernels(ShapingKernels.self, y.dtype)
        let inner = cs[cs.count - 1], ix = st[0][cs.count - 1]
        if cs.count >= 2 && inner >= 32 && (ix == 0 || ix == 1) && st[1][cs.count - 1] == 1 {
            // Rows along an inner axis contiguous in the destination (permutes that keep the last axis, pads, concats).
            let rows = total / inner, (blocksX, chunks, chunk) = rowGrid(rows: rows, inner: inner)
            if profiler?.byGrid == true { profileTag = "\(rows)x\(inner)" }
            k.copyRows.launch(on: self, grid: (blocksX, chunks), block: (32, 8),
                              v: KernelView(shape: Array(cs.dropLast()), strides0: Array(st[0].dropLast()),
                                            strides1: Array(st[1].dropLast())),
                              x: px, y: py, rows: rows, inner: inner, chunk: chunk, ix: ix)
            return
        }
        let indexBits = fits32(total, cs, [st[0], st[1]]) ? 32 : 64
        guard let strided = k.copyStrided.first(where: { $0.indexBits == indexBits }) else {
            preconditionFailure("Shaping.cu has no copy_strided kernel for \(indexBits)-bit indices")
        }
        strided.launch(on: self, grid: (blocks(total), 1), v: KernelView(shape: cs, strides0: st[0], strides1: st[1]), x: px, y: py,
                       n: total)
    }

    /// Indices in the table's element type (the CPU backend reads them so).
    private func indices(_ index: Storage, as dtype: DType) -> Storage {
        index.dtype == dtype ? index : convert(index, to: dtype)
    }

    public func gatherRows(_ table: Storage, _ index: Storage, _ y: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        let idx = indices(index, as: table.dtype)
        kernels(ShapingKernels.self, table.dtype).gather
            .launch(on: self, grid: (Swift.min((rows + 7) / 8, maxBlocks * 4), 1), block: (32, 8), table: addr(table),
                    idx: addr(idx), y: addr(y), rows: rows, cols: cols, tableRows: table.count / cols, err: errorFlag)
    }

    public func scatterAddRows(_ x: Storage, _ index: Storage, _ table: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        forgetBF16Copy(of: table)
        let idx = indices(index, as: x.dtype)
        kernels(ShapingKernels.self, x.dtype).scatterAdd
            .launch(on: self, grid: (Swift.min((rows + 7) / 8, maxBlocks * 4), 1), block: (32, 8), x: addr(x), idx: addr(idx),
                    table: addr(table), rows: rows, cols: cols, tableRows: table.count / cols, err: errorFlag)
    }
}
