// Convolution and group normalisation of channels-last images [N, H, W, C] for inference (the VAE), each one
// kernel where the backend has one (`ChannelsLastImageBackend`) and otherwise composed from the general tensor ops
// (padding, slices, row gathers, concatenation, reductions, `linear`, `scaledSum`), which run on every backend and are
// differentiable. Channels-last because then a composed convolution is one `linear` (a GEMM with the bias in its
// epilogue) over an im2col matrix whose rows are pixels, and attention's tokens are the pixels as they lie.

/// Zero padding of the four sides of an image.
public struct EdgePadding: Hashable, Sendable {
    public var top: Int, bottom: Int, left: Int, right: Int

    public init(top: Int, bottom: Int, left: Int, right: Int) {
        self.top = top
        self.bottom = bottom
        self.left = left
        self.right = right
    }

    /// The same padding on every side (PyTorch's Conv2d `padding=p`).
    public static func uniform(_ p: Int) -> EdgePadding { EdgePadding(top: p, bottom: p, left: p, right: p) }
}

/// One convolution of channels-last images (no dilation or groups): x [images, height, width, inChannels], weight
/// [outChannels, kernelHeight, kernelWidth, inChannels], output [images, outHeight, outWidth, outChannels].
public struct ChannelsLastConvolution: Hashable, Sendable {
    public var images: Int, height: Int, width: Int, inChannels: Int, outChannels: Int
    public var kernelHeight: Int, kernelWidth: Int, stride: Int
    public var padding: EdgePadding

    public init(images: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, kernelHeight: Int, kernelWidth: Int,
                stride: Int, padding: EdgePadding) {
        (self.images, self.height, self.width, self.inChannels, self.outChannels) = (images, height, width, inChannels, outChannels)
        (self.kernelHeight, self.kernelWidth, self.stride, self.padding) = (kernelHeight, kernelWidth, stride, padding)
    }

    /// The output height or width for an input side of `size` padded by `padding` in all (rounding down, as
    /// PyTorch), nil when the kernel does not fit.
    public static func outputSize(_ size: Int, kernel: Int, stride: Int, padding: Int) -> Int? {
        let span = size + padding - kernel
        return span >= 0 ? span / stride + 1 : nil
    }

    public var outHeight: Int? { Self.outputSize(height, kernel: kernelHeight, stride: stride, padding: padding.top + padding.bottom) }
    public var outWidth: Int? { Self.outputSize(width, kernel: kernelWidth, stride: stride, padding: padding.left + padding.right) }

    /// A 1x1 stride-1 convolution without padding: a linear layer over the pixels.
    public var isPointwise: Bool { kernelHeight == 1 && kernelWidth == 1 && stride == 1 && padding == .uniform(0) }
}

/// Fused kernels for channels-last images at inference. Without them (or where a method returns false) the tensor
/// functions below compose the same results from core operations.
///
/// Low-precision activations: where the backend's matrix products read a narrower copy of float32 operands (bf16
/// products on CUDA), an output that only these kernels and products will read may be a storage holding that copy
/// alone (`ProductOperandBackend.lowPrecisionStorage`), as a half-precision network keeps its activations. Every
/// method here takes such storages for x, residual and y; every other kernel refuses them, and `fullPrecision` widens
/// one where a float32 reader comes next.
public protocol ChannelsLastImageBackend: ProductOperandBackend {
    /// y [N, OH, OW, O] = the cross-correlation of x [N, H, W, C] with weight [O, kh, kw, C] over x zero-padded as
    /// `geometry.padding` says, plus bias [O] on every pixel, plus `residual` (y's shape; nil: none). false where this
    /// backend cannot compute this one now (its library is missing, or the sizes are beyond it): nothing is written
    /// and the caller composes it.
    func convolution(_ x: Storage, weight: Storage, bias: Storage, plus residual: Storage?, _ y: Storage,
                     geometry: ChannelsLastConvolution) -> Bool
    /// y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c] over x [images, pixels, channels], mean and the biased
    /// variance per image and group of `channels / groups` consecutive channels, then SiLU (y / (1 + exp(-y))) when
    /// `silu`. `feedsProducts`: y is a convolution's or matrix product's operand (a hint for backends that keep
    /// low-precision operand copies). false where this backend has no kernel for these sizes (nothing written).
    func groupNorm(_ x: Storage, weight: Storage, bias: Storage, _ y: Storage, images: Int, pixels: Int, channels: Int,
                   groups: Int, eps: Double, silu: Bool, feedsProducts: Bool) -> Bool
    /// y [N, 2H, 2W, C]: output pixel (oy, ox) is input pixel (oy / 2, ox / 2) of x [N, H, W, C]. false where this
    /// backend has no kernel for it (nothing written).
    func upsampleNearest2x(_ x: Storage, _ y: Storage, images: Int, height: Int, width: Int, channels: Int) -> Bool
}

extension Tensor {
    /// conv2d + bias of channels-last images self [N, H, W, C] with `weight` [O, kh * kw * C] (the K axis in
    /// kernel row, kernel column, channel order: PyTorch's [O, C, kh, kw] permuted to [O, kh, kw, C]) and bias [O];
    /// gives [N, OH, OW, O], plus `residual` of that shape when given (a residual connection, added in the same pass
    /// as the bias where the backend has a kernel). Composed, the output rows go in bands whose im2col matrix stays
    /// under `scratchLimit` elements (one row at least): that bounds the memory a large image takes, and the bands'
    /// buffers are the same sizes, so the allocator reuses them.
    ///
    /// `lowPrecisionOutput`: the result is read by nothing but these channels-last functions and matrix products, so
    /// it may hold only their low-precision copy (see ChannelsLastImageBackend).
    public func channelsLastConvolution(weight: Tensor, bias: Tensor, kernelHeight: Int, kernelWidth: Int, stride s: Int = 1,
                                        padding p: EdgePadding = .uniform(0), plus residual: Tensor? = nil,
                                        scratchLimit: Int = 1 << 24, lowPrecisionOutput: Bool = false) -> Tensor {
        precondition(rank == 4 && weight.rank == 2 && weight.shape[1] == kernelHeight * kernelWidth * shape[3]
                     && bias.shape == [weight.shape[0]],
                     "channelsLastConvolution: input \(shape), weight \(weight.shape) and bias \(bias.shape) for a \(kernelHeight)x\(kernelWidth) kernel do not fit")
        checkSameDType(weight, "channelsLastConvolution")
        checkSameDType(bias, "channelsLastConvolution")
        let geometry = ChannelsLastConvolution(images: shape[0], height: shape[1], width: shape[2], inChannels: shape[3],
                                               outChannels: weight.shape[0], kernelHeight: kernelHeight, kernelWidth: kernelWidth,
                                               stride: s, padding: p)
        guard let oh = geometry.outHeight, let ow = geometry.outWidth else {
            preconditionFailure("channelsLastConvolution: a \(kernelHeight)x\(kernelWidth) kernel does not fit input \(shape) padded by \(p)")
        }
        let outShape = [shape[0], oh, ow, weight.shape[0]]
        if let residual {
            precondition(residual.shape == outShape, "channelsLastConvolution: residual \(residual.shape) for an output \(outShape)")
            checkSameDType(residual, "channelsLastConvolution")
        }
        if !isDifferentiated([self, weight, bias] + (residual.map { [$0] } ?? [])),
           let fused = backend as? any ChannelsLastImageBackend {
            let y = output(outShape, for: lowPrecisionOutput ? .only : .none)
            if fused.convolution(storage, weight: weight.storage, bias: bias.storage, plus: residual?.storage, y.storage,
                                 geometry: geometry) {
                return y
            }
        }
        let y = fullPrecisionValues().composedConvolution(weight: weight, bias: bias, geometry: geometry, scratchLimit: scratchLimit)
        return residual.map { y + $0.fullPrecisionValues() } ?? y
    }

    /// channelsLastConvolution from core operations (see there).
    private func composedConvolution(weight: Tensor, bias: Tensor, geometry: ChannelsLastConvolution, scratchLimit: Int) -> Tensor {
        let (s, p, kernelHeight, kernelWidth) = (geometry.stride, geometry.padding, geometry.kernelHeight, geometry.kernelWidth)
        let (oh, ow) = (geometry.outHeight!, geometry.outWidth!)
        if geometry.isPointwise { return linear(weight, bias: bias) }
        let (n, h, w) = (shape[0], shape[1], shape[2])
        let paddedWidth = w + p.left + p.right
        let padded = padded(axis: 1, before: p.top, total: h + p.top + p.bottom).padded(axis: 2, before: p.left, total: paddedWidth)
        // The padded rows a band of `rows` output rows reads.
        func span(_ rows: Int) -> Int { (rows - 1) * s + kernelHeight }
        var bandRows = Swift.max(1, scratchLimit / Swift.max(n * ow * weight.shape[1], 1))
        // The pixels a band gathers from are numbered in the input's dtype: exact in float32 up to 2^24 (see im2colRows).
        while bandRows > 1 && n * span(bandRows) * paddedWidth > Self.exactPixelIndices { bandRows = (bandRows + 1) / 2 }
        if bandRows >= oh {
            return (consume padded).im2colRows(kernelHeight: kernelHeight, kernelWidth: kernelWidth, stride: s, rows: oh, columns: ow)
                .linear(weight, bias: bias)
        }
        let bands = Swift.stride(from: 0, to: oh, by: bandRows).map { first in
            let rows = Swift.min(bandRows, oh - first)
            return padded.slice(axis: 1, start: first * s, length: span(rows))
                .im2colRows(kernelHeight: kernelHeight, kernelWidth: kernelWidth, stride: s, rows: rows, columns: ow)
                .linear(weight, bias: bias)
        }
        return concat(bands, axis: 1)
    }

    /// Pixels past this many are not numbered exactly by float32 indices (`gatherRows` takes the table's dtype).
    private static let exactPixelIndices = 1 << 24

    /// The im2col matrix [N, rows, columns, kh * kw * C] of a padded input [N, H, W, C]: output pixel (oy, ox)
    /// holds the window at (oy * s, ox * s), its taps in (kernel row, kernel column) order and each tap's channels
    /// together, which is the K order of the weight. One gather of the input's pixels (rows of C values), so that
    /// the matrix is the only large tensor made: no slices of the input beside it to join.
    private func im2colRows(kernelHeight: Int, kernelWidth: Int, stride s: Int, rows oh: Int, columns ow: Int) -> Tensor {
        let (n, h, w, c) = (shape[0], shape[1], shape[2], shape[3])
        let read = n * ((oh - 1) * s + kernelHeight) * w
        precondition(read <= Self.exactPixelIndices, "im2colRows: \(read) pixels are more than float32 indices number exactly")
        // Numbered in the input's dtype, which `gatherRows` reads its indices in.
        func numbered<T: BinaryFloatingPoint>(_: T.Type) -> [T] {
            var pixels: [T] = []
            pixels.reserveCapacity(n * oh * ow * kernelHeight * kernelWidth)
            for image in 0..<n {
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        for i in 0..<kernelHeight {
                            let row = (image * h + oy * s + i) * w + ox * s
                            for j in 0..<kernelWidth { pixels.append(T(row + j)) }
                        }
                    }
                }
            }
            return pixels
        }
        let count = n * oh * ow * kernelHeight * kernelWidth
        let indices = dtype == .float32 ? Tensor(numbered(Float.self), shape: [count], on: device)
            : Tensor(numbered(Double.self), shape: [count], dtype: dtype, on: device)
        return reshaped([n * h * w, c]).gatherRows(indices).reshaped([n, oh, ow, kernelHeight * kernelWidth * c])
    }

    /// Group normalisation of self [N, ..., C] (any pixel axes in between), as PyTorch's GroupNorm: per image and
    /// group of `C / groups` consecutive channels, (x - mean) / sqrt(var + eps) with the biased variance over the
    /// group's channels and pixels, then the per-channel weight and bias [C]; then SiLU when `silu`. `feedsProducts`:
    /// the result is read by nothing but convolutions and matrix products: it may hold only their low-precision copy
    /// (see ChannelsLastImageBackend).
    public func groupNormalized(groups: Int, weight: Tensor, bias: Tensor, eps: Double, silu: Bool = false,
                                feedsProducts: Bool = false) -> Tensor {
        let n = shape[0], c = shape[rank - 1], perGroup = c / Swift.max(groups, 1)
        precondition(rank >= 2 && groups >= 1 && c % groups == 0 && weight.shape == [c] && bias.shape == [c],
                     "groupNormalized: input \(shape), weight \(weight.shape) and bias \(bias.shape) for \(groups) groups")
        checkSameDType(weight, "groupNormalized")
        checkSameDType(bias, "groupNormalized")
        if !isDifferentiated([self, weight, bias]), let fused = backend as? any ChannelsLastImageBackend {
            let y = output(shape, for: feedsProducts ? .only : .none)
            if fused.groupNorm(storage, weight: weight.storage, bias: bias.storage, y.storage, images: n,
                               pixels: count / Swift.max(n * c, 1), channels: c, groups: groups, eps: eps, silu: silu,
                               feedsProducts: feedsProducts) {
                return y
            }
        }
        let grouped = fullPrecisionValues().reshaped([n, -1, groups, perGroup])
        let centered = grouped - grouped.mean(axes: [1, 3], keepDims: true)
        let inverseStd = (centered.square().mean(axes: [1, 3], keepDims: true) + eps).rsqrt()
        // The inverse std and the weight fold into one factor per image and channel, so normalising and the
        // affine map are one pass over the pixels: centered * factor + bias.
        let factor = (inverseStd * weight.reshaped([1, 1, groups, perGroup])).reshaped([n, 1, c])
        let shift = bias.reshaped([1, 1, c]).broadcast(to: [n, 1, c])
        // `centered` goes once y is made, before the SiLU's output is.
        let y = Tensor.scaledSum((consume centered).reshaped([n, -1, c]), factor, plus: shift).reshaped(shape)
        return silu ? y.silu() : y
    }

    /// Nearest-neighbour 2x upsampling of channels-last images self [N, H, W, C] (PyTorch's interpolate with
    /// scale_factor 2, mode "nearest": output pixel (y, x) is input pixel (y / 2, x / 2)). `lowPrecisionOutput` as for
    /// `channelsLastConvolution`.
    public func channelsLastUpsampledNearest2x(lowPrecisionOutput: Bool = false) -> Tensor {
        precondition(rank == 4, "channelsLastUpsampledNearest2x: input \(shape) is not [N, H, W, C]")
        let (n, h, w, c) = (shape[0], shape[1], shape[2], shape[3])
        if !isDifferentiated([self]), let fused = backend as? any ChannelsLastImageBackend {
            let y = output([n, 2 * h, 2 * w, c], for: lowPrecisionOutput ? .only : .none)
            if fused.upsampleNearest2x(storage, y.storage, images: n, height: h, width: w, channels: c) { return y }
        }
        return fullPrecisionValues().reshaped([n, h, 1, w, 1, c]).broadcast(to: [n, h, 2, w, 2, c]).reshaped([n, 2 * h, 2 * w, c])
    }

    /// This tensor with its full-precision values: itself, or for one that holds only low-precision values (see
    /// ChannelsLastImageBackend) a widened copy, for a reader that takes float32 only.
    public func fullPrecisionValues() -> Tensor {
        guard let products = backend as? any ProductOperandBackend, let wide = products.fullPrecision(storage) else { return self }
        return Tensor(storage: wide, shape: shape)
    }
}
