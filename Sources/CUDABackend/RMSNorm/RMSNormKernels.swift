import TensorCore

// The RMS normalisation family (NormBackend) on RMSNorm.cu's kernels.
extension CUDABackend: NormBackend {
    public func rmsNorm(_ x: Storage, _ y: Storage, rows: Int, cols: Int, eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        let k = kernels(RMSNormKernels.self, x.dtype)
        if let (packed, grid) = packedRowKernel(k.rmsnormScaledPacks, lanes: \.lanes, packs: \.packs, rows: rows, cols: cols,
                                                dtype: x.dtype, [addr(x), addr(y)], []) {
            packed.launch(on: self, grid: grid, x: addr(x), x16: 0, s: 0, t: 0, y: addr(y), y16: 0, nrows: rows, rows: rows,
                          cols: cols, eps: eps)
        } else if let warp = rowKernel(k.rmsnormWarp, cols: cols, width: \.width) {
            warp.launch(on: self, grid: (blocks(rows * 32), 1), x: addr(x), y: addr(y), rows: rows, cols: cols, eps: eps)
        } else {
            let t = cols > 8192 ? 1024 : 256
            k.rmsnormBlock.launch(on: self, grid: (Swift.min(rows, maxBlocks * 2), 1), block: (t, 1), x: addr(x), y: addr(y),
                                  rows: rows, cols: cols, eps: eps)
        }
    }

    public func rmsNormScaled(_ x: Storage, scale s: Storage, shift t: Storage?, _ y: Storage, batch: Int, rows: Int, cols: Int,
                              eps: Double, productOperand: Bool) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        let k = kernels(RMSNormKernels.self, x.dtype)
        beginBF16Call()
        let (xf, x16) = float32OrBF16(x), (yf, y16) = productOperand ? outputAndCopy(y) : (addr(y), 0)
        if let (packed, grid) = packedRowKernel(k.rmsnormScaledPacks, lanes: \.lanes, packs: \.packs, rows: nrows, cols: cols,
                                                dtype: x.dtype, [xf, addr(s), addr(t), yf], [x16, y16]) {
            packed.launch(on: self, grid: grid, x: xf, x16: x16, s: addr(s), t: addr(t), y: yf, y16: y16, nrows: nrows,
                          rows: rows, cols: cols, eps: eps)
        } else if let warp = rowKernel(k.rmsnormScaledWarp, cols: cols, width: \.width) {
            warp.launch(on: self, grid: (blocks(nrows * 32), 1), x: xf, x16: x16, s: addr(s), t: addr(t), y: yf, y16: y16,
                        nrows: nrows, rows: rows, cols: cols, eps: eps)
        } else {
            let threads = cols > 8192 ? 1024 : 256
            k.rmsnormScaledBlock.launch(on: self, grid: (Swift.min(nrows, maxBlocks * 2), 1), block: (threads, 1), x: xf,
                                        x16: x16, s: addr(s), t: addr(t), y: yf, y16: y16, nrows: nrows, rows: rows, cols: cols,
                                        eps: eps)
        }
    }

    public func rmsNormScaledJVP(_ x: Storage, _ dx: Storage, scale s: Storage, dScale ds: Storage?, dShift dt: Storage?,
                                 _ out: Storage, batch: Int, rows: Int, cols: Int, eps: Double, productOperand: Bool) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        beginBF16Call()
        let (outf, y16) = productOperand ? outputAndCopy(out) : (addr(out), 0)
        let (xf, x16) = float32OrBF16(x), (dxf, dx16) = float32OrBF16(dx)
        let k = kernels(RMSNormKernels.self, x.dtype), grid = (blocks(nrows * 32), 1)
        if let (packed, packedGrid) = packedRowKernel(k.rmsnormScaledJvpPacks, lanes: \.lanes, packs: \.packs, rows: nrows,
                                                      cols: cols, dtype: x.dtype, [xf, dxf, addr(s), addr(ds), addr(dt), outf],
                                                      [x16, dx16, y16]) {
            packed.launch(on: self, grid: packedGrid, x: xf, x16: x16, dx: dxf, dx16: dx16, s: addr(s), ds: addr(ds),
                          dt: addr(dt), out: outf, y16: y16, nrows: nrows, rows: rows, cols: cols, eps: eps)
        } else if let rowsKernel = rowKernel(k.rmsnormScaledJvpRows, cols: cols, width: \.width) {
            rowsKernel.launch(on: self, grid: grid, x: xf, x16: x16, dx: dxf, dx16: dx16, s: addr(s), ds: addr(ds), dt: addr(dt),
                              out: outf, y16: y16, nrows: nrows, rows: rows, cols: cols, eps: eps)
        } else {
            k.rmsnormScaledJvp.launch(on: self, grid: grid, x: xf, x16: x16, dx: dxf, dx16: dx16, s: addr(s), ds: addr(ds),
                                      dt: addr(dt), out: outf, y16: y16, nrows: nrows, rows: rows, cols: cols, eps: eps)
        }
    }

    public func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                                      gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                                      sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int,
                                      eps: Double) {
        precondition((dx == nil) == (sA == nil) && (dx == nil) == (gdx == nil), "rmsNormScaledBackward: dx, sA and gdx go together")
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        let k = kernels(RMSNormKernels.self, x.dtype), outs = [sums.n, sums.dn, sums.one]
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
        let nrows = batch * rows, k = kernels(RMSNormKernels.self, x.dtype)
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
            preconditionFailure("RMSNorm.cu has no norm_col_sums kernel with vectorized \(packs)")
        }
        columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: packs ? (cols / pack + 31) / 32 : (cols + 31) / 32) {
            grid, o, chunkRows in
            colSums.launch(on: self, grid: grid, block: (32, 8), g: addr(g), x: addr(x), dx: addr(dx), rowR: addr(rowR),
                           rowQ: addr(rowQ), o0: addr(o[0]), o1: addr(o[1]), o2: addr(o[2]), rows: rows, cols: cols,
                           batch: batch, chunkRows: chunkRows)
        }
    }

    public func rmsNormLinear(_ x: Storage, _ y: Storage, _ d: Storage, plus c: Storage?, _ out: Storage, rows: Int, cols: Int,
                              eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        kernels(RMSNormKernels.self, x.dtype).rmsnormLinear
            .launch(on: self, grid: (blocks(rows * 32), 1), x: addr(x), y: addr(y), d: addr(d), c: addr(c), out: addr(out),
                    rows: rows, cols: cols, eps: eps)
    }

    public func rmsNormLinearBackward(_ x: Storage, _ y: Storage, _ d: Storage, _ g: Storage, gx: Storage, gy: Storage,
                                      gd: Storage, plus: (x: Storage?, y: Storage?, d: Storage?), rows: Int, cols: Int,
                                      eps: Double) {
        guard rows > 0 && cols > 0 else { return }
        kernels(RMSNormKernels.self, x.dtype).rmsnormLinearBwd
            .launch(on: self, grid: (blocks(rows * 32), 1), x: addr(x), y: addr(y), d: addr(d), g: addr(g), gx: addr(gx),
                    gy: addr(gy), gd: addr(gd), cx: addr(plus.x), cy: addr(plus.y), cd: addr(plus.d), rows: rows, cols: cols,
                    eps: eps)
    }

    /// Of packed-row kernels (RMSNorm.cu's rmsnorm_scaled_packs, _jvp_packs, _bwd_packs and _bwd_rows_packs), the one whose lanes and
    /// packs hold exactly `cols` values, with its grid for `rows` rows (32 / lanes of them a warp), where every address in
    /// `wide` is aligned to a 16-byte pack and those in `narrow` (bf16 values; 0: none) to its 8 bytes; nil otherwise (the
    /// scalar kernels take those).
    private func packedRowKernel<K>(_ kernels: [K], lanes: (K) -> Int, packs: (K) -> Int, rows: Int, cols: Int, dtype: DType,
                                    _ wide: [DevicePointer], _ narrow: [DevicePointer]) -> (K, grid: (Int, Int))? {
        let perPack = 16 / dtype.byteSize
        guard wide.reduce(0, |) % 16 == 0 && narrow.reduce(0, |) % 8 == 0,
              let kernel = kernels.first(where: { lanes($0) * packs($0) * perPack == cols }) else { return nil }
        let rowsPerWarp = 32 / lanes(kernel)
        return (kernel, (blocks((rows + rowsPerWarp - 1) / rowsPerWarp * 32), 1))
    }
}
