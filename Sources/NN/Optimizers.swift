import TensorCore

/// AdamW as torch.optim.AdamW computes it, one update per parameter (a fused kernel where the backend has one);
/// beta2 = 0.95 by default (TVM).
public final class AdamW {
    public var lr: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// Clip the global gradient norm to this value (nil: no clipping).
    public var maxGradNorm: Double?
    public private(set) var step = 0
    public private(set) var m: ParameterSet
    public private(set) var v: ParameterSet

    public init(for params: ParameterSet, lr: Double = 1e-4, beta1: Double = 0.9, beta2: Double = 0.95,
                eps: Double = 1e-8, weightDecay: Double = 0, maxGradNorm: Double? = nil) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.maxGradNorm = maxGradNorm
        m = ParameterSet(params.pairs.map { ($0, $1.zerosLike()) })
        v = ParameterSet(params.pairs.map { ($0, $1.zerosLike()) })
    }

    /// Restores state saved with a checkpoint.
    public func restore(step: Int, m: ParameterSet, v: ParameterSet) {
        self.step = step
        self.m = m
        self.v = v
    }

    /// Updates `params` in place from `grads` (same order). Returns the gradient norm before clipping
    /// (pass `norm` when the caller has computed it already).
    @discardableResult
    public func update(_ params: ParameterSet, grads: [Tensor], norm known: Double? = nil) -> Double {
        precondition(grads.count == params.count, "one gradient per parameter")
        step += 1
        let norm = known ?? globalNorm(grads)
        var scale = 1.0
        if let maxGradNorm, norm > maxGradNorm { scale = maxGradNorm / (norm + 1e-6) }
        for (i, name) in params.names.enumerated() {
            params[name].adamwUpdate(gradient: grads[i], m: m[name], v: v[name], lr: lr, beta1: beta1, beta2: beta2,
                                     eps: eps, weightDecay: weightDecay, step: step, gradScale: scale)
        }
        return norm
    }
}

/// sqrt of the sum of squares of all entries.
public func globalNorm(_ tensors: [Tensor]) -> Double {
    withoutGrad {
        let squares = tensors.map { $0.square().sum().reshaped([1]) }
        return concat(squares, axis: 0).sum().item.squareRoot()
    }
}

/// p_ema = p + decay (p_ema - p) for every parameter (in place on `ema`).
public func emaUpdate(_ ema: ParameterSet, toward params: ParameterSet, decay: Double) {
    for name in params.names { ema[name].emaUpdate(toward: params[name], decay: decay) }
}
