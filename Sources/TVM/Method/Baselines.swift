import TensorCore
import NN
#if canImport(Glibc)
import Glibc
#endif

/// Conditional flow matching on the same network with the gap input at 0: F(x_t, t, 0) regresses
/// v = eps - x0, t logit-normal as TVM's flow-matching term; sampled with Euler steps. With classes (label
/// dropout already applied: all-zero rows are the null class) it learns the conditional and unconditional
/// velocities that classifier-free guidance combines at sampling time (`sampleEuler`).
public struct FlowMatchingObjective {
    public var mu = -0.4, sigma = 1.0
    public init() {}

    public func loss(network net: some FlowMapNetwork, params: ParameterSet, x0: Tensor,
                     cond: Conditioning = Conditioning(), rng: inout RandomGenerator) -> Tensor {
        let B = x0.shape[0], dev = x0.device
        let z = rng.normalFloats(B).map { 1 / (1 + expf(-Float(mu) - Float(sigma) * $0)) }
        let t = Tensor(z, shape: [B], on: dev)
        let noise = Tensor.randomNormal(x0.shape, rng: &rng, on: dev)
        let tr = rows(t, like: x0)
        let xt = (1 - tr) * x0 + tr * noise
        // Guidance is applied when sampling, so the network always sees w = 1.
        let F = net(params, x: xt, t: t, gap: Tensor.zeros([B], on: dev), cond: Conditioning(classes: cond.classes))
        return (F - (noise - x0)).square().mean()
    }
}
