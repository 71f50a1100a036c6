// Scaled sums and the row sums of products that give their factors' cotangents (ScaledSumBackend).

extension CPUBackend: ScaledSumBackend {
    public func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                          batch: Int, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.scaledSum(cpu(a).ptr(T.self), cpu(s).ptr(T.self), b.map { cpu($0).ptr(T.self) }, t.map { cpu($0).ptr(T.self) },
                              c.map { cpu($0).ptr(T.self) }, cFull, cpu(y).ptr(T.self), batch, rows, cols)
        }
        typed(a, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            Kernels.rowSumsOfProducts(cpu(g).ptr(T.self), xs.map { $0.map { cpu($0).ptr(T.self) } }, outs.map { cpu($0).ptr(T.self) },
                                      batch, rows, cols)
        }
        typed(g, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}

extension Kernels {
    static func scaledSum<T: CPUFloat>(_ a: UnsafeMutablePointer<T>, _ s: UnsafeMutablePointer<T>, _ b: UnsafeMutablePointer<T>?,
                                       _ t: UnsafeMutablePointer<T>?, _ c: UnsafeMutablePointer<T>?, _ cFull: Bool,
                                       _ y: UnsafeMutablePointer<T>, _ batch: Int, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(batch * rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { range in
            for row in range {
                let o = row * cols, so = (row / rows) * cols, co = cFull ? o : so
                for i in 0..<cols {
                    var v = a[o + i] * s[so + i]
                    if let b, let t { v += b[o + i] * t[so + i] }
                    if let c { v += c[co + i] }
                    y[o + i] = v
                }
            }
        }
    }

    static func rowSumsOfProducts<T: CPUFloat>(_ g: UnsafeMutablePointer<T>, _ xs: [UnsafeMutablePointer<T>?],
                                               _ outs: [UnsafeMutablePointer<T>], _ batch: Int, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(batch, grain: 1) { range in
            for bi in range {
                for (x, out) in zip(xs, outs) {
                    let po = out + bi * cols
                    for i in 0..<cols { po[i] = 0 }
                    for r in 0..<rows {
                        let o = (bi * rows + r) * cols
                        if let x { for i in 0..<cols { po[i] += g[o + i] * x[o + i] } }
                        else { for i in 0..<cols { po[i] += g[o + i] } }
                    }
                }
            }
        }
    }
}
