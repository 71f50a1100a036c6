extension Tensor {
    /// Matrix product of the last two axes: op(self) [..., M, K] times op(other) [..., K, N] (or [K, N],
    /// shared by every batch entry). `transposeSelf` / `transposeOther` transpose the last two axes first.
    public func matmul(_ other: Tensor, transposeSelf: Bool = false, transposeOther: Bool = false) -> Tensor {
        checkSameDType(other, "matmul")
        precondition(rank >= 2 && other.rank >= 2, "matmul needs matrices, got \(shape) and \(other.shape)")
        let (ta, tb) = (transposeSelf, transposeOther)
        let m = ta ? shape[rank - 1] : shape[rank - 2], k = ta ? shape[rank - 2] : shape[rank - 1]
        let kb = tb ? other.shape[other.rank - 1] : other.shape[other.rank - 2]
        let n = tb ? other.shape[other.rank - 2] : other.shape[other.rank - 1]
        precondition(k == kb, "matmul: inner sizes differ, \(shape)\(ta ? "^T" : "") x \(other.shape)\(tb ? "^T" : "")")
        let batchShape = Array(shape.dropLast(2))
        // A 2-D right operand with a batched left one is a weight shared by every batch entry.
        let shared = other.rank == 2 && rank > 2
        precondition(shared || other.rank == rank,
                     "matmul: ranks of \(shape) and \(other.shape) differ")
        precondition(shared || Array(other.shape.dropLast(2)) == batchShape,
                     "matmul: batch shapes \(shape) and \(other.shape) differ")
        let batch = Shape.count(batchShape)
        let y = empty(batchShape + [m, n])
        if shared && !ta {
            // A weight shared across the batch: one large product over all rows.
            backend.matmul(storage, other.storage, y.storage, batch: 1, m: batch * m, n: n, k: k,
                           transA: false, transB: tb, strideA: 0, strideB: 0, alpha: 1, beta: 0)
        } else {
            backend.matmul(storage, other.storage, y.storage, batch: batch, m: m, n: n, k: k,
                           transA: ta, transB: tb, strideA: m * k, strideB: shared ? 0 : k * n, alpha: 1, beta: 0)
        }
        return record1("matmul", [self, other], y, savesOutputs: false, jvp: { x, _, t in
            [sumTerms(t[0].map { $0.matmul(x[1], transposeSelf: ta, transposeOther: tb) },
                      t[1].map { x[0].matmul($0, transposeSelf: ta, transposeOther: tb) })]
        }) { x, _, g in
            let (a, b, g) = (x[0], x[1], g[0]!)
            let ga = ta ? b.matmul(g, transposeSelf: tb, transposeOther: true)
                        : g.matmul(b, transposeSelf: false, transposeOther: !tb)
            var gb: Tensor
            if shared {
                // Fold the batch into rows so the weight's gradient sums over it.
                let a2 = a.reshaped([-1, a.shape[a.rank - 1]]), g2 = g.reshaped([-1, n])
                precondition(!ta, "a shared right operand needs an untransposed left operand")
                gb = tb ? g2.matmul(a2, transposeSelf: true) : a2.matmul(g2, transposeSelf: true)
            } else {
                gb = tb ? g.matmul(a, transposeSelf: true, transposeOther: ta)
                        : a.matmul(g, transposeSelf: !ta, transposeOther: false)
            }
            return [ga, gb]
        }
    }
}

extension Tensor {
    /// A linear layer over the last axis: self [..., in] times the transposed weight [out, in] (PyTorch's layout)
    /// plus the bias [out] (nil: none), giving [..., out]. One primitive rather than a product and an add, so the
    /// bias goes into the product's epilogue (no separate pass over the output) and its gradient can come out of
    /// the weight gradient's product.
    public func linear(_ weight: Tensor, bias: Tensor? = nil) -> Tensor {
        let (rows, yShape) = linearOutput(weight, bias: bias, "linear")
        let outFeatures = weight.shape[0], inFeatures = weight.shape[1]
        let y = empty(yShape)
        backend.linear(storage, weight.storage, bias: bias?.storage, y.storage, rows: rows, inFeatures: inFeatures,
                       outFeatures: outFeatures)
        let hasBias = bias != nil, xShape = shape
        // The bias's value is never read by the rules, only its shape.
        return record1("linear", bias.map { [self, weight, $0] } ?? [self, weight], y, saves: [0, 1], savesOutputs: false,
                       jvp: { x, _, t in
            // d(x W^T + b) = dx W^T + x dW^T + db, the bias tangent riding on one of the products.
            let dx = t[0], dw = t[1], db = hasBias ? t[2] : nil
            let viaX = dx.map { $0.linear(x[1], bias: db) }
            let viaW = dw.map { x[0].linear($0, bias: dx == nil ? db : nil) }
            return [sumTerms(viaX, viaW) ?? db!.broadcast(to: yShape)]
        }) { x, _, g in
            guard let g = g[0] else { return Array(repeating: nil, count: hasBias ? 3 : 2) }
            let g2 = g.reshaped([rows, outFeatures])
            let gx = g2.matmul(x[1]).reshaped(xShape)
            let gw = g.empty([outFeatures, inFeatures]), gb = hasBias ? g.empty([outFeatures]) : nil
            g.backend.linearWeightGradient(x[0].storage, g.storage, gw: gw.storage, gbias: gb?.storage, rows: rows,
                                           inFeatures: inFeatures, outFeatures: outFeatures)
            return hasBias ? [gx, gw, gb] : [gx, gw]
        }
    }

    /// GELU (tanh approximation) of the linear layer, `linear(weight, bias: bias).gelu()`. Where nothing is
    /// differentiated (gradients off or no input with a gradient source, and no input carrying a tangent: sampling
    /// and the teacher passes of training) it is one backend call, which on the GPU applies the bias and the GELU
    /// in the product's epilogue rather than in a separate pass over the output. Otherwise it is `linear` then
    /// `gelu`, so the derivatives are exactly theirs.
    public func linearGELU(_ weight: Tensor, bias: Tensor? = nil) -> Tensor {
        if isDifferentiated(bias.map { [self, weight, $0] } ?? [self, weight]) { return linear(weight, bias: bias).gelu() }
        let (rows, yShape) = linearOutput(weight, bias: bias, "linearGELU")
        let y = empty(yShape)
        backend.linearGELU(storage, weight.storage, bias: bias?.storage, y.storage, rows: rows,
                           inFeatures: weight.shape[1], outFeatures: weight.shape[0])
        return y
    }

    /// Checks a linear layer's operands; the number of rows (all axes but the last) and the output shape.
    private func linearOutput(_ weight: Tensor, bias: Tensor?, _ op: String) -> (rows: Int, shape: [Int]) {
        checkSameDType(weight, op)
        precondition(rank >= 1 && weight.rank == 2 && shape[rank - 1] == weight.shape[1],
                     "\(op): input of shape \(shape) does not fit a weight of shape \(weight.shape)")
        let outFeatures = weight.shape[0]
        if let bias {
            checkSameDType(bias, op)
            precondition(bias.shape == [outFeatures], "\(op): bias of shape \(bias.shape), expected [\(outFeatures)]")
        }
        let leading = Array(shape.dropLast())
        return (Shape.count(leading), leading + [outFeatures])
    }
}

extension Tensor {
    /// Softmax over the last axis.
    public func softmax() -> Tensor {
        let cols = shape.last!
        let y = empty(shape)
        backend.softmax(storage, y.storage, rows: count / Swift.max(cols, 1), cols: cols)
        return record1("softmax", [self], y, saves: [], jvp: { _, y, t in
            [y[0] * (t[0]! - (y[0] * t[0]!).sum(axes: [-1], keepDims: true))]
        }) { _, y, g in [y[0] * (g[0]! - (g[0]! * y[0]).sum(axes: [-1], keepDims: true))] }
    }

    /// x / sqrt(mean(x^2) + eps) over the last axis (no weight).
    public func rmsNormalized(eps: Double = 1e-6) -> Tensor {
        let cols = shape.last!
        let y = empty(shape)
        backend.rmsNorm(storage, y.storage, rows: count / Swift.max(cols, 1), cols: cols, eps: eps)
        return record1("rmsNorm", [self], y, saves: [0], jvp: { x, y, t in [Tensor.rmsNormLinear(x[0], y[0], t[0]!, eps: eps)] },
                       accumulatingVJP: { x, y, g, p in [Tensor.rmsNormLinear(x[0].detached(), y[0], g[0]!, plus: p[0], eps: eps)] })
    }

    /// r (d - y mean(y d)) + c over the last axis with r = 1 / sqrt(mean(x^2) + eps), y = rmsNorm(x) and c of x's
    /// shape (nil: none): the JVP of RMS normalisation for a tangent d, and (the map being symmetric) its VJP for a
    /// cotangent d. c, a gradient already summed for x, is for VJP rules, which run undifferentiated.
    static func rmsNormLinear(_ x: Tensor, _ y: Tensor, _ d: Tensor, plus c: Tensor? = nil, eps: Double) -> Tensor {
        let cols = x.shape.last!, rows = x.count / Swift.max(cols, 1)
        if let c {
            precondition(c.count == x.count, "rmsNormLinear: c of shape \(c.shape) does not match x \(x.shape)")
            precondition(!isDifferentiated([x, y, d, c]), "rmsNormLinear: plus is for undifferentiated use (VJP rules)")
        }
        let out = x.empty(x.shape)
        x.backend.rmsNormLinear(x.storage, y.storage, d.storage, plus: c?.storage, out.storage, rows: rows, cols: cols, eps: eps)
        // Nested forward mode is not supported, so this op never sees tangents (no JVP rule).
        return record1("rmsNormLinear", [x, y, d], out, savesOutputs: false, jvp: nil, accumulatingVJP: { i, _, g, p in
            guard let g = g[0] else { return [nil, nil, nil] }
            let gx = g.empty(g.shape), gy = g.empty(g.shape), gd = g.empty(g.shape)
            g.backend.rmsNormLinearBackward(i[0].storage, i[1].storage, i[2].storage, g.storage, gx: gx.storage,
                                            gy: gy.storage, gd: gd.storage, plus: (p[0]?.storage, p[1]?.storage, p[2]?.storage),
                                            rows: rows, cols: cols, eps: eps)
            return [gx, gy, gd]
        })
    }
}

// MARK: - Random tensors

extension Tensor {
    /// Standard normal values from `rng` (the same numbers on every backend).
    public static func randomNormal(_ shape: [Int], rng: inout RandomGenerator, dtype: DType = .float32,
                                    on device: Device = .default) -> Tensor {
        random(shape, normal: true, rng: &rng, dtype: dtype, on: device)
    }

    /// Uniform values in [0, 1).
    public static func randomUniform(_ shape: [Int], rng: inout RandomGenerator, dtype: DType = .float32,
                                     on device: Device = .default) -> Tensor {
        random(shape, normal: false, rng: &rng, dtype: dtype, on: device)
    }

    private static func random(_ shape: [Int], normal: Bool, rng: inout RandomGenerator, dtype: DType,
                               on device: Device) -> Tensor {
        let n = Shape.count(shape)
        let s = device.backend.allocate(n, dtype)
        device.backend.random(s, normal: normal, seed: rng.seed, counter: rng.reserve(n))
        return Tensor(storage: s, shape: shape)
    }
}
