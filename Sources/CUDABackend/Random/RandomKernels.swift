import TensorCore

// Backend's random numbers on Random.cu's kernel.
extension CUDABackend {
    public func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64) {
        let n = y.count
        guard n > 0 else { return }
        kernels(RandomKernels.self, y.dtype).random.launch(on: self, grid: (blocks((n + 3) / 4), 1), y: addr(y), n: n, seed: seed,
                                                          counter: counter, normal: normal ? 1 : 0)
    }
}
