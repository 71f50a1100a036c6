#if canImport(Glibc)
import Glibc
#endif
import TensorCore

// The optimizer updates (OptimizerBackend) on Optimizer.cu's kernels.
extension CUDABackend: OptimizerBackend {
    public func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
                      eps: Double, weightDecay: Double, step: Int, gradScale: Double) {
        forgetBF16Copy(of: p)
        let n = p.count
        guard n > 0 else { return }
        // The CPU backend's arithmetic: constants in double, then in the element type.
        let bc1 = 1 - Glibc.pow(beta1, Double(step)), bc2 = 1 - Glibc.pow(beta2, Double(step))
        kernels(OptimizerKernels.self, p.dtype).adamw
            .launch(on: self, grid: (blocks(packs(n, p.dtype)), 1), p: addr(p), g: addr(g), m: addr(m), v: addr(v), n: n,
                    stepSize: lr / bc1, sqrtBc2: bc2.squareRoot(), decay: 1 - lr * weightDecay, b1: beta1, b2: beta2, eps: eps,
                    gs: gradScale)
    }

    public func emaUpdate(ema: Storage, p: Storage, decay: Double) {
        forgetBF16Copy(of: ema)
        let n = p.count
        guard n > 0 else { return }
        kernels(OptimizerKernels.self, p.dtype).ema.launch(on: self, grid: (blocks(packs(n, p.dtype)), 1), e: addr(ema), p: addr(p),
                                                           n: n, d: decay)
    }

    public func views(of buffer: Storage, offsets: [Int], counts: [Int]) -> [Storage] {
        let base = cuda(buffer)
        let made = zip(offsets, counts).map { CUDAStorage(viewOf: base, offset: $0, count: $1) }
        base.views += made.map(WeakStorage.init)
        return made
    }
}
