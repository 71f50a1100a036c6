import TensorCore

// Scaled sums and their factors' cotangents (ScaledSumBackend) on ScaledSum.cu's kernels.
extension CUDABackend: ScaledSumBackend {
    public func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                          batch: Int, rows: Int, cols: Int) {
        let nrows = batch * rows
        guard nrows > 0 && cols > 0 else { return }
        // a, b, c and y each as float32 or, where kept so (a linear layer's output, a cotangent products alone read),
        // as bf16 values alone.
        let (a32, a16) = float32OrBF16(a), (s32, t32) = (addr(s), addr(t))
        let (b32, b16) = b.map(float32OrBF16) ?? (0, 0), (c32, c16) = c.map(float32OrBF16) ?? (0, 0)
        let (y32, y16) = float32OrBF16(y)
        // 16-byte packs where a row is whole packs and every address is aligned to its pack (8 bytes for bf16 values).
        let pack = 16 / a.dtype.byteSize
        let wide = [a32, s32, b32, t32, c32, y32].reduce(0, |), narrow = [a16, b16, c16, y16].reduce(0, |)
        let packs = cols % pack == 0 && wide % 16 == 0 && narrow % UInt64(2 * pack) == 0
        let k = kernels(ScaledSumKernels.self, a.dtype)
        guard let kernel = k.scaledSum.first(where: { $0.vectorized == packs }) else {
            preconditionFailure("ScaledSum.cu has no scaled_sum kernel with vectorized \(packs)")
        }
        let rowBlocks = (nrows + 7) / 8
        kernel.launch(on: self, grid: (Swift.min(rowBlocks, maxBlocks * 8), 1), block: (32, 8), a: a32, a16: a16, s: s32, b: b32,
                      b16: b16, t: t32, c: c32, c16: c16, cFull: cFull ? 1 : 0, y: y32, y16: y16, nrows: nrows, rows: rows,
                      cols: cols)
    }

    public func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int) {
        precondition(xs.count == outs.count && (1...3).contains(outs.count), "rowSumsOfProducts takes 1 to 3 outputs")
        let k = kernels(ScaledSumKernels.self, g.dtype)
        // Each factor as float32 or as its bf16 values alone.
        let x: [(f32: DevicePointer, bf16: DevicePointer)] = (0..<3).map { i in i < xs.count ? xs[i].map(float32OrBF16) ?? (0, 0) : (0, 0) }
        // 16-byte packs of g where a row is whole packs and every address is aligned to its pack (8 bytes for bf16).
        let pack = 16 / g.dtype.byteSize
        let packs = cols % pack == 0 && ([addr(g)] + x.map(\.f32)).reduce(0, |) % 16 == 0
            && x.map(\.bf16).reduce(0, |) % UInt64(2 * pack) == 0
        guard let kernel = k.rowSums.first(where: { $0.vectorized == packs }) else {
            preconditionFailure("ScaledSum.cu has no row_sums kernel with vectorized \(packs)")
        }
        let tiles = packs ? (cols / pack + 31) / 32 : (cols + 31) / 32
        columnSums(outs, batch: batch, rows: rows, cols: cols, tiles: tiles) { grid, o, chunkRows in
            func out(_ i: Int) -> DevicePointer { i < o.count ? addr(o[i]) : 0 }
            kernel.launch(on: self, grid: grid, block: (32, 8), g: addr(g), x0: x[0].f32, x1: x[1].f32, x2: x[2].f32,
                          h0: x[0].bf16, h1: x[1].bf16, h2: x[2].bf16, o0: out(0), o1: out(1), o2: out(2), nout: outs.count,
                          rows: rows, cols: cols, batch: batch, chunkRows: chunkRows)
        }
    }
}
