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
    /// the weight gradient's product. `products`: who reads the result and its tangent (`ProductUse`).
    public func linear(_ weight: Tensor, bias: Tensor? = nil, products: ProductUse = .none) -> Tensor {
        let (rows, yShape) = linearOutput(weight, bias: bias, "linear")
        let outFeatures = weight.shape[0], inFeatures = weight.shape[1]
        guard let fused = backend as? any LinearBackend else {
            let product = reshaped([rows, inFeatures]).matmul(weight, transposeOther: true)
            return (bias.map { product + $0 } ?? product).reshaped(yShape)
        }
        let y = output(yShape, for: products)
        fused.linear(storage, weight.storage, bias: bias?.storage, y.storage, rows: rows, inFeatures: inFeatures,
                     outFeatures: outFeatures)
        let hasBias = bias != nil, xShape = shape
        // The bias's value is never read by the rules, only its shape; the input's only by the weight gradient's product.
        return record1("linear", bias.map { [self, weight, $0] } ?? [self, weight], y, saves: [0, 1], productOperands: [0],
                       savesOutputs: false, jvp: { x, _, t in
            // d(x W^T + b) = dx W^T + x dW^T + db, the bias tangent riding on one of the products.
            let dx = t[0], dw = t[1], db = hasBias ? t[2] : nil
            // The tangent is read as the output is, unless two terms are added up.
            let viaX = dx.map { $0.linear(x[1], bias: db, products: dw == nil ? products : .none) }
            let viaW = dw.map { x[0].linear($0, bias: dx == nil ? db : nil) }
            return [sumTerms(viaX, viaW) ?? db!.broadcast(to: yShape)]
        }, accumulatingVJP: { x, _, g, p in
            guard let g = g[0] else { return Array(repeating: nil, count: hasBias ? 3 : 2) }
            // The input's cotangent only where something before it is differentiated (a network's input is not):
            // on the first layer that product is as large as the weight's. An input other layers read too (DiT's
            // q, k and v read one norm's output) gets the sum so far added by the product itself where it can.
            var gx: Tensor? = nil
            if x[0].gradSource != nil {
                if let partial = p[0],
                   let sum = fused.linearInputGradient(g.storage, x[1].storage, plus: partial.storage, rows: rows,
                                                       inFeatures: inFeatures, outFeatures: outFeatures) {
                    gx = Tensor(storage: sum, shape: xShape)
                } else {
                    gx = adding(p[0], g.reshaped([rows, outFeatures]).matmul(x[1]).reshaped(xShape))
                }
            }
            let gw = g.empty([outFeatures, inFeatures]), gb = hasBias ? g.empty([outFeatures]) : nil
            fused.linearWeightGradient(x[0].storage, g.storage, gw: gw.storage, gbias: gb?.storage, rows: rows,
                                       inFeatures: inFeatures, outFeatures: outFeatures)
            let grads = [gx, adding(p[1], gw)]
            return hasBias ? grads + [adding(p[2], gb!)] : grads
        })
    }

    /// GELU (tanh approximation) of the linear layer, `linear(weight, bias: bias).gelu()`. Where nothing is
    /// differentiated (gradients off or no input with a gradient source, and no input carrying a tangent: sampling
    /// and the teacher passes of training) it is one backend call, which on the GPU applies the bias and the GELU
    /// in the product's epilogue rather than in a separate pass over the output. Otherwise it is `linear` then
    /// `gelu`, so the derivatives are exactly theirs; with fused activations the pre-activation (and its tangent) is
    /// read by the activation's kernels alone and its cotangents by the linear layer's products alone, so under
    /// low-precision products both are kept as the products' copies alone. `products`: who reads the result
    /// (`ProductUse`).
    public func linearGELU(_ weight: Tensor, bias: Tensor? = nil, products: ProductUse = .none) -> Tensor {
        guard !isDifferentiated(bias.map { [self, weight, $0] } ?? [self, weight]),
              let fused = backend as? any LinearBackend else {
            guard let activations = backend as? any ActivationBackend else { return linear(weight, bias: bias).gelu(products: products) }
            return linear(weight, bias: bias, products: .only).activation(.gelu, activations, products: products, inputCotangents: .only)
        }
        let (rows, yShape) = linearOutput(weight, bias: bias, "linearGELU")
        let y = output(yShape, for: products)
        fused.linearGELU(storage, weight.storage, bias: bias?.storage, y.storage, rows: rows,
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

/// Linear layers with the bias (and GELU) folded into the matrix product (a GEMM epilogue where the device has
/// one) instead of separate passes over the output. Without them `Tensor.linear` is composed from `matmul` and a
/// broadcast add. `linearByGEMM` and `linearWeightGradientByGEMM` implement the first two from core kernels, for
/// a backend whose products have no epilogue.
public protocol LinearBackend: Backend {
    /// y = x W^T + bias for x [rows, inFeatures], W [outFeatures, inFeatures] and y [rows, outFeatures], the bias
    /// [outFeatures] added to every row (nil: none). A linear layer's product and bias add in one kernel.
    func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int)
    /// The weight's and the bias's cotangents of `linear` for the cotangent g [rows, outFeatures] of y:
    /// gw = g^T x [outFeatures, inFeatures] and gbias = the column sums of g [outFeatures] (nil: not wanted).
    func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                              outFeatures: Int)
    /// gx = g W + plus (a new storage) for the cotangent g [rows, outFeatures] of `linear`'s output, W [outFeatures,
    /// inFeatures] and a gradient already summed for its input (`plus`, [rows, inFeatures]) in one product that reads
    /// `plus` as the matrix it adds to (cuBLASLt's C beside D), instead of a product and then a pass that sums. nil where
    /// the device has no such product: the caller multiplies and adds.
    func linearInputGradient(_ g: Storage, _ w: Storage, plus: Storage, rows: Int, inFeatures: Int, outFeatures: Int) -> Storage?
    /// y = gelu(x W^T + bias), GELU with the tanh approximation: `linear` with the activation in the same kernel
    /// where the device has one (not differentiated: Tensor.linearGELU composes `linear` and `gelu` when it is). y may
    /// be a low-precision storage (`ProductUse.only`).
    func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int)
}

/// A backend whose matrix products read a narrower copy of float32 operands (bf16 products on the GPU) can keep a
/// tensor that from then on is only a product's operand as that copy alone (`Tensor.savedAsProductOperand`), and can
/// make outputs that hold nothing else (low-precision activations: `lowPrecisionStorage`).
public protocol ProductOperandBackend: Backend {
    /// A storage of `x`'s count and dtype that holds only the copy its products read (made now if `x` has none, `x`
    /// itself if it holds nothing else), which any other kernel refuses; nil where products read `x`'s own values
    /// (`x` must then be kept).
    func keepingOperandCopyOnly(_ x: Storage) -> Storage?
    /// A storage of `count` elements of `dtype` that holds only the low-precision copy the products read, for the
    /// output of a kernel that can write it so (`ProductUse.only`), read by nothing but products and such kernels; nil
    /// where the backend keeps full values (no low-precision products now, or a dtype they do not narrow).
    func lowPrecisionStorage(count: Int, dtype: DType) -> Storage?
    /// A new storage with the full-precision values of a low-precision one (`lowPrecisionStorage`); nil for a storage
    /// that holds its full values.
    func fullPrecision(_ x: Storage) -> Storage?
}

/// Who reads an op's output, a hint for backends whose products read low-precision operand copies: nothing but
/// matrix products (`only`: the output may hold that copy alone), products among other kernels (`also`: the kernel
/// writes the copy beside the values, saving a conversion pass), or not products (`none`).
public enum ProductUse: Sendable {
    case none, also, only

    var feedsProducts: Bool { self != .none }
}

extension Backend {
    /// A new storage for a kernel to write: under `ProductUse.only` a low-precision one where the backend keeps them
    /// (`ProductOperandBackend.lowPrecisionStorage`).
    func outputStorage(count: Int, dtype: DType, for use: ProductUse) -> Storage {
        if use == .only, let products = self as? any ProductOperandBackend,
           let s = products.lowPrecisionStorage(count: count, dtype: dtype) { return s }
        return allocate(count, dtype)
    }
}

extension Tensor {
    /// An empty tensor of `shape` (this tensor's dtype and backend) for a kernel to write, as `Backend.outputStorage`.
    func output(_ shape: [Int], for use: ProductUse) -> Tensor {
        Tensor(storage: backend.outputStorage(count: Shape.count(shape), dtype: dtype, for: use), shape: shape)
    }

    /// This tensor held as the narrower copy its backend's products read and nothing else (`ProductOperandBackend`:
    /// bfloat16 under the GPU's bf16 products), for a constant that only matrix products and convolutions read from
    /// now on (a frozen network's weights): half the resident bytes. Itself where the products read full values.
    /// Every other kernel refuses the result, so what holds it runs under the same product precision only.
    public func keptAsProductOperandOnly() -> Tensor {
        guard let products = backend as? any ProductOperandBackend, let copy = products.keepingOperandCopyOnly(storage) else {
            return self
        }
        return Tensor(storage: copy, shape: shape)
    }
}

extension LinearBackend {
    /// `linearGELU` as `linear`, then the GELU kernel in place (elementwise, so y may be its own input): the same
    /// kernels, hence the same values, as Tensor.linear followed by Tensor.gelu.
    public func linearThenGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                               outFeatures: Int) {
        linear(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
        unary(.gelu, y, y)
    }
}

extension Backend {
    /// `linear` from core kernels: the bias broadcast into y, then a GEMM that adds the product to it.
    public func linearByGEMM(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                             outFeatures: Int) {
        if let bias {
            copy(bias, StridedView(strides: [0, 1]), y, StridedView(strides: [outFeatures, 1]), shape: [rows, outFeatures])
        }
        matmul(x, w, y, batch: 1, m: rows, n: outFeatures, k: inFeatures, transA: false, transB: true,
               strideA: 0, strideB: 0, alpha: 1, beta: bias == nil ? 0 : 1)
    }

    /// `linearWeightGradient` from core kernels: a GEMM and a column reduction.
    public func linearWeightGradientByGEMM(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int,
                                           inFeatures: Int, outFeatures: Int) {
        matmul(g, x, gw, batch: 1, m: outFeatures, n: inFeatures, k: rows, transA: true, transB: false,
               strideA: 0, strideB: 0, alpha: 1, beta: 0)
        if let gbias { reduce(.sum, g, gbias, outer: 1, n: rows, inner: outFeatures) }
    }
}
