import TensorCore

/// AdamW as torch.optim.AdamW computes it: one fused pass over the packed buffer where the parameters, the
/// moments and the gradients share a packed layout (`ParameterSet.pack`), else one update per parameter (a fused
/// kernel where the backend has one); the arithmetic of each element is the same either way. beta2 = 0.95 by
/// default (TVM).
public final class AdamW {
    public var lr: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// Clip the global gradient norm to this value (nil: no clipping).
    public var maxGradNorm: Double?
    /// Parameters that are not trained (the fixed position table). Their gradient is zero, so Adam leaves them
    /// alone, but the decoupled weight decay would shrink them: torch's AdamW never sees them (no gradient), so
    /// they keep their values here too.
    public var frozen: [String] = []
    public private(set) var step = 0
    public private(set) var m: ParameterSet
    public private(set) var v: ParameterSet

    /// The moments take the packing of `params`.
    public init(for params: ParameterSet, lr: Double = 1e-4, beta1: Double = 0.9, beta2: Double = 0.95,
                eps: Double = 1e-8, weightDecay: Double = 0, maxGradNorm: Double? = nil) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.maxGradNorm = maxGradNorm
        m = params.zerosLike()
        v = params.zerosLike()
    }

    /// Restores state saved with a checkpoint (packed here, so that updates stay one pass).
    public func restore(step: Int, m: ParameterSet, v: ParameterSet) {
        self.step = step
        self.m = m
        self.v = v
        m.pack()
        v.pack()
    }

    /// Updates `params` in place from `grads` (same order). Returns the gradient norm before clipping
    /// (pass `norm` when the caller has computed it already).
    @discardableResult
    public func update(_ params: ParameterSet, grads: [Tensor], norm known: Double? = nil) -> Double {
        let gradients = Gradients(grads, of: params)
        let norm = known ?? gradients.norm()
        update(params, gradients: gradients, norm: norm)
        return norm
    }

    /// Updates `params` in place from `gradients` (gathered for `params`), whose global norm before clipping is
    /// `norm`.
    public func update(_ params: ParameterSet, gradients: Gradients, norm: Double) {
        precondition(gradients.tensors.count == params.count, "one gradient per parameter")
        step += 1
        var scale = 1.0
        if let maxGradNorm, norm > maxGradNorm { scale = maxGradNorm / (norm + 1e-6) }
        func adamw(_ p: Tensor, _ g: Tensor, _ m: Tensor, _ v: Tensor) {
            p.adamwUpdate(gradient: g, m: m, v: v, lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay,
                          step: step, gradScale: scale)
        }
        let kept = weightDecay == 0 ? [] : frozen.map { (params[$0], params[$0].detached() * 1.0) }
        defer { for (parameter, value) in kept { parameter.overwrite(with: value) } }
        if let p = params.packed, let g = gradients.packed, let m = m.packed, let v = v.packed,
           g.layout == p.layout, m.layout == p.layout, v.layout == p.layout,
           self.m.names == params.names, self.v.names == params.names {
            adamw(p.buffer, g.buffer, m.buffer, v.buffer)
            return
        }
        for (i, name) in params.names.enumerated() { adamw(params[name], gradients.tensors[i], m[name], v[name]) }
    }
}

/// One step's gradients, one per parameter of a set, and gathered into one buffer in the set's packed layout
/// where it has one: the global norm is then one reduction and AdamW one pass.
public struct Gradients {
    public let tensors: [Tensor]
    /// The gradients in the packed layout of the parameters (nil: the parameters are not packed).
    public let packed: (buffer: Tensor, layout: PackedLayout)?

    public init(_ tensors: [Tensor], of params: ParameterSet?) {
        self.tensors = tensors
        packed = params?.packed.map { ($0.layout.gather(tensors), $0.layout) }
    }

    /// The sum of the squares of every entry, as a scalar tensor left on the device (the norm's square: a
    /// step reads it with its other figures, in one transfer).
    public func squaredNorm() -> Tensor {
        withoutGrad {
            if let packed { return packed.buffer.square().sum() }
            return concat(tensors.map { $0.square().sum().reshaped([1]) }, axis: 0).sum()
        }
    }

    /// sqrt of the sum of squares of all entries, read from the device.
    public func norm() -> Double { squaredNorm().item.squareRoot() }
}

/// sqrt of the sum of squares of all entries.
public func globalNorm(_ tensors: [Tensor]) -> Double {
    Gradients(tensors, of: nil).norm()
}

/// p_ema = p + decay (p_ema - p) for every parameter (in place on `ema`): one pass over the packed buffer where
/// both sets share a packed layout.
public func emaUpdate(_ ema: ParameterSet, toward params: ParameterSet, decay: Double) {
    if let e = ema.packed, let p = params.packed, e.layout == p.layout, ema.names == params.names {
        e.buffer.emaUpdate(toward: p.buffer, decay: decay)
        return
    }
    for name in params.names { ema[name].emaUpdate(toward: params[name], decay: decay) }
}
