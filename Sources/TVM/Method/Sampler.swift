import TensorCore
import NN

/// Few-step sampling with a flow map (TVM.md): from t = 1 (noise) to 0 along linspace(1, 0, n + 1),
/// x <- x + (b - a) kappa F(x, a, a - b, c, beta), the state accumulated in float64 as the official sampler.
/// With `instantaneous`, the gap input is 0: Euler steps of a flow-matching velocity field.
public func sampleFlowMap(network net: some FlowMapNetwork, params: ParameterSet, noise: Tensor, steps: Int,
                          cond: Conditioning = Conditioning(), kappa: Double = 1, instantaneous: Bool = false) -> Tensor {
    precondition(steps >= 1, "at least one sampling step")
    return withoutGrad {
        let B = noise.shape[0], dev = noise.device
        var x = noise.cast(.float64)
        for i in 0..<steps {
            let a = 1 - Double(i) / Double(steps), b = 1 - Double(i + 1) / Double(steps)
            let F = net(params, x: x.cast(.float32), t: Tensor.full(a, shape: [B], on: dev),
                        gap: Tensor.full(instantaneous ? 0 : a - b, shape: [B], on: dev), cond: cond)
            x = x + F.cast(.float64) * ((b - a) * kappa)
        }
        return x.cast(.float32)
    }
}

/// Euler sampling of a flow-matching velocity F(x, t, 0) from t = 1 to 0 in `steps` steps, with classifier-free
/// guidance when `cond` has classes and `guidance` != 1: v = v_null + w (v_class - v_null), both halves in one
/// batched call (2 network evaluations per step). Accumulates in float64 like `sampleFlowMap`.
public func sampleEuler(network net: some FlowMapNetwork, params: ParameterSet, noise: Tensor, steps: Int,
                        cond: Conditioning = Conditioning(), guidance w: Double = 1) -> Tensor {
    precondition(steps >= 1, "at least one sampling step")
    guard let classes = cond.classes, w != 1 else {
        return sampleFlowMap(network: net, params: params, noise: noise, steps: steps,
                             cond: Conditioning(classes: cond.classes), instantaneous: true)
    }
    return withoutGrad {
        let B = noise.shape[0], dev = noise.device
        let both = Conditioning(classes: concat([classes, classes.zerosLike()], axis: 0))
        var x = noise.cast(.float64)
        for i in 0..<steps {
            let a = 1 - Double(i) / Double(steps), b = 1 - Double(i + 1) / Double(steps)
            let x32 = x.cast(.float32)
            let F = net(params, x: concat([x32, x32], axis: 0), t: Tensor.full(a, shape: [2 * B], on: dev),
                        gap: Tensor.zeros([2 * B], on: dev), cond: both).cast(.float64)
            let vc = F.slice(axis: 0, start: 0, length: B), vu = F.slice(axis: 0, start: B, length: B)
            x = x + (vu + (vc - vu) * w) * (b - a)
        }
        return x.cast(.float32)
    }
}

/// n-step samples of a model trained by `method`, with guidance scale `w`; `cond` holds the classes and, for the
/// methods with a guidance input, beta = 1 / w (as `Conditioning.sampling` makes it):
/// - TVM: the flow map, times kappa = w under the scaled parameterisation;
/// - MeanFlow: the flow map with no guidance input (its guidance was trained in: `w` has no effect);
/// - iMF: the flow map with beta = 1 / w, the guidance condition it was trained with, kappa = 1;
/// - flow matching: Euler steps with classifier-free guidance (2 evaluations a step when w != 1).
public func sampleModel(trainedBy method: Method, network net: some FlowMapNetwork, params: ParameterSet, noise: Tensor,
                        steps: Int, cond: Conditioning = Conditioning(), guidance w: Double = 1,
                        scaledParameterization: Bool = true) -> Tensor {
    switch method {
    case .tvm:
        return sampleFlowMap(network: net, params: params, noise: noise, steps: steps, cond: cond,
                             kappa: scaledParameterization ? w : 1)
    case .meanFlow:
        return sampleFlowMap(network: net, params: params, noise: noise, steps: steps, cond: Conditioning(classes: cond.classes))
    case .improvedMeanFlow:
        return sampleFlowMap(network: net, params: params, noise: noise, steps: steps, cond: cond)
    case .flowMatching:
        return sampleEuler(network: net, params: params, noise: noise, steps: steps, cond: cond, guidance: w)
    }
}
