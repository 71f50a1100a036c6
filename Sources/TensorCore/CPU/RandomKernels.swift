// Philox random numbers on the CPU (a core operation): the same values as every other backend's (see
// RandomGenerator).

extension CPUBackend {
    public func random(_ y: Storage, normal: Bool, seed: UInt64, counter: UInt64) {
        func run<T: CPUFloat>(_: T.Type) {
            let p = cpu(y).ptr(T.self), n = y.count
            let blocks = (n + 3) / 4
            Parallel.forRanges(blocks, grain: 4096) { r in
                for blk in r {
                    let b = Philox.block(seed: seed, counter: counter &+ UInt64(blk))
                    var v: (Float, Float, Float, Float)
                    if normal {
                        let (z0, z1) = Philox.boxMuller(b.0, b.1), (z2, z3) = Philox.boxMuller(b.2, b.3)
                        v = (z0, z1, z2, z3)
                    } else {
                        v = (Philox.unit(b.0), Philox.unit(b.1), Philox.unit(b.2), Philox.unit(b.3))
                    }
                    let base = blk * 4
                    p[base] = T.from(v.0)
                    if base + 1 < n { p[base + 1] = T.from(v.1) }
                    if base + 2 < n { p[base + 2] = T.from(v.2) }
                    if base + 3 < n { p[base + 3] = T.from(v.3) }
                }
            }
        }
        typed(y, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}
