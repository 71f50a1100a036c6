import TensorCore

// The elementwise core operations and the fused activations (ActivationBackend) on Elementwise.cu's kernels.
extension CUDABackend: ActivationBackend {
    public func unary(_ op: UnaryOp, _ x: Storage, _ y: Storage) {
        let n = x.count
        guard n > 0 else { return }
        kernels(ElementwiseKernels.self, x.dtype).unary(op).launch(on: self, grid: (blocks(packs(n, x.dtype)), 1),
                                                                   x: addr(x), y: addr(y), n: n)
    }

    // The fused activations read an input kept as its bf16 values alone (`lowPrecisionStorage`: a linear layer's
    // output that only they read) from those, and write such outputs (`ProductUse.only`) and cotangents (`inputCotangents`
    // of `Tensor.activation`) as their bf16 copies alone.
    public func activation(_ op: UnaryOp, _ x: Storage, _ y: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (xf, x16) = float32OrBF16(x), (yf, y16) = outputAndCopy(y)
        kernels(ElementwiseKernels.self, x.dtype).activationTangent(op)
            .launch(on: self, grid: (blocks(packs(n, x.dtype)), 1), x: xf, t: 0, x16: x16, t16: 0, y: yf, ty: 0, y16: y16,
                    ty16: 0, n: n)
    }

    public func activationWithTangent(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ y: Storage, _ ty: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (xf, x16) = float32OrBF16(x), (tf, t16) = float32OrBF16(t)
        let (yf, y16) = outputAndCopy(y), (tyf, ty16) = outputAndCopy(ty)
        kernels(ElementwiseKernels.self, x.dtype).activationTangent(op)
            .launch(on: self, grid: (blocks(packs(n, x.dtype)), 1), x: xf, t: tf, x16: x16, t16: t16, y: yf, ty: tyf, y16: y16,
                    ty16: ty16, n: n)
    }

    public func activationWithTangentBackward(_ op: UnaryOp, _ x: Storage, _ t: Storage, _ gy: Storage?, _ gty: Storage?,
                                              _ gx: Storage, _ gt: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (xf, x16) = float32OrBF16(x), (tf, t16) = float32OrBF16(t)
        let (gxf, gx16) = outputAndCopy(gx), (gtf, gt16) = outputAndCopy(gt)
        kernels(ElementwiseKernels.self, x.dtype).activationTangentBackward(op)
            .launch(on: self, grid: (blocks(packs(n, x.dtype)), 1), x: xf, t: tf, x16: x16, t16: t16, gy: addr(gy),
                    gty: addr(gty), gx: gxf, gt: gtf, gx16: gx16, gt16: gt16, n: n)
    }

    public func activationBackward(_ op: UnaryOp, _ x: Storage, _ g: Storage, _ gx: Storage) {
        let n = x.count
        guard n > 0 else { return }
        beginBF16Call()
        let (xf, x16) = float32OrBF16(x), (gxf, gx16) = outputAndCopy(gx)
        kernels(ElementwiseKernels.self, x.dtype).activationBackward(op)
            .launch(on: self, grid: (blocks(packs(n, x.dtype)), 1), x: xf, x16: x16, g: addr(g), gx: gxf, gx16: gx16, n: n)
    }

    public func affine(_ x: Storage, _ y: Storage, a: Double, b: Double) {
        let n = x.count
        guard n > 0 else { return }
        kernels(ElementwiseKernels.self, x.dtype).affine.launch(on: self, grid: (blocks(packs(n, x.dtype)), 1), x: addr(x),
                                                                y: addr(y), n: n, a: a, b: b)
    }

    public func binary(_ op: BinaryOp, _ a: Storage, _ av: StridedView, _ b: Storage, _ bv: StridedView,
                       _ y: Storage, shape: [Int]) {
        let total = Shape.count(shape)
        guard total > 0 else { return }
        let dtype = y.dtype, es = dtype.byteSize
        let k = kernels(ElementwiseKernels.self, dtype)
        let (cs, st) = Shape.collapse(shape: shape, strides: [av.strides, bv.strides, Shape.contiguousStrides(shape)])
        let pa = addr(a) + UInt64(av.offset * es), pb = addr(b) + UInt64(bv.offset * es), py = addr(y)
        if cs.count == 1 {
            let ia = st[0][0], ib = st[1][0]
            let mode = ia == 1 && ib == 1 ? 0 : (ia == 0 && ib == 1 ? 1 : (ia == 1 && ib == 0 ? 2 : -1))
            if mode >= 0 && (mode == 1 || pa % 16 == 0) && (mode == 2 || pb % 16 == 0) {
                k.binaryDense(op, mode: mode).launch(on: self, grid: (blocks(packs(total, dtype)), 1), a: pa, b: pb, y: py, n: total)
                return
            }
        }
        precondition(cs.count <= 8, "CUDA binary: more than 8 axes after collapsing (\(shape))")
        let inner = cs[cs.count - 1], ia = st[0][cs.count - 1], ib = st[1][cs.count - 1]
        if cs.count >= 2 && inner >= 32 && (ia == 0 || ia == 1) && (ib == 0 || ib == 1) {
            // Rows along a contiguous or broadcast inner axis (bias adds, per-row scales, modulation).
            let rows = total / inner, (blocksX, chunks, chunk) = rowGrid(rows: rows, inner: inner)
            k.binaryRows(op).launch(on: self, grid: (blocksX, chunks), block: (32, 8),
                                    v: KernelView(shape: Array(cs.dropLast()), strides0: Array(st[0].dropLast()),
                                                  strides1: Array(st[1].dropLast())),
                                    a: pa, b: pb, y: py, rows: rows, inner: inner, chunk: chunk, ia: ia, ib: ib)
            return
        }
        k.binaryStrided(op, indexBits: fits32(total, cs, [st[0], st[1]]) ? 32 : 64)
            .launch(on: self, grid: (blocks(total), 1), v: KernelView(shape: cs, strides0: st[0], strides1: st[1]),
                    a: pa, b: pb, y: py, n: total)
    }

    public func select(_ cond: Storage, _ a: Storage, _ b: Storage, _ y: Storage) {
        let n = y.count
        guard n > 0 else { return }
        kernels(ElementwiseKernels.self, y.dtype).select.launch(on: self, grid: (blocks(packs(n, y.dtype)), 1), c: addr(cond),
                                                                a: addr(a), b: addr(b), y: addr(y), n: n)
    }
}

// Kernel choice by operation. The instances are the ones Elementwise.cu declares; a missing one stops with its
// name (KernelInventoryTests checks without a GPU that every operation has its kernels).
extension ElementwiseKernels {
    @inline(__always) func unary(_ op: UnaryOp) -> Unary {
        guard let k = unary.first(where: { $0.op == op }) else { preconditionFailure("Elementwise.cu has no unary kernel for \(op)") }
        return k
    }

    func activationTangent(_ op: UnaryOp) -> ActTangent {
        guard let k = actTangent.first(where: { $0.op == op }) else { preconditionFailure("Elementwise.cu has no act_tangent kernel for \(op)") }
        return k
    }

    func activationTangentBackward(_ op: UnaryOp) -> ActTangentBwd {
        guard let k = actTangentBwd.first(where: { $0.op == op }) else {
            preconditionFailure("Elementwise.cu has no act_tangent_bwd kernel for \(op)")
        }
        return k
    }

    func activationBackward(_ op: UnaryOp) -> ActBwd {
        guard let k = actBwd.first(where: { $0.op == op }) else { preconditionFailure("Elementwise.cu has no act_bwd kernel for \(op)") }
        return k
    }

    @inline(__always) func binaryDense(_ op: BinaryOp, mode: Int) -> BinaryDense {
        guard let k = binaryDense.first(where: { $0.op == op && $0.mode == mode }) else {
            preconditionFailure("Elementwise.cu has no binary_dense kernel for \(op), mode \(mode)")
        }
        return k
    }

    @inline(__always) func binaryRows(_ op: BinaryOp) -> BinaryRows {
        guard let k = binaryRows.first(where: { $0.op == op }) else { preconditionFailure("Elementwise.cu has no binary_rows kernel for \(op)") }
        return k
    }

    @inline(__always) func binaryStrided(_ op: BinaryOp, indexBits: Int) -> BinaryStrided {
        guard let k = binaryStrided.first(where: { $0.op == op && $0.indexBits == indexBits }) else {
            preconditionFailure("Elementwise.cu has no binary_strided kernel for \(op), \(indexBits)-bit indices")
        }
        return k
    }
}
