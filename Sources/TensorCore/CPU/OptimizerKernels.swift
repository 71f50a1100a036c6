#if canImport(Glibc)
import Glibc
#endif

// The fused optimizer updates on the CPU (OptimizerBackend).

extension CPUBackend: OptimizerBackend {
    public func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
                      eps: Double, weightDecay: Double, step: Int, gradScale: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            let pp = cpu(p).ptr(T.self), pg = cpu(g).ptr(T.self), pm = cpu(m).ptr(T.self), pv = cpu(v).ptr(T.self)
            // The same arithmetic as torch.optim.AdamW (decoupled decay, bias corrections folded as it does).
            let bc1 = 1 - Glibc.pow(beta1, Double(step)), bc2 = 1 - Glibc.pow(beta2, Double(step))
            let stepSize = T(lr / bc1), sqrtBc2 = T(bc2.squareRoot())
            let decay = T(1 - lr * weightDecay), b1 = T(beta1), b2 = T(beta2), e = T(eps), gs = T(gradScale)
            Parallel.forRanges(p.count) { r in
                for i in r {
                    let gi = pg[i] * gs
                    let mi = b1 * pm[i] + (1 - b1) * gi
                    let vi = b2 * pv[i] + (1 - b2) * gi * gi
                    pm[i] = mi
                    pv[i] = vi
                    pp[i] = pp[i] * decay - stepSize * mi / (T.fsqrt(vi) / sqrtBc2 + e)
                }
            }
        }
        typed(p, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func emaUpdate(ema: Storage, p: Storage, decay: Double) {
        func run<T: CPUFloat>(_: T.Type) {
            let pe = cpu(ema).ptr(T.self), pp = cpu(p).ptr(T.self), d = T(decay)
            Parallel.forRanges(p.count) { r in for i in r { pe[i] = pp[i] + d * (pe[i] - pp[i]) } }
        }
        typed(p, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func views(of buffer: Storage, offsets: [Int], counts: [Int]) -> [Storage] {
        let base = cpu(buffer)
        return zip(offsets, counts).map { CPUStorage(viewOf: base, offset: $0, count: $1) }
    }
}
