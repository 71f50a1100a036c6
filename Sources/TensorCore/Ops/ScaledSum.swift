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
    /// [B, 1, C]) or one row of C values shared by every row (a weight [C]).
    public func rmsNormalized(eps: Double, scale: Tensor, shift: Tensor? = nil) -> Tensor {
        let cols = shape.last!
        let batch = scale.count == cols ? 1 : shape[0]
        precondition(scale.count == batch * cols,
                     "rmsNormalized: scale of shape \(scale.shape) does not fit a tensor of shape \(shape)")
        if let shift { precondition(shift.count == scale.count, "rmsNormalized: shift \(shift.shape) does not match scale \(scale.shape)") }
        let rows = count / Swift.max(batch * cols, 1)
        let y = empty(shape)
        backend.rmsNormScaled(storage, scale: scale.storage, shift: shift?.storage, y.storage, batch: batch, rows: rows,
                              cols: cols, eps: eps)
        var inputs = [self, scale]
        if let shift { inputs.append(shift) }
        let hasShift = shift != nil, xShape = shape, scaleShape = scale.shape, shiftShape = shift?.shape
        // The rules see x as [batch, rows, cols] and the factors as [batch, cols], the layout scaledSum reads.
        func rowsView(_ t: Tensor) -> Tensor { t.reshaped([batch, rows, cols]) }
        func factorView(_ t: Tensor) -> Tensor { t.reshaped([batch, cols]) }
        // The rules recompute n = rmsNorm(x) rather than have the forward pass store it (storing it is the write
        // this op exists to avoid). The JVP is written with differentiable ops (rmsNormalized, its derivative
        // map, scaledSum), so gradients through the tangent are correct by construction. shift's value is not
        // needed for any cotangent, only its shape.
        return record1("rmsNormScaled", inputs, y, saves: [0, 1], savesOutputs: false, jvp: { i, _, d in
            let x = rowsView(i[0]), s = factorView(i[1])
            let dt = hasShift ? d[2].map(factorView) : nil
            // d(n s + t) = dn s + n ds + dt with dn = rmsNormLinear(x, n, dx).
            let n = d[0] != nil || d[1] != nil ? x.rmsNormalized(eps: eps) : nil
            let dn = d[0].map { Tensor.rmsNormLinear(x, n!, rowsView($0), eps: eps) }
            let dy: Tensor
            switch (dn, d[1].map(factorView)) {
            case let (dn?, ds?): dy = Tensor.scaledSum(dn, s, n!, ds, plus: dt)
            case let (dn?, nil): dy = Tensor.scaledSum(dn, s, plus: dt)
            case let (nil, ds?): dy = Tensor.scaledSum(n!, ds, plus: dt)
            // Only the shift has a tangent (the rule runs only when some input has one).
            case (nil, nil): dy = dt!.reshaped([batch, 1, cols]).broadcast(to: [batch, rows, cols])
            }
            return [dy.reshaped(xShape)]
        }, accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: hasShift ? 3 : 2) }
            let x = rowsView(i[0]), s = factorView(i[1]), gv = rowsView(g)
            let n = x.rmsNormalized(eps: eps)
            // The scale's cotangent sums g n over each batch entry's rows, the shift's sums g: one pass for both.
            let products: [Tensor?] = hasShift ? [n, nil] : [n]
            let sums = products.map { ($0, g.empty([batch, cols])) }
            g.backend.rowSumsOfProducts(g: gv.storage, sums.map { $0.0?.storage }, sums.map(\.1.storage),
                                        batch: batch, rows: rows, cols: cols)
            // RMSNorm's derivative map is symmetric: its VJP is the same map applied to the cotangent of n.
            let gx = Tensor.rmsNormLinear(x, n, Tensor.scaledSum(gv, s), plus: p[0].map(rowsView), eps: eps).reshaped(xShape)
            var grads: [Tensor?] = [gx, adding(p[1], sums[0].1.reshaped(scaleShape))]
            if let shiftShape { grads.append(adding(p[2], sums[1].1.reshaped(shiftShape))) }
            return grads
        })
    }
}
