import TensorCore

// ChannelsLastImageBackend's group norm (with the SiLU after it) on GroupNorm.cu's kernels: partial statistics per
// chunk of pixels, then one pass that combines them per (image, group) and applies them; input and output may hold
// bf16 values alone.
extension CUDABackend {
    public func groupNorm(_ x: Storage, weight: Storage, bias: Storage, _ y: Storage, images: Int, pixels: Int, channels: Int,
                          groups: Int, eps: Double, silu: Bool, feedsProducts: Bool) -> Bool {
        // A block holds whole rows of channels (a thread per `vector` channels, at most 1024 threads).
        guard channels <= 1024, channels % groups == 0 else { return false }
        guard images > 0 && pixels > 0 && channels > 0 else { return true }
        let k = kernels(GroupNormKernels.self, x.dtype)
        // Each thread keeps `vector` consecutive channels of one group: the largest of 8, 4, 2, 1 dividing a group.
        let perGroup = channels / groups
        let vector = [8, 4, 2].first { perGroup % $0 == 0 } ?? 1
        let lanes = channels / vector, threads = 1024 / lanes * lanes, rowsPerBlock = threads / lanes
        // About four blocks per multiprocessor over the whole batch, each taking at least four rows per thread.
        let chunks = Swift.max(1, Swift.min((multiprocessorCount * 4 + images - 1) / images,
                                            (pixels + 4 * rowsPerBlock - 1) / (4 * rowsPerBlock)))
        let chunkPixels = (pixels + chunks - 1) / chunks
        let partial = allocate(images * chunks * groups * 3, x.dtype)
        // x and y each float32 or bf16 alone (a low-precision storage).
        let (xf, x16) = float32OrBF16(x), (yf, yOnly16) = float32OrBF16(y)
        k.groupNormStats.launch(on: self, grid: (chunks, images), block: (threads, 1), x: xf, x16: x16, partial: addr(partial),
                                pixels: pixels, channels: channels, groups: groups, chunkPixels: chunkPixels, vector: vector)
        beginBF16Call()
        let y16 = yOnly16 != 0 ? yOnly16 : feedsProducts ? bf16Twin(y) : 0
        k.groupNormApply.launch(on: self, grid: (chunks, images), block: (threads, 1), x: xf, x16: x16, partial: addr(partial),
                                weight: addr(weight), bias: addr(bias), y: yf, y16: y16, pixels: pixels, channels: channels,
                                groups: groups, chunkPixels: chunkPixels, chunks: chunks, eps: eps, silu: silu ? 1 : 0,
                                vector: vector)
        return true
    }
}
