import TensorCore
import NN
#if canImport(Glibc)
import Glibc
#endif

/// MeanFlow's (t, r) sampler (Geng et al. 2025, and its official code): two logit-normal draws per row, t the
/// larger and r the smaller, then r = t on the first floor(n * fractionEqual) rows (those regress the
/// instantaneous velocity, as flow matching does). MeanFlow's best: 75% equal; iMF's: 50%.
public struct MeanFlowTimeSampler: Equatable {
    public var mu = -0.4, sigma = 1.0
    public var fractionEqual: Double

    public init(fractionEqual: Double) { self.fractionEqual = fractionEqual }

    public func sample(_ n: Int, rng: inout RandomGenerator) -> (t: [Double], r: [Double]) {
        let a = rng.normalFloats(n), b = rng.normalFloats(n)
        let equal = Int(Double(n) * fractionEqual)
        var t = [Double](), r = [Double]()
        for i in 0..<n {
            let (p, q) = (sigmoid(mu + sigma * Double(a[i])), sigmoid(mu + sigma * Double(b[i])))
            t.append(max(p, q))
            r.append(i < equal ? max(p, q) : min(p, q))
        }
        return (t, r)
    }
}

/// The adaptive loss weight of MeanFlow and iMF: a row's squared error e (summed over its elements) is
/// trained as e / sg((e + c)^p), so p = 1 makes every row's gradient about unit size (a robust, log-like loss).
public struct AdaptiveLossWeight: Equatable {
    /// Both official codes: p = 1, c = 0.01 (the MeanFlow paper writes c = 1e-3).
    public var p = 1.0, c = 0.01
    public init(p: Double = 1.0, c: Double = 0.01) { (self.p, self.c) = (p, c) }

    /// The weighted errors, [B]; the weight carries no gradient.
    public func callAsFunction(_ error: Tensor) -> Tensor {
        error * ((error.stopGradient() + c).log() * (-p)).exp()
    }
}

/// One batch as MeanFlow and iMF see it: data, noise, the two times per row, one-hot classes (all-zero rows are
/// the null class: label dropout already applied) and, for iMF, the guidance scale omega per row and the guidance
/// interval [start, end] per row (with a network that takes it).
public struct MeanFlowBatch {
    public var x0, noise, t, r: Tensor
    public var classes: Tensor?
    public var omega: Tensor?
    public var interval: (start: Tensor, end: Tensor)?

    public init(x0: Tensor, noise: Tensor, t: Tensor, r: Tensor, classes: Tensor? = nil, omega: Tensor? = nil,
                interval: (start: Tensor, end: Tensor)? = nil) {
        (self.x0, self.noise, self.t, self.r, self.classes, self.omega, self.interval) = (x0, noise, t, r, classes, omega, interval)
    }

    /// z_t = (1 - t) x0 + t eps and v = eps - x0.
    var interpolant: (z: Tensor, v: Tensor) {
        let tr = rows(t, like: x0)
        return ((1 - tr) * x0 + tr * noise, noise - x0)
    }

    /// 1 on rows with a class, 0 on null-class rows, [B] (nil without classes).
    var hasClass: Tensor? { classes.map { $0.sum(axes: [1]) } }

    func ones() -> Tensor { .ones([x0.shape[0]], dtype: x0.dtype, on: x0.device) }
    func zeros() -> Tensor { .zeros([x0.shape[0]], dtype: x0.dtype, on: x0.device) }
}

/// What one evaluation of MeanFlow's or iMF's loss produces, per row where the name says so.
public struct MeanFlowTerms {
    /// The adaptively weighted loss per row, [B]; the training loss is its batch mean.
    public var loss: Tensor
    /// The squared error per row before weighting, [B].
    public var error: Tensor
    /// The network's average velocity u(z_t, t, t - r).
    public var u: Tensor
    /// What u (MeanFlow) or V = u + (t - r) sg(du/dt) (iMF) regresses, without gradient.
    public var target: Tensor
    public var mean: Tensor { loss.mean() }
}

/// MeanFlow (Geng, Deng, Bai, Kolter, He 2025) on the flow-map network: u(z, t, t - r) = F(z, t, t - r) is the
/// average velocity from t down to r, trained toward the MeanFlow identity's target
/// u_tgt = v_g - (t - r) du/dt, du/dt the JVP of (z, t, r) -> u along (v_g, 1, 0), the target held fixed.
/// Classifier-free guidance is trained in (no guidance input; 1 NFE samples the guided model):
/// v_g = omega v + kappa u(z_t, t, 0 | c) + (1 - omega - kappa) u(z_t, t, 0 | null) on rows with a class and t in
/// `guidanceInterval`, v_g = v elsewhere, whose fixed point is CFG with scale omega / (1 - kappa).
public struct MeanFlowObjective: Equatable {
    public var times = MeanFlowTimeSampler(fractionEqual: 0.75)
    /// The official code's defaults: omega 1, kappa 0.5 (effective scale 2) over the whole interval.
    public var omega = 1.0, kappa = 0.5
    public var guidanceInterval: ClosedRange<Double> = 0...1
    public var adaptiveWeight = AdaptiveLossWeight()

    public init() {}

    /// Guidance of effective scale w = omega / (1 - kappa), 0 <= kappa < 1.
    public mutating func setGuidance(scale w: Double, kappa: Double) {
        precondition(kappa >= 0 && kappa < 1, "kappa must be in [0, 1)")
        (omega, self.kappa) = (w * (1 - kappa), kappa)
    }

    /// The effective guidance scale omega / (1 - kappa).
    public var guidanceScale: Double { omega / (1 - kappa) }

    /// Draws the times and noise of a batch; classes come from `cond` (label dropout already applied).
    public func batch(x0: Tensor, cond: Conditioning, rng: inout RandomGenerator) -> MeanFlowBatch {
        drawBatch(x0: x0, cond: cond, times: times, rng: &rng)
    }

    public func terms(network net: some FlowMapNetwork, params: ParameterSet, _ b: MeanFlowBatch) -> MeanFlowTerms {
        let (z, v) = b.interpolant
        let vg = b.classes != nil && (omega != 1 || kappa != 0) ? guidedVelocity(net, params, b, z: z, v: v) : v
        let cond = Conditioning(classes: b.classes)
        let (outs, tangents) = jvp({ p in [net(params, x: p[0], t: p[1], gap: p[1] - p[2], cond: cond)] },
                                   primals: [z, b.t, b.r], tangents: [vg, b.ones(), b.zeros()])
        let u = outs[0]
        let target = (vg - rows(b.t - b.r, like: b.x0) * tangents[0]).stopGradient()
        let error = (u - target).square().sum(axes: Array(1..<b.x0.rank))
        return MeanFlowTerms(loss: adaptiveWeight(error), error: error, u: u, target: target)
    }

    /// v_g per row, without gradient: guided on rows with a class and t inside the interval, v elsewhere.
    func guidedVelocity(_ net: some FlowMapNetwork, _ params: ParameterSet, _ b: MeanFlowBatch, z: Tensor, v: Tensor) -> Tensor {
        let B = b.x0.shape[0], classes = b.classes!
        return withoutGrad { () -> Tensor in
            let lo = Tensor.full(guidanceInterval.lowerBound, shape: [B], dtype: b.t.dtype, on: b.t.device)
            let hi = Tensor.full(guidanceInterval.upperBound, shape: [B], dtype: b.t.dtype, on: b.t.device)
            let mask = rows(b.hasClass! * (1 - lo.greater(b.t)) * (1 - b.t.greater(hi)), like: b.x0)
            let w = 1 + mask * (omega - 1), k = mask * kappa
            // Instantaneous velocities u(z_t, t, t): the null class always, the class only when kappa > 0.
            if kappa == 0 {
                let uNull = net(params, x: z, t: b.t, gap: b.zeros(), cond: Conditioning(classes: classes.zerosLike()))
                return w * v + (1 - w) * uNull
            }
            let both = net(params, x: concat([z, z], axis: 0), t: concat([b.t, b.t], axis: 0),
                           gap: concat([b.zeros(), b.zeros()], axis: 0),
                           cond: Conditioning(classes: concat([classes, classes.zerosLike()], axis: 0)))
            let uClass = both.slice(axis: 0, start: 0, length: B), uNull = both.slice(axis: 0, start: B, length: B)
            return w * v + k * uClass + (1 - w - k) * uNull
        }.stopGradient()
    }
}

/// Improved MeanFlow (iMF; Geng, Lu, Wu, Shechtman, Kolter, He 2025) on the flow-map network. The loss is on the
/// instantaneous velocity, re-parameterised through u: V = u(z_t, t, t - r) + (t - r) sg(du/dt) regresses the
/// (guided) velocity v_g, where du/dt is the JVP along (v_theta, 1, 0) with v_theta the network's own guided
/// prediction at gap 0, not the noisy eps - x0.
///
/// Guidance is a condition, as the official code trains it: omega enters the DiT's guidance input as
/// beta = 1 / omega, drawn per row log-uniformly in `guidanceRange` (the official [1, 8]), and, with `interval`
/// (a DiT with `guidanceInterval`), so does a CFG interval [start, end] drawn per row (start ~ U[0, 0.5],
/// end ~ U[0.5, 1]; [0, 1] on the r = t rows). Guidance acts only for t inside the row's interval:
/// with g = 1 there and 0 outside, v_g = v + g (1 - 1/omega) (v_theta(c, omega) - v_theta(null, 1)) on rows with a
/// class (v on null-class rows), and the tangent is v_theta(c, omega) inside, v_theta(c, 1) outside. The network
/// thus learns the average velocity of the ODE guided with scale omega inside [start, end] only; sampling passes
/// the chosen omega and interval. The velocities v_theta are evaluated with the whole interval [0, 1] (the
/// official v-head's dummies), which is what the r = t rows train.
///
/// This network has one head: v_theta is u at gap 0 (the MeanFlow boundary condition) rather than the official
/// auxiliary v-head, and the rows with r = t train it (for them V = u). The conditions enter the adaLN vector
/// (and in-context tokens too with a DiT with `inContext`).
public struct ImprovedMeanFlowObjective: Equatable {
    /// How the guidance interval is drawn per row (the official ranges).
    public struct IntervalDraw: Equatable {
        public var start: ClosedRange<Double> = 0...0.5, end: ClosedRange<Double> = 0.5...1
        public init() {}
    }

    public var times = MeanFlowTimeSampler(fractionEqual: 0.5)
    public var guidanceRange: ClosedRange<Double> = 1...8
    /// The interval draw, for a network with the interval input; nil: guidance over the whole interval.
    public var interval: IntervalDraw?
    public var adaptiveWeight = AdaptiveLossWeight()

    public init() {}

    /// Draws the times, noise and (with classes) omega and the interval of a batch; classes come from `cond`.
    public func batch(x0: Tensor, cond: Conditioning, rng: inout RandomGenerator) -> MeanFlowBatch {
        var b = drawBatch(x0: x0, cond: cond, times: times, rng: &rng)
        guard cond.classes != nil else { return b }
        let n = x0.shape[0], dtype = x0.dtype, dev = x0.device
        let (lo, hi) = (guidanceRange.lowerBound, guidanceRange.upperBound)
        let omega = rng.uniformFloats(n).map { lo * pow(hi / lo, Double($0)) }
        b.omega = Tensor(omega, shape: [n], dtype: dtype, on: dev)
        if let interval {
            let u = rng.uniformFloats(n), w = rng.uniformFloats(n)
            let equal = Int(Double(n) * times.fractionEqual)
            func within(_ range: ClosedRange<Double>, _ x: Float) -> Double {
                range.lowerBound + (range.upperBound - range.lowerBound) * Double(x)
            }
            // The r = t rows train the velocity the others' guidance is built from: guidance everywhere.
            let start = (0..<n).map { $0 < equal ? 0 : within(interval.start, u[$0]) }
            let end = (0..<n).map { $0 < equal ? 1 : within(interval.end, w[$0]) }
            b.interval = (Tensor(start, shape: [n], dtype: dtype, on: dev), Tensor(end, shape: [n], dtype: dtype, on: dev))
        }
        return b
    }

    public func terms(network net: some FlowMapNetwork, params: ParameterSet, _ b: MeanFlowBatch) -> MeanFlowTerms {
        let B = b.x0.shape[0]
        let (z, v) = b.interpolant
        let beta = b.omega?.reciprocal()
        // The JVP's tangent v_theta and the target v_g, from the network's own velocities without gradient.
        let (tangent, vg) = withoutGrad { () -> (Tensor, Tensor) in
            guard let classes = b.classes, let omega = b.omega, let beta else {
                return (net(params, x: z, t: b.t, gap: b.zeros(), cond: Conditioning(classes: b.classes)), v)
            }
            // One batched call: (class, omega), (null, 1) and, with the interval, (class, 1) for rows outside it.
            let null = classes.zerosLike()
            var rowClasses = [classes, null], rowBeta = [beta, b.ones()]
            if b.interval != nil { (rowClasses, rowBeta) = (rowClasses + [classes], rowBeta + [b.ones()]) }
            let k = rowClasses.count
            let all = net(params, x: concat(Array(repeating: z, count: k), axis: 0), t: concat(Array(repeating: b.t, count: k), axis: 0),
                          gap: Tensor.zeros([k * B], dtype: b.t.dtype, on: b.t.device),
                          cond: Conditioning(classes: concat(rowClasses, axis: 0), beta: concat(rowBeta, axis: 0)))
            let vClass = all.slice(axis: 0, start: 0, length: B), vNull = all.slice(axis: 0, start: B, length: B)
            let m = rows(b.hasClass!, like: b.x0)
            var guided = vClass, g = rows(b.ones(), like: b.x0)
            if let interval = b.interval {
                g = rows((1 - interval.start.greater(b.t)) * (1 - b.t.greater(interval.end)), like: b.x0)
                guided = g * vClass + (1 - g) * all.slice(axis: 0, start: 2 * B, length: B)
            }
            // A null-class row's velocity is the unconditional one whatever omega says.
            let tangent = m * guided + (1 - m) * vNull
            return (tangent, v + m * g * rows(1 - omega.reciprocal(), like: b.x0) * (vClass - vNull))
        }
        let cond = Conditioning(classes: b.classes, beta: beta, interval: b.interval)
        let (outs, tangents) = jvp({ p in [net(params, x: p[0], t: p[1], gap: p[1] - p[2], cond: cond)] },
                                   primals: [z, b.t, b.r], tangents: [tangent.stopGradient(), b.ones(), b.zeros()])
        let u = outs[0]
        let V = u + rows(b.t - b.r, like: b.x0) * tangents[0].stopGradient()
        let target = vg.stopGradient()
        let error = (V - target).square().sum(axes: Array(1..<b.x0.rank))
        return MeanFlowTerms(loss: adaptiveWeight(error), error: error, u: u, target: target)
    }
}

/// The times and noise of a MeanFlow or iMF batch, drawn in that order from `rng`.
func drawBatch(x0: Tensor, cond: Conditioning, times: MeanFlowTimeSampler, rng: inout RandomGenerator) -> MeanFlowBatch {
    let B = x0.shape[0], dev = x0.device
    let (t, r) = times.sample(B, rng: &rng)
    let noise = Tensor.randomNormal(x0.shape, rng: &rng, dtype: x0.dtype, on: dev)
    return MeanFlowBatch(x0: x0, noise: noise, t: Tensor(t, shape: [B], dtype: x0.dtype, on: dev),
                         r: Tensor(r, shape: [B], dtype: x0.dtype, on: dev), classes: cond.classes)
}
