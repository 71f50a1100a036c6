extension Tensor {
    /// a * s + b * t + c for a, b of shape [B, ..., C] and per-column factors s, t of shape [B, 1, C] (any shape
    /// of B * C values), broadcast over the middle axes; c is either a's shape or s's. adaLN modulation
    /// (x * (1 + scale) + shift) and gated residuals (x + gate * y) are one kernel each, and so is their JVP
    /// (ta * s + a * ts + tc), which would otherwise be five full-size passes.
    public static func scaledSum(_ a: Tensor, _ s: Tensor, _ b: Tensor? = nil, _ t: Tensor? = nil, plus c: Tensor? = nil) -> Tensor {
        let batch = s.shape[0], cols = a.shape.last!
        precondition(s.count == batch * cols && a.shape[0] == batch,
                     "scaledSum: factor of shape \(s.shape) does not fit a tensor of shape \(a.shape)")
        precondition((b == nil) == (t == nil), "scaledSum: b and t go together")
        if let b, let t { precondition(b.shape == a.shape && t.count == s.count, "scaledSum: b \(b.shape) / t \(t.shape) do not match a, s") }
        let cFull = c.map { $0.count == a.count } ?? false
        if let c { precondition(c.count == a.count || c.count == s.count, "scaledSum: c of shape \(c.shape) fits neither a nor s") }
        let rows = a.count / Swift.max(batch * cols, 1)
        let y = a.empty(a.shape)
        a.backend.scaledSum(a: a.storage, s: s.storage, b: b?.storage, t: t?.storage, c: c?.storage, cFull: cFull,
                            y: y.storage, batch: batch, rows: rows, cols: cols)
        var inputs = [a, s]
        if let b, let t { inputs += [b, t] }
        if let c { inputs.append(c) }
        let hasB = b != nil, hasC = c != nil, aShape = a.shape, n = inputs.count
        // c's value is not needed for any cotangent, only its shape.
        return record1("scaledSum", inputs, y, saves: Array(0..<(hasB ? 4 : 2)), savesOutputs: false, jvp: { x, _, dx in
            // d(a s) = da s + a ds, likewise for b t; the terms chain two at a time through scaledSum itself.
            var terms: [(Tensor, Tensor)] = []
            if let da = dx[0] { terms.append((da, x[1])) }
            if let ds = dx[1] { terms.append((x[0], ds)) }
            if hasB {
                if let db = dx[2] { terms.append((db, x[3])) }
                if let dt = dx[3] { terms.append((x[2], dt)) }
            }
            var acc: Tensor? = hasC ? dx[n - 1] : nil
            if terms.isEmpty { return [acc?.broadcast(to: aShape)] }
            for i in stride(from: 0, to: terms.count, by: 2) {
                let second = i + 1 < terms.count ? terms[i + 1] : nil
                acc = scaledSum(terms[i].0, terms[i].1, second?.0, second?.1, plus: acc)
            }
            return [acc]
        }, accumulatingVJP: { x, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: n) }
            let sShape = x[1].shape
            var products: [Tensor?] = [x[0]]
            if hasB { products.append(x[2]) }
            let cBroadcast = hasC && !cFull
            if cBroadcast { products.append(nil) }
            let outs = products.map { _ in g.empty(sShape) }
            g.backend.rowSumsOfProducts(g: g.storage, products.map { $0?.storage }, outs.map(\.storage),
                                        batch: batch, rows: rows, cols: cols)
            // a's and b's cotangents (full size) take their partials in the same pass; the rest add them.
            var grads: [Tensor?] = [scaledSum(g, x[1], plus: p[0]), adding(p[1], outs[0])]
            if hasB { grads += [scaledSum(g, x[3], plus: p[2]), adding(p[3], outs[1])] }
            if hasC { grads.append(adding(p[n - 1], cBroadcast ? outs.last!.reshaped(x[n - 1].shape) : g)) }
            return grads
        })
    }
}

/// A gradient summed so far plus a new term (the order of the engine's own sums).
private func adding(_ partial: Tensor?, _ term: Tensor) -> Tensor { partial.map { $0 + term } ?? term }

extension Tensor {
    /// rmsNormalized(eps) * scale + shift over the last axis, in one pass that reads each row once and writes only
    /// the result: adaLN modulation after a norm (scale = 1 + the modulation's scale) and norm weights, where the
    /// separate passes would write the normalised tensor and read it back. scale and shift (nil: none) hold one
    /// value per column, either per entry of the first axis (B * C values for a tensor [B, ..., C], such as
    /// [B, 1, C]) or one row of C values shared by every row (a weight [C]). `feedsProducts`: the result (and its
    /// tangent) are matrix-product operands, a hint for backends that keep low-precision operand copies.
    public func rmsNormalized(eps: Double, scale: Tensor, shift: Tensor? = nil, feedsProducts: Bool = false) -> Tensor {
        let cols = shape.last!
        let batch = scale.count == cols ? 1 : shape[0]
        precondition(scale.count == batch * cols,
                     "rmsNormalized: scale of shape \(scale.shape) does not fit a tensor of shape \(shape)")
        if let shift { precondition(shift.count == scale.count, "rmsNormalized: shift \(shift.shape) does not match scale \(scale.shape)") }
        let rows = count / Swift.max(batch * cols, 1)
        let y = empty(shape)
        backend.rmsNormScaled(storage, scale: scale.storage, shift: shift?.storage, y.storage, batch: batch, rows: rows,
                              cols: cols, eps: eps, productOperand: feedsProducts)
        var inputs = [self, scale]
        if let shift { inputs.append(shift) }
        let hasShift = shift != nil, scaleShape = scale.shape, shiftShape = shift?.shape
        // The JVP with a tangent of x is one op with its own VJP (n and its derivative recomputed there, never
        // stored: storing them is the traffic this op exists to avoid). shift's value is not needed for any
        // cotangent, only its shape.
        return record1("rmsNormScaled", inputs, y, saves: [0, 1], savesOutputs: false, jvp: { i, _, d in
            if let dx = d[0] {
                return [Tensor.rmsNormScaledTangent(i[0], dx, scale: i[1], dScale: d[1], dShift: hasShift ? d[2] : nil,
                                                    batch: batch, eps: eps, feedsProducts: feedsProducts)]
            }
            // Without a tangent of x: n ds + dt, n = rmsNorm(x) (differentiable; the rule runs only when some input has a tangent).
            let dt = hasShift ? d[2]?.reshaped([batch, 1, cols]) : nil
            let x = i[0].reshaped([batch, rows, cols])
            let dy = d[1].map { Tensor.scaledSum(x.rmsNormalized(eps: eps), $0.reshaped([batch, cols]), plus: dt) }
                ?? dt!.broadcast(to: [batch, rows, cols])
            return [dy.reshaped(i[0].shape)]
        }, accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: hasShift ? 3 : 2) }
            let gx = g.empty(g.shape), gs = g.empty(scaleShape), gt = shiftShape.map { g.empty($0) }
            g.backend.rmsNormScaledBackward(i[0].storage, nil, g.storage, sA: nil, sB: i[1].storage, gx: gx.storage, gdx: nil,
                                            plus: (p[0]?.storage, nil), sums: (gs.storage, nil, gt?.storage),
                                            batch: batch, rows: rows, cols: cols, eps: eps)
            var grads: [Tensor?] = [gx, adding(p[1], gs)]
            if let gt { grads.append(adding(p[2], gt)) }
            return grads
        })
    }

    /// rmsNormScaled's tangent L(dx) s + n ds + dt (see Backend.rmsNormScaledJVP), recorded with its VJP: the
    /// gradients through the JVP that TVM's terminal term needs, in one row pass and one column-sum pass.
    static func rmsNormScaledTangent(_ x: Tensor, _ dx: Tensor, scale s: Tensor, dScale ds: Tensor?, dShift dt: Tensor?,
                                     batch: Int, eps: Double, feedsProducts: Bool) -> Tensor {
        let cols = x.shape.last!, rows = x.count / Swift.max(batch * cols, 1)
        precondition(dx.shape == x.shape, "rmsNormScaledTangent: tangent \(dx.shape) does not match x \(x.shape)")
        let out = x.empty(x.shape)
        x.backend.rmsNormScaledJVP(x.storage, dx.storage, scale: s.storage, dScale: ds?.storage, dShift: dt?.storage,
                                   out.storage, batch: batch, rows: rows, cols: cols, eps: eps, productOperand: feedsProducts)
        var inputs = [x, dx, s]
        if let ds { inputs.append(ds) }
        if let dt { inputs.append(dt) }
        let hasDS = ds != nil, hasDT = dt != nil, n = inputs.count
        // Nested forward mode is not supported, so this op never sees tangents (no JVP rule). dt's value is not
        // needed for any cotangent, only its shape.
        return record1("rmsNormScaledTangent", inputs, out, saves: Array(0..<(hasDS ? 4 : 3)), savesOutputs: false, jvp: nil,
                       accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: n) }
            let gx = g.empty(i[0].shape), gdx = g.empty(i[0].shape)
            let gs = g.empty(i[2].shape), gds = hasDS ? g.empty(i[3].shape) : nil, gdt = hasDT ? g.empty(i[n - 1].shape) : nil
            g.backend.rmsNormScaledBackward(i[0].storage, i[1].storage, g.storage, sA: i[2].storage, sB: hasDS ? i[3].storage : nil,
                                            gx: gx.storage, gdx: gdx.storage, plus: (p[0]?.storage, p[1]?.storage),
                                            sums: (gds?.storage, gs.storage, gdt?.storage), batch: batch, rows: rows, cols: cols, eps: eps)
            var grads: [Tensor?] = [gx, gdx, adding(p[2], gs)]
            if let gds { grads.append(adding(p[3], gds)) }
            if let gdt { grads.append(adding(p[n - 1], gdt)) }
            return grads
        })
    }
}
