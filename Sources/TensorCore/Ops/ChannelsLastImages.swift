// Convolution and group normalisation of channels-last images [N, H, W, C] for inference (the VAE), each one
// kernel where the backend has one (`ChannelsLastImageBackend`) and otherwise composed from the general tensor ops
// (padding, slices, concatenation, reductions, `linear`, `scaledSum`), which run on every backend and are
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
public protocol ChannelsLastImageBackend: Backend {
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
}

extension Tensor {
    /// conv2d + bias of channels-last images self [N, H, W, C] with `weight` [O, kh * kw * C] (the K axis in
    /// kernel row, kernel column, channel order: PyTorch's [O, C, kh, kw] permuted to [O, kh, kw, C]) and bias [O];
    /// gives [N, OH, OW, O], plus `residual` of that shape when given (a residual connection, added in the same pass
    /// as the bias where the backend has a kernel). Composed, the output rows go in bands whose im2col matrix stays
    /// under `scratchLimit` elements (one row at least): that bounds the memory a large image takes, and the bands'
    /// buffers are the same sizes, so the allocator reuses them.
    public func channelsLastConvolution(weight: Tensor, bias: Tensor, kernelHeight: Int, kernelWidth: Int, stride s: Int = 1,
                                        padding p: EdgePadding = .uniform(0), plus residual: Tensor? = nil,
                                        scratchLimit: Int = 1 << 24) -> Tensor {
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
            let y = empty(outShape)
            if fused.convolution(storage, weight: weight.storage, bias: bias.storage, plus: residual?.storage, y.storage,
                                 geometry: geometry) {
                return y
            }
        }
        let y = composedConvolution(weight: weight, bias: bias, geometry: geometry, scratchLimit: scratchLimit)
        return residual.map { y + $0 } ?? y
    }

    /// channelsLastConvolution from core operations (see there).
    private func composedConvolution(weight: Tensor, bias: Tensor, geometry: ChannelsLastConvolution, scratchLimit: Int) -> Tensor {
        let (s, p, kernelHeight, kernelWidth) = (geometry.stride, geometry.padding, geometry.kernelHeight, geometry.kernelWidth)
        let (oh, ow) = (geometry.outHeight!, geometry.outWidth!)
        if geometry.isPointwise { return linear(weight, bias: bias) }
        // Zero padding, grown at the bottom and right to multiples of the stride (rows and columns no tap reads),
        // so that `im2colRows` can split each side into blocks of `s`.
        func roundedUp(_ v: Int) -> Int { (v + s - 1) / s * s }
        let (n, h, w) = (shape[0], shape[1], shape[2])
        let hq = roundedUp(h + p.top + p.bottom), wq = roundedUp(w + p.left + p.right)
        let padded = padded(axis: 1, before: p.top, total: hq).padded(axis: 2, before: p.left, total: wq)
        let bandRows = Swift.max(1, scratchLimit / Swift.max(n * ow * weight.shape[1], 1))
        if bandRows >= oh {
            return padded.im2colRows(kernelHeight: kernelHeight, kernelWidth: kernelWidth, stride: s, rows: oh, columns: ow)
                .linear(weight, bias: bias)
        }
        let bands = Swift.stride(from: 0, to: oh, by: bandRows).map { first in
            let rows = Swift.min(bandRows, oh - first)
            // The padded rows the band's windows cover, in whole blocks of s rows.
            let span = Swift.min(hq - first * s, roundedUp((rows - 1) * s + kernelHeight))
            return padded.slice(axis: 1, start: first * s, length: span)
                .im2colRows(kernelHeight: kernelHeight, kernelWidth: kernelWidth, stride: s, rows: rows, columns: ow)
                .linear(weight, bias: bias)
        }
        return concat(bands, axis: 1)
    }

    /// The im2col matrix [N, rows, columns, kh * kw * C] of a padded input [N, H, W, C] whose H and W are multiples
    /// of the stride: output pixel (oy, ox) holds the window at (oy * s, ox * s). A reshape to
    /// [N, H / s, s, W / s, s, C] turns every kernel tap into plain slices (tap i of a side reads blocks
    /// i / s ..< i / s + rows at phase i % s); the taps of a row are joined along the channels first, then the
    /// rows, which gives the (kernel row, kernel column, channel) order of the weight.
    private func im2colRows(kernelHeight: Int, kernelWidth: Int, stride s: Int, rows oh: Int, columns ow: Int) -> Tensor {
        let (n, hq, wq, c) = (shape[0], shape[1], shape[2], shape[3])
        let blocks = reshaped([n, hq / s, s, wq / s, s, c])
        let rowsOfTaps = concat((0..<kernelWidth).map { j in
            blocks.slice(axis: 3, start: j / s, length: ow).slice(axis: 4, start: j % s, length: 1).reshaped([n, hq / s, s, ow, c])
        }, axis: 4)
        return concat((0..<kernelHeight).map { i in
            rowsOfTaps.slice(axis: 1, start: i / s, length: oh).slice(axis: 2, start: i % s, length: 1)
                .reshaped([n, oh, ow, kernelWidth * c])
        }, axis: 3)
    }

    /// Group normalisation of self [N, ..., C] (any pixel axes in between), as PyTorch's GroupNorm: per image and
    /// group of `C / groups` consecutive channels, (x - mean) / sqrt(var + eps) with the biased variance over the
    /// group's channels and pixels, then the per-channel weight and bias [C]; then SiLU when `silu`. `feedsProducts`:
    /// the result is a convolution's operand (see ChannelsLastImageBackend.groupNorm).
    public func groupNormalized(groups: Int, weight: Tensor, bias: Tensor, eps: Double, silu: Bool = false,
                                feedsProducts: Bool = false) -> Tensor {
        let n = shape[0], c = shape[rank - 1], perGroup = c / Swift.max(groups, 1)
        precondition(rank >= 2 && groups >= 1 && c % groups == 0 && weight.shape == [c] && bias.shape == [c],
                     "groupNormalized: input \(shape), weight \(weight.shape) and bias \(bias.shape) for \(groups) groups")
        checkSameDType(weight, "groupNormalized")
        checkSameDType(bias, "groupNormalized")
        if !isDifferentiated([self, weight, bias]), let fused = backend as? any ChannelsLastImageBackend {
            let y = empty(shape)
            if fused.groupNorm(storage, weight: weight.storage, bias: bias.storage, y.storage, images: n,
                               pixels: count / Swift.max(n * c, 1), channels: c, groups: groups, eps: eps, silu: silu,
                               feedsProducts: feedsProducts) {
                return y
            }
        }
        let grouped = reshaped([n, -1, groups, perGroup])
        let centered = grouped - grouped.mean(axes: [1, 3], keepDims: true)
        let inverseStd = (centered.square().mean(axes: [1, 3], keepDims: true) + eps).rsqrt()
        // The inverse std and the weight fold into one factor per image and channel, so normalising and the
        // affine map are one pass over the pixels: centered * factor + bias.
        let factor = (inverseStd * weight.reshaped([1, 1, groups, perGroup])).reshaped([n, 1, c])
        let shift = bias.reshaped([1, 1, c]).broadcast(to: [n, 1, c])
        let y = Tensor.scaledSum(centered.reshaped([n, -1, c]), factor, plus: shift).reshaped(shape)
        return silu ? y.silu() : y
    }
}
