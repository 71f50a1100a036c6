// Softmax over rows on the CPU (a core operation).

extension CPUBackend {
    public func softmax(_ x: Storage, _ y: Storage, rows: Int, cols: Int) {
        typed(x, f32: { Kernels.softmax(cpu(x).ptr(Float.self), cpu(y).ptr(Float.self), rows, cols) },
              f64: { Kernels.softmax(cpu(x).ptr(Double.self), cpu(y).ptr(Double.self), rows, cols) })
    }
}

extension Kernels {
    static func softmax<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, _ rows: Int, _ cols: Int) {
        Parallel.forRanges(rows, grain: Swift.max(1, 16_384 / Swift.max(cols, 1))) { r in
            for row in r {
                let px = x + row * cols, py = y + row * cols
                let m = maxContiguous(px, cols)
                var s = T(0)
                for i in 0..<cols { let e = T.fexp(px[i] - m); py[i] = e; s += e }
                let inv = 1 / s
                for i in 0..<cols { py[i] *= inv }
            }
        }
    }
}
