#if canImport(Glibc)
import Glibc
#endif

// Optimizer updates: in place on parameters and optimizer state, outside any recorded graph (the one place where
// tensors change after they are made).

/// Fused optimizer updates, one pass over a parameter and its state. Without them the updates are composed from
/// elementwise tensor operations and copied back into place.
public protocol OptimizerBackend: Backend {
    /// Fused AdamW step over one parameter tensor (in place on p, m, v).
    func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
               eps: Double, weightDecay: Double, step: Int, gradScale: Double)
    /// p_ema = p + decay * (p_ema - p), in place on ema.
    func emaUpdate(ema: Storage, p: Storage, decay: Double)
}

extension Tensor {
    /// One AdamW step in place on this parameter and its first and second moments `m` and `v`, with the arithmetic
    /// of torch.optim.AdamW (decoupled weight decay, the bias corrections of step `step` folded as it does), for
    /// the gradient `gradient` times `gradScale` (what gradient clipping scales it by).
    public func adamwUpdate(gradient g: Tensor, m: Tensor, v: Tensor, lr: Double, beta1: Double, beta2: Double,
                            eps: Double, weightDecay: Double, step: Int, gradScale: Double = 1) {
        for state in [g, m, v] {
            checkSameDType(state, "adamwUpdate")
            precondition(state.shape == shape, "adamwUpdate: state of shape \(state.shape) for a parameter of shape \(shape)")
        }
        guard let fused = backend as? any OptimizerBackend else {
            withoutGrad {
                let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
                let scaled = g * gradScale
                let m1 = m * beta1 + scaled * (1 - beta1)
                let v1 = v * beta2 + scaled.square() * (1 - beta2)
                let p1 = self * (1 - lr * weightDecay) - m1 * (lr / bc1) / (v1.sqrt() / bc2.squareRoot() + eps)
                m.overwrite(with: m1)
                v.overwrite(with: v1)
                overwrite(with: p1)
            }
            return
        }
        fused.adamw(p: storage, g: g.storage, m: m.storage, v: v.storage, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
                    weightDecay: weightDecay, step: step, gradScale: gradScale)
    }

    /// self = p + decay (self - p) in place: one step of an exponential moving average of `p` (EMA weights).
    public func emaUpdate(toward p: Tensor, decay: Double) {
        checkSameDType(p, "emaUpdate")
        precondition(p.shape == shape, "emaUpdate: \(p.shape) toward \(shape)")
        guard let fused = backend as? any OptimizerBackend else {
            withoutGrad { overwrite(with: p + (self - p) * decay) }
            return
        }
        fused.emaUpdate(ema: storage, p: p.storage, decay: decay)
    }

    /// Copies `values` (of the same shape) into this tensor's storage.
    private func overwrite(with values: Tensor) {
        let dense = StridedView(strides: [1])
        backend.copy(values.storage, dense, storage, dense, shape: [count])
    }
}
