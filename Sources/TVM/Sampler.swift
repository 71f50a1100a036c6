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
