import TensorCore

// Backend's softmax on Softmax.cu's kernels.
extension CUDABackend {
    public func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int) {
        guard rows > 0 && cols > 0 else { return }
        let k = kernels(SoftmaxKernels.self, x.dtype)
        if let warp = rowKernel(k.softmaxWarp, cols: cols, width: \.width) {
            warp.launch(on: self, grid: (blocks(rows * 32), 1), x: addr(x), y: addr(y), rows: rows, cols: cols)
        } else {
            let t = cols > 8192 ? 1024 : 256
            k.softmaxBlock.launch(on: self, grid: (Swift.min(rows, maxBlocks * 2), 1), block: (t, 1), x: addr(x), y: addr(y),
                                  rows: rows, cols: cols)
        }
    }

    /// The narrowest of the register-row kernels `kernels` (a warp per row, `width` values per lane) that holds a row
    /// of `cols` values; nil when rows are longer than the widest holds.
    func rowKernel<K>(_ kernels: [K], cols: Int, width: (K) -> Int) -> K? {
        var best: K?
        for k in kernels where 32 * width(k) >= cols && best.map({ width(k) < width($0) }) ?? true { best = k }
        return best
    }
}
