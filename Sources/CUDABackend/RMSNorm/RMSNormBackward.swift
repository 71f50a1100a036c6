import TensorCore

// The scaled RMS norm's backward (NormBackend.rmsNormScaledBackward) on RMSNormBackward.cu's kernels.
extension CUDABackend {
    public func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                                      gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                                      sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int,
                                      eps: Double) {
        precondition((dx == nil) == (sA == nil) && (dx == nil) == (gdx == nil), "rmsNormScaledBackward: dx, sA and gdx go together")
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        let k = kernels(RMSNormBackwardKernels.self, x.dtype), outs = [sums.n, sums.dn, sums.one]
        // The partial gradients as float32; x, dx (and gx, gdx) may hold their bf16 values alone, and for the packed
        // rows kernel g too.
        let plus = (x: plus.x.map(widened), dx: plus.dx.map(widened))
        let (xf, x16) = float32OrBF16(x), (dxf, dx16) = dx.map(float32OrBF16) ?? (0, 0), (gf, g16) = float32OrBF16(g)
        let (gxf, gx16) = float32OrBF16(gx), (gdxf, gdx16) = gdx.map(float32OrBF16) ?? (0, 0)
        if let (packed, _) = packedRowKernel(k.rmsnormScaledBwdRowsPacks, lanes: \.lanes, packs: \.packs, rows: nrows, cols: cols,
                                             dtype: x.dtype, [xf, dxf, gf, addr(sA), addr(sB), gxf, gdxf, addr(plus.x), addr(plus.dx)],
                                             [x16, dx16, g16, gx16, gdx16]) {
            columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: 1, minChunkRows: 16) { grid, o, chunkRows in
                packed.launch(on: self, grid: grid, x: xf, x16: x16, dx: dxf, dx16: dx16, g: gf, g16: g16, sA: addr(sA),
                              sB: addr(sB), gx: gxf, gx16: gx16, gdx: gdxf, gdx16: gdx16, px: addr(plus.x), pdx: addr(plus.dx),
                              o0: addr(o[0]), o1: addr(o[1]), o2: addr(o[2]), rows: rows, cols: cols, batch: batch,
                              chunkRows: chunkRows, eps: eps)
            }
            return
        }
        let g = widened(g)
        if let rowsKernel = rowKernel(k.rmsnormScaledBwdRows, cols: cols, width: \.width) {
            // Rows in registers, the column sums of each block's rows in the same pass (one block of 8 warps per
            // chunk of at least 16 rows).
            columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: 1, minChunkRows: 16) { grid, o, chunkRows in
                rowsKernel.launch(on: self, grid: grid, x: xf, x16: x16, dx: dxf, dx16: dx16, g: addr(g), sA: addr(sA),
                                  sB: addr(sB), gx: gxf, gx16: gx16, gdx: gdxf, gdx16: gdx16, px: addr(plus.x),
                                  pdx: addr(plus.dx), o0: addr(o[0]), o1: addr(o[1]), o2: addr(o[2]), rows: rows, cols: cols,
                                  batch: batch, chunkRows: chunkRows, eps: eps)
            }
            return
        }
        let x = widened(x), dx = dx.map(widened)
        writingFloat32(gx) { gx in writingFloat32(gdx) { gdx in
            rowsAndColumnSums(x, dx, g, sA: sA, sB: sB, gx: gx!, gdx: gdx, plus: plus, outs: outs, batch: batch, rows: rows,
                              cols: cols, eps: eps)
        } }
    }

    /// rmsNormScaledBackward for rows wider than the rows kernels take: a row pass (in 16-byte packs where the width and
    /// the addresses allow), then a column-sum pass, all float32.
    private func rowsAndColumnSums(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                                   gdx: Storage?, plus: (x: Storage?, dx: Storage?), outs: [Storage?], batch: Int, rows: Int,
                                   cols: Int, eps: Double) {
        let nrows = batch * rows, k = kernels(RMSNormBackwardKernels.self, x.dtype)
        // r and r^3 mu per row, from the row pass to the column sums.
        let rowR = allocate(nrows, x.dtype), rowQ = allocate(nrows, x.dtype)
        if let (packed, grid) = packedRowKernel(k.rmsnormScaledBwdPacks, lanes: \.lanes, packs: \.packs, rows: nrows, cols: cols,
                                                dtype: x.dtype, [addr(x), addr(dx), addr(g), addr(sA), addr(sB), addr(gx),
                                                                 addr(gdx), addr(plus.x), addr(plus.dx)], []) {
            packed.launch(on: self, grid: grid, x: addr(x), dx: addr(dx), g: addr(g), sA: addr(sA), sB: addr(sB), gx: addr(gx),
                          gdx: addr(gdx), px: addr(plus.x), pdx: addr(plus.dx), rowR: addr(rowR), rowQ: addr(rowQ),
                          nrows: nrows, rows: rows, cols: cols, eps: eps)
        } else {
            k.rmsnormScaledBwd.launch(on: self, grid: (blocks(nrows * 32), 1), x: addr(x), dx: addr(dx), g: addr(g), sA: addr(sA),
                                      sB: addr(sB), gx: addr(gx), gdx: addr(gdx), px: addr(plus.x), pdx: addr(plus.dx),
                                      rowR: addr(rowR), rowQ: addr(rowQ), nrows: nrows, rows: rows, cols: cols, eps: eps)
        }
        // The column sums in 16-byte packs where rows are whole packs and the addresses aligned to them.
        let pack = 16 / x.dtype.byteSize, packs = cols % pack == 0 && [addr(g), addr(x), addr(dx)].reduce(0, |) % 16 == 0
        guard let colSums = k.normColSums.first(where: { $0.vectorized == packs }) else {
            preconditionFailure("RMSNormBackward.cu has no norm_col_sums kernel with vectorized \(packs)")
        }
        columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: packs ? (cols / pack + 31) / 32 : (cols + 31) / 32) {
            grid, o, chunkRows in
            colSums.launch(on: self, grid: grid, block: (32, 8), g: addr(g), x: addr(x), dx: addr(dx), rowR: addr(rowR),
                           rowQ: addr(rowQ), o0: addr(o[0]), o1: addr(o[1]), o2: addr(o[2]), rows: rows, cols: cols,
                           batch: batch, chunkRows: chunkRows)
        }
    }
}
