/// Fused scaled sums (adaLN modulation, gated residuals) and their factors' cotangents. Without them
/// `Tensor.scaledSum` is composed from broadcasting products and sums.
public protocol ScaledSumBackend: Backend {
    /// y = a s + b t + c over [batch, rows, cols] with s and t of shape [batch, cols] (one value per column,
    /// shared by a batch entry's rows): adaLN modulation and gated residuals in one pass. b/t and c may be nil;
    /// c is [batch, rows, cols] when `cFull`, else [batch, cols].
    func scaledSum(a: Storage, s: Storage, b: Storage?, t: Storage?, c: Storage?, cFull: Bool, y: Storage,
                   batch: Int, rows: Int, cols: Int)
    /// outs[k][b, c] = sum over r of g[b, r, c] * xs[k][b, r, c] (xs[k] nil: of g alone), all in one pass over g:
    /// the cotangents of scaledSum's per-column inputs. At most three outputs.
    func rowSumsOfProducts(g: Storage, _ xs: [Storage?], _ outs: [Storage], batch: Int, rows: Int, cols: Int)
}

extension Tensor {
    /// a * s + b * t + c for a, b of shape [B, ..., C] and per-column factors s, t of shape [B, 1, C] (any shape
    /// of B * C values), broadcast over the middle axes; c is either a's shape or s's. adaLN modulation
    /// (x * (1 + scale) + shift) and gated residuals (x + gate * y) are one kernel each, and so is their JVP
    /// (ta * s + a * ts + tc), which would otherwise be five full-size passes. `products`: who reads the result
    /// (`ProductUse`); `cotangents`: who reads a's and b's cotangents: `.only` where a and b are linear layers'
    /// outputs (made with `.only`, which this op then reads as the products would) and their cotangents go to those
    /// layers' products alone, so that under low-precision products those are kept as the products' copies alone.
    public static func scaledSum(_ a: Tensor, _ s: Tensor, _ b: Tensor? = nil, _ t: Tensor? = nil, plus c: Tensor? = nil,
                                 products: ProductUse = .none, cotangents: ProductUse = .none) -> Tensor {
        let batch = s.shape[0], cols = a.shape.last!
        precondition(s.count == batch * cols && a.shape[0] == batch,
                     "scaledSum: factor of shape \(s.shape) does not fit a tensor of shape \(a.shape)")
        precondition((b == nil) == (t == nil), "scaledSum: b and t go together")
        if let b, let t { precondition(b.shape == a.shape && t.count == s.count, "scaledSum: b \(b.shape) / t \(t.shape) do not match a, s") }
        let cFull = c.map { $0.count == a.count } ?? false
        if let c { precondition(c.count == a.count || c.count == s.count, "scaledSum: c of shape \(c.shape) fits neither a nor s") }
        let rows = a.count / Swift.max(batch * cols, 1)
        guard let fused = a.backend as? any ScaledSumBackend else {
            let full = [batch, rows, cols], factor = [batch, 1, cols]
            var y = a.reshaped(full) * s.reshaped(factor)
            if let b, let t { y = y + b.reshaped(full) * t.reshaped(factor) }
            if let c { y = y + c.reshaped(cFull ? full : factor) }
            return y.reshaped(a.shape)
        }
        let y = a.output(a.shape, for: products)
        fused.scaledSum(a: a.storage, s: s.storage, b: b?.storage, t: t?.storage, c: c?.storage, cFull: cFull,
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
                let last = i + 2 >= terms.count
                acc = scaledSum(terms[i].0, terms[i].1, second?.0, second?.1, plus: acc, products: last ? products : .none,
                                cotangents: cotangents)
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
            fused.rowSumsOfProducts(g: g.storage, products.map { $0?.storage }, outs.map(\.storage),
                                    batch: batch, rows: rows, cols: cols)
            // a's and b's cotangents (full size) take their partials in the same pass; the rest add them.
            var grads: [Tensor?] = [scaledSum(g, x[1], plus: p[0], products: cotangents), adding(p[1], outs[0])]
            if hasB { grads += [scaledSum(g, x[3], plus: p[2], products: cotangents), adding(p[3], outs[1])] }
            if hasC { grads.append(adding(p[n - 1], cBroadcast ? outs.last!.reshaped(x[n - 1].shape) : g)) }
            return grads
        })
    }
}
