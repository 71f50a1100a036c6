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

    public init(guidance: GuidanceConfig = .unconditional, timeSampler: GapTimeSampler = GapTimeSampler()) {
        self.guidance = guidance
        self.timeSampler = timeSampler
    }

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

    /// One batch as the loss sees it: data, noise, the three times per row and the conditioning.
    public struct Inputs {
        public var x0, noise, t, s, sPrime: Tensor
        public var cond: Conditioning
        public init(x0: Tensor, noise: Tensor, t: Tensor, s: Tensor, sPrime: Tensor, cond: Conditioning) {
            (self.x0, self.noise, self.t, self.s, self.sPrime, self.cond) = (x0, noise, t, s, sPrime, cond)
        }
    }

    /// Draws times and noise for a batch of data, then keeps `rows` of it when given (one process's share in
    /// data-parallel training): the draws are made for the whole batch and then cut, so that a row's noise and
    /// times do not depend on how the batch is split across processes.
    public func inputs(x0: Tensor, cond: Conditioning, rng: inout RandomGenerator, rows: Range<Int>? = nil) -> Inputs {
        let B = x0.shape[0], dev = x0.device
        let times = timeSampler.sample(B, rng: &rng)
        let noise = Tensor.randomNormal(x0.shape, rng: &rng, on: dev)
        let r = rows ?? 0..<B
        func cut(_ x: Tensor) -> Tensor { x.slice(axis: 0, start: r.lowerBound, length: r.count) }
        func column(_ v: [Double]) -> Tensor { Tensor(Array(v[r]), shape: [r.count], dtype: .float32, on: dev) }
        return Inputs(x0: cut(x0), noise: cut(noise), t: column(times.t), s: column(times.s),
                      sPrime: column(times.sPrime), cond: Conditioning(classes: cond.classes.map(cut), beta: cond.beta.map(cut)))
    }

    /// Per-row factors shared by both terms.
    struct Scales {
        let beta: Tensor, betaRows: Tensor, kappaRows: Tensor?
        func scaled(_ F: Tensor) -> Tensor { kappaRows.map { F * $0 } ?? F }
    }

    func scales(_ b: Inputs) -> Scales {
        let beta = b.cond.beta ?? Tensor.ones([b.x0.shape[0]], on: b.x0.device)
        return Scales(beta: beta, betaRows: rows(beta, like: b.x0), kappaRows: kappa(beta).map { rows($0, like: b.x0) })
    }

    /// The terminal-velocity term per row, with F, the flow map and its s-derivative. Gradients of the term
    /// flow back through the JVP of the student.
    func terminalTerm(_ net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet, _ b: Inputs,
                              _ k: Scales) -> (terminal: Tensor, F: Tensor, flowMap: Tensor, dfds: Tensor) {
        let B = b.x0.shape[0]
        let (tr, sr) = (rows(b.t, like: b.x0), rows(b.s, like: b.x0))
        let xt = (1 - tr) * b.x0 + tr * b.noise
        // F and dF/ds along s alone.
        let (outs, tangents) = jvp({ ss in [net(student, x: xt, t: b.t, gap: b.t - ss[0], cond: b.cond)] },
                                   primals: [b.s], tangents: [Tensor.ones([B], on: b.x0.device)])
        let F = outs[0], dFds = tangents[0]
        let flowMap = xt + (sr - tr) * k.scaled(F)
        let dfds = k.scaled(F + (sr - tr) * dFds)
        let T = withoutGrad {
            k.scaled(net(teacher, x: flowMap.stopGradient(), t: b.s, gap: Tensor.zeros([B], on: b.x0.device), cond: b.cond))
        }.stopGradient()
        // Rows with s == t have no terminal term; "equal" as torch.isclose decides it (rtol 1e-5, atol 1e-8).
        let bound = 1e-8 + 1e-5 * b.t
        let notDiagonal = (b.s - b.t).square().greater(bound.square())
        let terminal = ((dfds - T) * k.betaRows).square().mean(axes: Array(1..<b.x0.rank)) * notDiagonal
        return (terminal, F, flowMap, dfds)
    }

    /// The flow-matching term per row, at s' with the guided target.
    func flowMatchingTerm(_ net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet,
                                  _ b: Inputs, _ k: Scales) -> Tensor {
        let B = b.x0.shape[0]
        let spr = rows(b.sPrime, like: b.x0)
        let xsp = (1 - spr) * b.x0 + spr * b.noise
        let v = b.noise - b.x0
        // The unconditional velocity only enters with weight 1 - w: none when no beta is given.
        let U: Tensor? = b.cond.beta == nil ? nil : withoutGrad {
            let nullCond = Conditioning(classes: b.cond.classes.map { $0.zerosLike() }, beta: b.cond.beta.map { $0.onesLike() })
            return net(teacher, x: xsp, t: b.sPrime, gap: Tensor.zeros([B], on: b.x0.device), cond: nullCond).stopGradient()
        }
        let Fss = k.scaled(net(student, x: xsp, t: b.sPrime, gap: Tensor.zeros([B], on: b.x0.device), cond: b.cond))
        let wr = rows(k.beta.reciprocal(), like: b.x0)
        let target = U.map { wr * v + (1 - wr) * $0 } ?? v
        return ((Fss - target) * k.betaRows).square().mean(axes: Array(1..<b.x0.rank))
    }

    /// A row's loss is the sum of both terms, zeroed (with its gradient) where that sum is not finite.
    /// Selecting on the mask always (not only after counting NaN rows) keeps the loss free of a device read.
    func combined(terminal: Tensor, flowMatching: Tensor) -> (loss: Tensor, finite: Tensor) {
        let raw = terminal + flowMatching
        let finite = raw.isFinite()
        return (select(finite, raw, raw.zerosLike()), finite)
    }

    /// The loss at given data, noise, times and conditioning, as one graph. `student` should hold
    /// differentiation leaves for gradients; `teacher` (the EMA target) is never differentiated.
    public func terms(network net: some FlowMapNetwork, student: ParameterSet, teacher: ParameterSet, _ b: Inputs) -> Terms {
        let k = scales(b)
        let (terminal, F, flowMap, dfds) = terminalTerm(net, student: student, teacher: teacher, b, k)
        let fm = flowMatchingTerm(net, student: student, teacher: teacher, b, k)
        let (loss, finite) = combined(terminal: terminal, flowMatching: fm)
        return Terms(loss: loss, terminal: terminal, flowMatching: fm, F: F, flowMap: flowMap,
                     flowMapDerivative: dfds, finiteRows: finite)
    }
}

extension Tensor {
    public func onesLike() -> Tensor { .ones(shape, dtype: dtype, on: device) }
}
