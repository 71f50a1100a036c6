import TensorCore
import NN
#if canImport(Glibc)
import Glibc
#endif

/// MeanFlow (Geng et al., 2025) on the same network: F(z, t, t - r) is the average velocity from t to r,
/// trained toward v - (t - r) dF/dt with dF/dt the JVP along (v, 1, 0) in (z, t, r), the target held fixed,
/// and the adaptive weight 1 / (||err||^2 + c)^p.
public struct MeanFlowObjective {
    /// Times t > r from two logit-normal draws (the paper's ImageNet choice), or two uniform draws.
    public var uniformTimes = false
    public var mu = -0.4, sigma = 1.0
    /// Fraction of rows with r != t (the paper's best: 25%).
    public var fractionDistinct = 0.25
    public var adaptiveP = 1.0, adaptiveC = 1e-3

    public init() {}

    public func loss(network net: some FlowMapNetwork, params: ParameterSet, x0: Tensor,
                     rng: inout RandomGenerator) -> Tensor {
        let B = x0.shape[0], dev = x0.device
        let logitNormal = { (z: Float) in 1 / (1 + expf(-Float(self.mu) - Float(self.sigma) * z)) }
        let a = uniformTimes ? rng.uniformFloats(B) : rng.normalFloats(B).map(logitNormal)
        let b = uniformTimes ? rng.uniformFloats(B) : rng.normalFloats(B).map(logitNormal)
        let pick = rng.uniformFloats(B)
        var tv = [Float](), rv = [Float]()
        for i in 0..<B {
            let (u1, u2) = (a[i], b[i])
            let t = max(u1, u2)
            tv.append(t)
            rv.append(Double(pick[i]) < fractionDistinct ? min(u1, u2) : t)
        }
        let t = Tensor(tv, shape: [B], on: dev), r = Tensor(rv, shape: [B], on: dev)
        let noise = Tensor.randomNormal(x0.shape, rng: &rng, on: dev)
        let tr = rows(t, like: x0)
        let z = (1 - tr) * x0 + tr * noise
        let v = noise - x0
        let (outs, tans) = jvp({ p in [net(params, x: p[0], t: p[1], gap: p[1] - p[2], cond: Conditioning())] },
                               primals: [z, t, r], tangents: [v, Tensor.ones([B], on: dev), Tensor.zeros([B], on: dev)])
        let u = outs[0]
        let target = (v - rows(t - r, like: x0) * tans[0]).stopGradient()
        let sq = (u - target).square().sum(axes: Array(1..<x0.rank))
        let weight = (sq.stopGradient() + adaptiveC).log().affine(-adaptiveP, 0).exp()
        return (sq * weight).mean()
    }
}

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
