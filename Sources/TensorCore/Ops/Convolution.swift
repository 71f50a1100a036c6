/// Convolution, pooling and resizing for inference on NCHW tensors (the FID Inception network).
///
/// Forward only, on purpose: nothing here has a JVP or VJP rule, and each function stops with a message if
/// an input carries a gradient (with recording on) or a tangent, instead of silently cutting the chain.
/// The backend must implement `ConvolutionBackend` (the CPU and CUDA backends do).
extension Tensor {
    private func requireInference(_ op: String, _ others: [Tensor] = []) {
        for t in [self] + others {
            precondition(!(GradMode.isEnabled && t.requiresGrad) && t.activeTangent == nil,
                         "\(op) is forward only (inference): it has no autodiff rules; use constants or withoutGrad")
        }
    }

    private func convolutionBackend(_ op: String) -> any ConvolutionBackend {
        guard let b = backend as? any ConvolutionBackend else {
            preconditionFailure("\(op): the \(backend.name) backend has no convolution kernels")
        }
        return b
    }

    private func nchw(_ op: String) -> (n: Int, c: Int, h: Int, w: Int) {
        precondition(rank == 4, "\(op) needs an NCHW tensor, got shape \(shape)")
        return (shape[0], shape[1], shape[2], shape[3])
    }

    /// max(conv2d(self, weight) + bias, 0): self [N, C, H, W], weight [O, C, kh, kw], bias [O], no dilation
    /// or groups. Computed as im2col and the backend's matrix product (a 1x1 stride-1 convolution needs no
    /// im2col), then one pass adding the bias and clamping. The im2col matrix of a whole batch can be large
    /// (25 MB per 299x299 image in Inception's stem), so images go through in groups whose matrix stays under
    /// `scratchLimit` elements.
    public func conv2dBiasReLU(weight: Tensor, bias: Tensor, window: Window2D, scratchLimit: Int = 1 << 26) -> Tensor {
        let op = "conv2dBiasReLU"
        requireInference(op, [weight, bias])
        checkSameDType(weight, op)
        checkSameDType(bias, op)
        let (n, c, h, w) = nchw(op)
        precondition(weight.rank == 4 && weight.shape[1] == c && weight.shape[2] == window.kernelHeight
                     && weight.shape[3] == window.kernelWidth,
                     "\(op): weight \(weight.shape) does not fit input \(shape) and a \(window.kernelHeight)x\(window.kernelWidth) kernel")
        let o = weight.shape[0]
        precondition(bias.shape == [o], "\(op): bias \(bias.shape) for \(o) output channels")
        guard let (oh, ow) = window.outputSize(height: h, width: w) else {
            preconditionFailure("\(op): window \(window) does not fit an input of \(h)x\(w)")
        }
        let b = convolutionBackend(op)
        let plane = oh * ow, k = c * window.kernelHeight * window.kernelWidth
        let y = empty([n, o, oh, ow])
        if window.isPointwise {
            // The input already is the [C, H*W] matrix of each image.
            b.matmul(weight.storage, storage, y.storage, batch: n, m: o, n: plane, k: c, transA: false, transB: false,
                     strideA: 0, strideB: c * plane, alpha: 1, beta: 0)
        } else {
            let group = Swift.max(1, Swift.min(n, scratchLimit / Swift.max(k * plane, 1)))
            let inSize = c * h * w, outSize = o * plane
            var start = 0
            while start < n {
                let m = Swift.min(group, n - start)
                let whole = m == n
                var xs = storage
                if !whole {
                    xs = b.allocate(m * inSize, dtype)
                    b.copy(storage, StridedView(offset: start * inSize, strides: [1]), xs, StridedView(strides: [1]),
                           shape: [m * inSize])
                }
                let cols = b.allocate(m * k * plane, dtype)
                b.im2col(xs, cols, images: m, channels: c, height: h, width: w, window: window)
                let ys = whole ? y.storage : b.allocate(m * outSize, dtype)
                b.matmul(weight.storage, cols, ys, batch: m, m: o, n: plane, k: k, transA: false, transB: false,
                         strideA: 0, strideB: k * plane, alpha: 1, beta: 0)
                if !whole {
                    b.copy(ys, StridedView(strides: [1]), y.storage, StridedView(offset: start * outSize, strides: [1]),
                           shape: [m * outSize])
                }
                start += m
            }
        }
        b.addBiasReLU(y.storage, bias: bias.storage, images: n, channels: o, plane: plane)
        return y
    }

    /// Max or average pooling of every plane of an NCHW tensor.
    public func pooled(_ kind: PoolKind, window: Window2D) -> Tensor {
        let op = "pooled"
        requireInference(op)
        let (n, c, h, w) = nchw(op)
        guard let (oh, ow) = window.outputSize(height: h, width: w) else {
            preconditionFailure("\(op): window \(window) does not fit an input of \(h)x\(w)")
        }
        precondition(window.padY < window.kernelHeight && window.padX < window.kernelWidth,
                     "\(op): padding \(window.padY),\(window.padX) must be smaller than the window, or a window could hold no input")
        let y = empty([n, c, oh, ow])
        convolutionBackend(op).pool2d(kind, storage, y.storage, planes: n * c, height: h, width: w, window: window)
        return y
    }

    /// Every plane of an NCHW tensor resized to `height` x `width` with TensorFlow 1's bilinear sampling
    /// (see `ConvolutionBackend.resizeBilinear`). The same size returns the tensor itself (that sampling is
    /// then the identity).
    public func resizedBilinear(height oh: Int, width ow: Int) -> Tensor {
        let op = "resizedBilinear"
        requireInference(op)
        let (n, c, h, w) = nchw(op)
        precondition(oh >= 1 && ow >= 1, "\(op): output size \(oh)x\(ow) must be positive")
        if oh == h && ow == w { return self }
        let y = empty([n, c, oh, ow])
        convolutionBackend(op).resizeBilinear(storage, y.storage, planes: n * c, height: h, width: w, outHeight: oh, outWidth: ow)
        return y
    }
}
