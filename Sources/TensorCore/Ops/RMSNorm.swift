// RMS normalisation: plain (x / sqrt(mean(x^2) + eps)) and followed by per-column scale and shift (norm weights,
// adaLN modulation), with fused kernels for their JVPs and VJPs where the backend has them.

/// Fused RMS-normalisation kernels. Without them `rmsNormalized` is composed from core operations (squares, a
/// mean, rsqrt, products), whose own rules give its derivatives.
public protocol NormBackend: Backend {
    /// x / sqrt(mean(x^2) + eps) over the last axis of a [rows, cols] matrix.
    func rmsNorm(_ x: Storage, _ y: Storage, rows: Int, cols: Int, eps: Double)
    /// out = r (d - y mean(y d)) + c per row of [rows, cols], r = 1 / sqrt(mean(x^2) + eps), y = rmsNorm(x), c
    /// (nil: none) of the same shape: the derivative of RMS normalisation applied to d. The map is symmetric, so it
    /// is both the JVP (d a tangent) and the VJP (d a cotangent, c a gradient already summed for the same input);
    /// one kernel replaces eight elementwise passes.
    func rmsNormLinear(_ x: Storage, _ y: Storage, _ d: Storage, plus c: Storage?, _ out: Storage, rows: Int, cols: Int,
                       eps: Double)
    /// Cotangents of rmsNormLinear's x, y and d for the cotangent g of its output (gradients through the JVP),
    /// each plus the matching entry of `plus` (gradients already summed for that input; nil: none).
    func rmsNormLinearBackward(_ x: Storage, _ y: Storage, _ d: Storage, _ g: Storage, gx: Storage, gy: Storage,
                               gd: Storage, plus: (x: Storage?, y: Storage?, d: Storage?), rows: Int, cols: Int, eps: Double)
    /// y = rmsNorm(x) s + t over [batch, rows, cols] with s and t of shape [batch, cols] (one value per column,
    /// shared by a batch entry's rows; t may be nil): normalisation followed by adaLN modulation or a norm weight,
    /// reading each row once and writing y only (the normalised rows are never stored). `productOperand`: y feeds
    /// matrix products (a backend with low-precision products may write their operand copy in the same pass; y may be
    /// its `lowPrecisionStorage`, which holds that copy alone). Likewise for the JVP's `out`. x (and the JVP's dx) may be
    /// such a storage too, and so may the backward's gx and gdx (`inputCotangents: .only`).
    func rmsNormScaled(_ x: Storage, scale s: Storage, shift t: Storage?, _ y: Storage, batch: Int, rows: Int, cols: Int,
                       eps: Double, productOperand: Bool)
    /// The tangent of rmsNormScaled: out = L(dx) s + rmsNorm(x) ds + dt, L(dx) = r (dx - n mean(n dx)) the
    /// derivative of n = rmsNorm(x) (rmsNormLinear), s, ds and dt [batch, cols] (ds, dt may be nil). One pass over
    /// x and dx, where n, L(dx) and the sum would be three that store n and L(dx).
    func rmsNormScaledJVP(_ x: Storage, _ dx: Storage, scale s: Storage, dScale ds: Storage?, dShift dt: Storage?,
                          _ out: Storage, batch: Int, rows: Int, cols: Int, eps: Double, productOperand: Bool)
    /// Cotangents for g of out = L(dx) sA + rmsNorm(x) sB + t (rmsNormScaled: no dx and sA, sB = s; its JVP:
    /// sA = s, sB = ds or nil): gx (plus `plus.x`), gdx = L(g sA) (plus `plus.dx`; with dx only) and the per-column
    /// sums over each batch entry's rows `sums.n` = sum g n, `sums.dn` = sum g L(dx), `sums.one` = sum g (nil:
    /// not wanted), all [batch, cols]. n and L(dx) are recomputed, never read.
    func rmsNormScaledBackward(_ x: Storage, _ dx: Storage?, _ g: Storage, sA: Storage?, sB: Storage?, gx: Storage,
                               gdx: Storage?, plus: (x: Storage?, dx: Storage?),
                               sums: (n: Storage?, dn: Storage?, one: Storage?), batch: Int, rows: Int, cols: Int, eps: Double)
}

extension Tensor {
    /// x / sqrt(mean(x^2) + eps) over the last axis (no weight).
    public func rmsNormalized(eps: Double = 1e-6) -> Tensor {
        guard let fused = backend as? any NormBackend else { return composedRMSNorm(eps: eps) }
        let cols = shape.last!
        let y = empty(shape)
        fused.rmsNorm(storage, y.storage, rows: count / Swift.max(cols, 1), cols: cols, eps: eps)
        return record1("rmsNorm", [self], y, saves: [0], jvp: { x, y, t in
            [Tensor.rmsNormLinear(x[0], y[0], t[0]!, eps: eps, on: fused)]
        }, accumulatingVJP: { x, y, g, p in
            [Tensor.rmsNormLinear(x[0].detached(), y[0], g[0]!, plus: p[0], eps: eps, on: fused)]
        })
    }

    /// RMS normalisation from core operations, x rsqrt(mean(x^2) + eps), differentiated through their rules: what a
    /// backend without `NormBackend` computes.
    func composedRMSNorm(eps: Double) -> Tensor {
        self * (square().mean(axes: [-1], keepDims: true) + eps).rsqrt()
    }

    /// r (d - y mean(y d)) + c over the last axis with r = 1 / sqrt(mean(x^2) + eps), y = rmsNorm(x) and c of x's
    /// shape (nil: none): the JVP of RMS normalisation for a tangent d, and (the map being symmetric) its VJP for a
    /// cotangent d. c, a gradient already summed for x, is for VJP rules, which run undifferentiated.
    static func rmsNormLinear(_ x: Tensor, _ y: Tensor, _ d: Tensor, plus c: Tensor? = nil, eps: Double,
                              on kernels: any NormBackend) -> Tensor {
        let cols = x.shape.last!, rows = x.count / Swift.max(cols, 1)
        if let c {
            precondition(c.count == x.count, "rmsNormLinear: c of shape \(c.shape) does not match x \(x.shape)")
            precondition(!isDifferentiated([x, y, d, c]), "rmsNormLinear: plus is for undifferentiated use (VJP rules)")
        }
        let out = x.empty(x.shape)
        kernels.rmsNormLinear(x.storage, y.storage, d.storage, plus: c?.storage, out.storage, rows: rows, cols: cols, eps: eps)
        // Nested forward mode is not supported, so this op never sees tangents (no JVP rule).
        return record1("rmsNormLinear", [x, y, d], out, savesOutputs: false, jvp: nil, accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return [nil, nil, nil] }
            let gx = g.empty(g.shape), gy = g.empty(g.shape), gd = g.empty(g.shape)
            kernels.rmsNormLinearBackward(i[0].storage, i[1].storage, i[2].storage, g.storage, gx: gx.storage,
                                          gy: gy.storage, gd: gd.storage, plus: (p[0]?.storage, p[1]?.storage, p[2]?.storage),
                                          rows: rows, cols: cols, eps: eps)
            return [gx, gy, gd]
        })
    }
}

extension Tensor {
    /// rmsNormalized(eps) * scale + shift over the last axis, in one pass that reads each row once and writes only
    /// the result: adaLN modulation after a norm (scale = 1 + the modulation's scale) and norm weights, where the
    /// separate passes would write the normalised tensor and read it back. scale and shift (nil: none) hold one
    /// value per column, either per entry of the first axis (B * C values for a tensor [B, ..., C], such as
    /// [B, 1, C]) or one row of C values shared by every row (a weight [C]). `products`: who reads the result (and
    /// its tangent), a hint for backends that keep low-precision operand copies (`ProductUse`); `inputCotangents`: who
    /// reads x's cotangents (and those of x's tangent): `.only` where x is a linear layer's output that nothing else
    /// reads (DiT's q and k before their norms), so that they may be held as the products' copies alone.
    public func rmsNormalized(eps: Double, scale: Tensor, shift: Tensor? = nil, products: ProductUse = .none,
                              inputCotangents: ProductUse = .none) -> Tensor {
        let cols = shape.last!
        let batch = scale.count == cols ? 1 : shape[0]
        precondition(scale.count == batch * cols,
                     "rmsNormalized: scale of shape \(scale.shape) does not fit a tensor of shape \(shape)")
        if let shift { precondition(shift.count == scale.count, "rmsNormalized: shift \(shift.shape) does not match scale \(scale.shape)") }
        let rows = count / Swift.max(batch * cols, 1)
        guard let fused = backend as? any NormBackend else {
            let factor = [batch, 1, cols]
            let scaled = reshaped([batch, rows, cols]).composedRMSNorm(eps: eps) * scale.reshaped(factor)
            return (shift.map { scaled + $0.reshaped(factor) } ?? scaled).reshaped(shape)
        }
        let y = output(shape, for: products)
        fused.rmsNormScaled(storage, scale: scale.storage, shift: shift?.storage, y.storage, batch: batch, rows: rows,
                            cols: cols, eps: eps, productOperand: products.feedsProducts)
        var inputs = [self, scale]
        if let shift { inputs.append(shift) }
        let hasShift = shift != nil, scaleShape = scale.shape, shiftShape = shift?.shape
        // The JVP with a tangent of x is one op with its own VJP (n and its derivative recomputed there, never
        // stored: storing them is the traffic this op exists to avoid). shift's value is not needed for any
        // cotangent, only its shape.
        let out = record1("rmsNormScaled", inputs, y, saves: [0, 1], savesOutputs: false, jvp: { i, _, d in
            if let dx = d[0] {
                return [Tensor.rmsNormScaledTangent(i[0], dx, scale: i[1], dScale: d[1], dShift: hasShift ? d[2] : nil,
                                                    batch: batch, eps: eps, products: products, inputCotangents: inputCotangents,
                                                    on: fused)]
            }
            // Without a tangent of x: n ds + dt, n = rmsNorm(x) (differentiable; the rule runs only when some input has a tangent).
            let dt = hasShift ? d[2]?.reshaped([batch, 1, cols]) : nil
            let x = i[0].reshaped([batch, rows, cols])
            let dy = d[1].map { Tensor.scaledSum(x.rmsNormalized(eps: eps), $0.reshaped([batch, cols]), plus: dt) }
                ?? dt!.broadcast(to: [batch, rows, cols])
            return [dy.reshaped(i[0].shape)]
        }, accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: hasShift ? 3 : 2) }
            let gx = g.output(g.shape, for: inputCotangents), gs = g.empty(scaleShape), gt = shiftShape.map { g.empty($0) }
            fused.rmsNormScaledBackward(i[0].storage, nil, g.storage, sA: nil, sB: i[1].storage, gx: gx.storage, gdx: nil,
                                        plus: (p[0]?.storage, nil), sums: (gs.storage, nil, gt?.storage),
                                        batch: batch, rows: rows, cols: cols, eps: eps)
            var grads: [Tensor?] = [gx, adding(p[1], gs)]
            if let gt { grads.append(adding(p[2], gt)) }
            return grads
        })
        // The node keeps x and scale; with shift (one row per batch entry) one row pass remakes the result, which the
        // linear layer that reads it then keeps as a recipe rather than as values (`Tensor.recompute`).
        if out.gradSource != nil {
            let (x, s, t) = (storage, scale.storage, shift?.storage)
            out.recompute = {
                let y = fused.outputStorage(count: x.count, dtype: x.dtype, for: products)
                fused.rmsNormScaled(x, scale: s, shift: t, y, batch: batch, rows: rows, cols: cols, eps: eps,
                                    productOperand: products.feedsProducts)
                return y
            }
        }
        return out
    }

    /// rmsNormScaled's tangent L(dx) s + n ds + dt (see NormBackend.rmsNormScaledJVP), recorded with its VJP: the
    /// gradients through the JVP that TVM's terminal term needs, in one row pass and one column-sum pass.
    static func rmsNormScaledTangent(_ x: Tensor, _ dx: Tensor, scale s: Tensor, dScale ds: Tensor?, dShift dt: Tensor?,
                                     batch: Int, eps: Double, products: ProductUse, inputCotangents: ProductUse,
                                     on kernels: any NormBackend) -> Tensor {
        let cols = x.shape.last!, rows = x.count / Swift.max(batch * cols, 1)
        precondition(dx.shape == x.shape, "rmsNormScaledTangent: tangent \(dx.shape) does not match x \(x.shape)")
        let out = x.output(x.shape, for: products)
        kernels.rmsNormScaledJVP(x.storage, dx.storage, scale: s.storage, dScale: ds?.storage, dShift: dt?.storage,
                                 out.storage, batch: batch, rows: rows, cols: cols, eps: eps, productOperand: products.feedsProducts)
        var inputs = [x, dx, s]
        if let ds { inputs.append(ds) }
        if let dt { inputs.append(dt) }
        let hasDS = ds != nil, hasDT = dt != nil, n = inputs.count
        // Nested forward mode is not supported, so this op never sees tangents (no JVP rule). dt's value is not
        // needed for any cotangent, only its shape.
        let tangent = record1("rmsNormScaledTangent", inputs, out, saves: Array(0..<(hasDS ? 4 : 3)), savesOutputs: false, jvp: nil,
                       accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: n) }
            let gx = g.output(i[0].shape, for: inputCotangents), gdx = g.output(i[0].shape, for: inputCotangents)
            let gs = g.empty(i[2].shape), gds = hasDS ? g.empty(i[3].shape) : nil, gdt = hasDT ? g.empty(i[n - 1].shape) : nil
            kernels.rmsNormScaledBackward(i[0].storage, i[1].storage, g.storage, sA: i[2].storage, sB: hasDS ? i[3].storage : nil,
                                          gx: gx.storage, gdx: gdx.storage, plus: (p[0]?.storage, p[1]?.storage),
                                          sums: (gds?.storage, gs.storage, gdt?.storage), batch: batch, rows: rows, cols: cols, eps: eps)
            var grads: [Tensor?] = [gx, gdx, adding(p[2], gs)]
            if let gds { grads.append(adding(p[3], gds)) }
            if let gdt { grads.append(adding(p[n - 1], gdt)) }
            return grads
        })
        // Remade from what the node keeps (and dt, one row per batch entry), as rmsNormalized's result is.
        if tangent.gradSource != nil {
            let (xs, dxs, ss, dss, dts) = (x.storage, dx.storage, s.storage, ds?.storage, dt?.storage)
            tangent.recompute = {
                let o = kernels.outputStorage(count: xs.count, dtype: xs.dtype, for: products)
                kernels.rmsNormScaledJVP(xs, dxs, scale: ss, dScale: dss, dShift: dts, o, batch: batch, rows: rows, cols: cols,
                                         eps: eps, productOperand: products.feedsProducts)
                return o
            }
        }
        return tangent
    }
}
