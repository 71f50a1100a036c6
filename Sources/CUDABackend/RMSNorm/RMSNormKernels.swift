import TensorCore

// The RMS normalisation family (NormBackend) on RMSNorm.cu's kernels; the scaled norm's backward is RMSNormBackward.swift.
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

    /// Of packed-row kernels (rmsnorm_scaled_packs and _jvp_packs, RMSNormBackward.cu's _bwd_packs and _bwd_rows_packs), the one whose lanes and
    /// packs hold exactly `cols` values, with its grid for `rows` rows (32 / lanes of them a warp), where every address in
    /// `wide` is aligned to a 16-byte pack and those in `narrow` (bf16 values; 0: none) to its 8 bytes; nil otherwise (the
    /// scalar kernels take those).
    func packedRowKernel<K>(_ kernels: [K], lanes: (K) -> Int, packs: (K) -> Int, rows: Int, cols: Int, dtype: DType,
                                    _ wide: [DevicePointer], _ narrow: [DevicePointer]) -> (K, grid: (Int, Int))? {
        let perPack = 16 / dtype.byteSize
        guard wide.reduce(0, |) % 16 == 0 && narrow.reduce(0, |) % 8 == 0,
              let kernel = kernels.first(where: { lanes($0) * packs($0) * perPack == cols }) else { return nil }
        let rowsPerWarp = 32 / lanes(kernel)
        return (kernel, (blocks((rows + rowsPerWarp - 1) / rowsPerWarp * 32), 1))
    }
}
