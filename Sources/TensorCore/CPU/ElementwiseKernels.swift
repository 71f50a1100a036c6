import AVX2Kernels

// The fused activation kernels (ActivationBackend): SiLU and GELU with their tangents and derivatives in one pass.

extension CPUBackend: ActivationBackend {
    public func activation(_ op: UnaryOp, _ x: Storage, _ y: Storage) { unary(op, x, y) }

    public func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let px = cpu(x).ptr(T.self), pt = cpu(t).ptr(T.self), py = cpu(y).ptr(T.self), pty = cpu(ty).ptr(T.self)
            if op == .silu { Kernels.valueAndSlope(SiluPair.self, px, pt, py, pty, x.count) }
            else { Kernels.valueAndSlope(GeluPair.self, px, pt, py, pty, x.count) }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                              _ gx: Storage, _ gt: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let p = { (s: Storage?) in s.map { self.cpu($0).ptr(T.self) } }
            if op == .silu {
                Kernels.tangentBackward(SiluPair.self, p(x)!, p(t)!, p(gy), p(gty), p(gx)!, p(gt)!, x.count)
            } else {
                Kernels.tangentBackward(GeluPair.self, p(x)!, p(t)!, p(gy), p(gty), p(gx)!, p(gt)!, x.count)
            }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }

    public func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage) {
        func run<T: CPUFloat>(_: T.Type) {
            let px = cpu(x).ptr(T.self), pg = cpu(g).ptr(T.self), pgx = cpu(gx).ptr(T.self)
            if op == .silu { Kernels.slopeTimes(SiluPair.self, px, pg, pgx, x.count) }
            else { Kernels.slopeTimes(GeluPair.self, px, pg, pgx, x.count) }
        }
        typed(x, f32: { run(Float.self) }, f64: { run(Double.self) })
    }
}

extension Kernels {
    /// y = f(x).
    static func activationValue<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>,
                                                                _ n: Int) {
        if T.self == Float.self, AVX2.enabled {
            let (x, y) = (floats(x), floats(y))
            Parallel.forRanges(n, grain: 16_384) { r in AVX2Activation.value(F.lanes, x: x, y: y, range: r) }
            return
        }
        map(F.Value.self, x, y, n)
    }

    /// y = f(x), ty = f'(x) t.
    static func valueAndSlope<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ t: UnsafeMutablePointer<T>,
                                                              _ y: UnsafeMutablePointer<T>, _ ty: UnsafeMutablePointer<T>, _ n: Int) {
        if T.self == Float.self, AVX2.enabled {
            let (x, t, y, ty) = (floats(x), floats(t), floats(y), floats(ty))
            Parallel.forRanges(n, grain: 16_384) { r in AVX2Activation.valueAndTangent(F.lanes, x: x, t: t, y: y, ty: ty, range: r) }
            return
        }
        Parallel.forRanges(n, grain: 16_384) { r in
            for i in r {
                let (f, d1) = F.valueAndSlope(x[i])
                y[i] = f
                ty[i] = d1 * t[i]
            }
        }
    }

    /// gx = gy f'(x) + gty f''(x) t, gt = gty f'(x).
    static func tangentBackward<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ t: UnsafeMutablePointer<T>,
                                                                _ gy: UnsafeMutablePointer<T>?, _ gty: UnsafeMutablePointer<T>?,
                                                                _ gx: UnsafeMutablePointer<T>, _ gt: UnsafeMutablePointer<T>, _ n: Int) {
        if T.self == Float.self, AVX2.enabled {
            let (x, t, gy, gty, gx, gt) = (floats(x), floats(t), gy.map(floats), gty.map(floats), floats(gx), floats(gt))
            Parallel.forRanges(n, grain: 16_384) { r in
                AVX2Activation.tangentBackward(F.lanes, x: x, t: t, gy: gy, gty: gty, gx: gx, gt: gt, range: r)
            }
            return
        }
        Parallel.forRanges(n, grain: 16_384) { r in
            switch (gy, gty) {
            case let (gy?, gty?):
                for i in r {
                    let (d1, d2) = F.slopes(x[i])
                    gx[i] = gy[i] * d1 + gty[i] * d2 * t[i]
                    gt[i] = gty[i] * d1
                }
            case let (gy?, nil):
                for i in r { gx[i] = gy[i] * F.slopes(x[i]).0; gt[i] = 0 }
            case let (nil, gty?):
                for i in r {
                    let (d1, d2) = F.slopes(x[i])
                    gx[i] = gty[i] * d2 * t[i]
                    gt[i] = gty[i] * d1
                }
            case (nil, nil):
                for i in r { gx[i] = 0; gt[i] = 0 }
            }
        }
    }

    /// gx = g f'(x).
    static func slopeTimes<F: ActivationPair, T: CPUFloat>(_: F.Type, _ x: UnsafeMutablePointer<T>, _ g: UnsafeMutablePointer<T>,
                                                           _ gx: UnsafeMutablePointer<T>, _ n: Int) {
        if T.self == Float.self, AVX2.enabled {
            let (x, g, gx) = (floats(x), floats(g), floats(gx))
            Parallel.forRanges(n, grain: 16_384) { r in AVX2Activation.slopeTimes(F.lanes, x: x, g: g, gx: gx, range: r) }
            return
        }
        Parallel.forRanges(n, grain: 16_384) { r in for i in r { gx[i] = g[i] * F.slopes(x[i]).0 } }
    }

    /// A float32 kernel's pointer, once the caller has checked that T is Float.
    @inline(__always)
    static func floats<T>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    }
}
