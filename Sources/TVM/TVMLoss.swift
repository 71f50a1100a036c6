import TensorCore
import NN

/// Per-row scalars [B] reshaped to broadcast against a batch of shape `like` ([B, ...]).
func rows(_ v: Tensor, like x: Tensor) -> Tensor {
    v.reshaped([x.shape[0]] + Array(repeating: 1, count: x.rank - 1))
}

/// The Terminal Velocity Matching objective, exactly as TVM.md states it.
public struct TVMObjective {
    public var guidance: GuidanceConfig
    public var timeSampler = GapTimeSampler()

    public init(guidance: GuidanceConfig = .unconditional) { self.guidance = guidance }

    /// Everything one evaluation of the loss produces (per row where the name says so).
    public struct Terms {
        public var loss: Tensor            // [B], the per-row loss (NaN rows zeroed)
        public var terminal: Tensor        // [B]
        public var flowMatching: Tensor    // [B]
        public var F: Tensor               // F(x_t, t, t - s), raw
        public var flowMap: Tensor         // f(x_t, t, s), kappa applied
        public var flowMapDerivative: Tensor  // d/ds f(x_t, t, s)
        /// 1 for rows whose loss was finite, 0 for those zeroed.
        public var finiteRows: Tensor
        /// How many rows were zeroed (reads the device).
        public var nanRows: Int { finiteRows.count - Int(finiteRows.sum().item) }
        /// The scalar to minimise: the batch mean of `loss`.
        public var mean: Tensor { loss.mean() }
    }

    /// kappa = w = 1 / beta under the scaled parameterisation, else 1; per row.
    func kappa(_ beta: Tensor) -> Tensor? {
        guidance.scaledParameterization ? beta.reciprocal() : nil
    }

    /// The loss at given data, noise, times and conditioning. `student` should hold differentiation leaves
    /// for gradients; `teacher` (the EMA target) is never differentiated.
    public func terms(network net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet,
                      x0: Tensor, noise: Tensor, t: Tensor, s: Tensor, sPrime: Tensor, cond: Conditioning) -> Terms {
        let B = x0.shape[0]
        let beta = cond.beta ?? Tensor.ones([B], on: x0.device)
        let w = beta.reciprocal()
        let kappaRows = kappa(beta).map { rows($0, like: x0) }
        func scaled(_ F: Tensor) -> Tensor { kappaRows.map { F * $0 } ?? F }
        let (tr, sr, spr) = (rows(t, like: x0), rows(s, like: x0), rows(sPrime, like: x0))

        let xt = (1 - tr) * x0 + tr * noise
        let v = noise - x0
        // F and dF/ds along s alone; gradients of the loss flow back through this JVP.
        let (outs, tangents) = jvp({ ss in [net(student, x: xt, t: t, gap: t - ss[0], cond: cond)] },
                                   primals: [s], tangents: [Tensor.ones([B], on: x0.device)])
        let F = outs[0], dFds = tangents[0]
        let flowMap = xt + (sr - tr) * scaled(F)
        let dfds = scaled(F + (sr - tr) * dFds)

        let betaRows = rows(beta, like: x0)
        let xsp = (1 - spr) * x0 + spr * noise
        let guided = cond.beta != nil
        let (T, U) = withoutGrad { () -> (Tensor, Tensor?) in
            let T = scaled(net(teacher, x: flowMap.stopGradient(), t: s, gap: Tensor.zeros([B], on: x0.device), cond: cond))
            // The unconditional velocity only enters with weight 1 - w: zero everywhere when no beta is given.
            guard guided else { return (T.stopGradient(), nil) }
            let nullCond = Conditioning(classes: cond.classes.map { $0.zerosLike() }, beta: cond.beta.map { $0.onesLike() })
            let U = net(teacher, x: xsp, t: sPrime, gap: Tensor.zeros([B], on: x0.device), cond: nullCond)
            return (T.stopGradient(), U.stopGradient())
        }
        let Fss = scaled(net(student, x: xsp, t: sPrime, gap: Tensor.zeros([B], on: x0.device), cond: cond))

        let reduceAxes = Array(1..<x0.rank)
        // Rows with s == t have no terminal term; "equal" as torch.isclose decides it (rtol 1e-5, atol 1e-8).
        let bound = 1e-8 + 1e-5 * t
        let notDiagonal = (s - t).square().greater(bound.square())
        let terminal = ((dfds - T) * betaRows).square().mean(axes: reduceAxes) * notDiagonal
        let wr = rows(w, like: x0)
        let target = U.map { wr * v + (1 - wr) * $0 } ?? v
        let fm = ((Fss - target) * betaRows).square().mean(axes: reduceAxes)
        let raw = terminal + fm
        // Selecting on the mask always (not only after counting NaN rows) keeps the step free of a device read.
        let finite = raw.isFinite()
        let loss = select(finite, raw, raw.zerosLike())
        return Terms(loss: loss, terminal: terminal, flowMatching: fm, F: F, flowMap: flowMap,
                     flowMapDerivative: dfds, finiteRows: finite)
    }

    /// Draws times and noise for a batch of data and evaluates the loss, on `rows` of the batch only when given
    /// (one process's share in data-parallel training): the draws are made for the whole batch and then cut, so
    /// that a row's noise and times do not depend on how the batch is split across processes.
    public func terms(network net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet,
                      x0: Tensor, cond: Conditioning, rng: inout RandomGenerator, rows: Range<Int>? = nil) -> Terms {
        let B = x0.shape[0], dev = x0.device
        let times = timeSampler.sample(B, rng: &rng)
        let noise = Tensor.randomNormal(x0.shape, rng: &rng, on: dev)
        let r = rows ?? 0..<B
        func cut(_ x: Tensor) -> Tensor { x.slice(axis: 0, start: r.lowerBound, length: r.count) }
        func column(_ v: [Double]) -> Tensor { Tensor(Array(v[r]), shape: [r.count], dtype: .float32, on: dev) }
        return terms(network: net, student: student, teacher: teacher, x0: cut(x0), noise: cut(noise),
                     t: column(times.t), s: column(times.s), sPrime: column(times.sPrime),
                     cond: Conditioning(classes: cond.classes.map(cut), beta: cond.beta.map(cut)))
    }
}

extension Tensor {
    public func onesLike() -> Tensor { .ones(shape, dtype: dtype, on: device) }
}
