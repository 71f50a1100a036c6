import TensorCore

// Convolution, group norm and nearest-neighbour upsampling on channels-last images [N, H, W, C], composed from
// TensorCore's general tensor ops (padding, slices, concatenation, reductions, `linear`, `scaledSum`), so they run
// unchanged on every backend. Channels-last because then a convolution is one `linear` (a GEMM with the bias
// in its epilogue) over an im2col matrix whose rows are pixels, and the attention's tokens are the pixels as
// they lie. Forward only: nothing here is meant to be differentiated (the VAE is frozen).

/// Zero padding of the four sides of an image.
public struct EdgePadding: Equatable, Sendable {
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

/// A 2-D convolution (no dilation or groups) with its weight rearranged once for channels-last im2col.
public struct Conv2D {
    /// [O, kh * kw * C], the K axis in (kernel row, kernel column, channel) order: the im2col column order.
    let weight: Tensor
    let bias: Tensor
    public let inChannels: Int, outChannels: Int, kernelHeight: Int, kernelWidth: Int
    /// The largest im2col matrix (elements) one product is given; larger outputs go in bands of rows.
    public var scratchLimit = 1 << 24

    /// From PyTorch's layout: weight [O, C, kh, kw], bias [O].
    public init(weight w: Tensor, bias: Tensor) {
        precondition(w.rank == 4 && bias.shape == [w.shape[0]], "Conv2D: weight \(w.shape) and bias \(bias.shape) do not fit")
        (outChannels, inChannels, kernelHeight, kernelWidth) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3])
        weight = w.permuted([0, 2, 3, 1]).reshaped([outChannels, -1])
        self.bias = bias
    }

    /// The parameter names and shapes of a convolution called `name` (PyTorch's layout).
    static func shapes(_ name: String, in c: Int, out o: Int, kernel k: Int) -> [(name: String, shape: [Int])] {
        [(name + ".weight", [o, c, k, k]), (name + ".bias", [o])]
    }

    /// The output height or width for an input side of `size` (rounding down, as PyTorch), nil when the
    /// kernel does not fit.
    static func outputSize(_ size: Int, kernel: Int, stride: Int, padding: Int) -> Int? {
        let span = size + padding - kernel
        return span >= 0 ? span / stride + 1 : nil
    }

    /// conv2d(x, weight, stride, padding) + bias for x [N, H, W, C]; gives [N, OH, OW, O]. The output rows are
    /// computed in bands whose im2col matrix stays under `scratchLimit` elements (one row at least): that bounds
    /// the memory a large image takes, and the bands' buffers are the same sizes, so the allocator reuses them.
    public func callAsFunction(_ x: Tensor, stride s: Int = 1, padding p: EdgePadding = .uniform(0)) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == inChannels, "Conv2D: input \(x.shape) for \(inChannels) input channels")
        if kernelHeight == 1 && kernelWidth == 1 && s == 1 && p == .uniform(0) {
            return x.linear(weight, bias: bias)
        }
        let (n, h, w) = (x.shape[0], x.shape[1], x.shape[2])
        guard let oh = Self.outputSize(h, kernel: kernelHeight, stride: s, padding: p.top + p.bottom),
              let ow = Self.outputSize(w, kernel: kernelWidth, stride: s, padding: p.left + p.right) else {
            preconditionFailure("Conv2D: a \(kernelHeight)x\(kernelWidth) kernel does not fit input \(x.shape) padded by \(p)")
        }
        // Zero padding, grown at the bottom and right to multiples of the stride (rows and columns no tap reads),
        // so that `columns` can split each side into blocks of `s`.
        func roundedUp(_ v: Int) -> Int { (v + s - 1) / s * s }
        let hq = roundedUp(h + p.top + p.bottom), wq = roundedUp(w + p.left + p.right)
        let padded = x.padded(axis: 1, before: p.top, total: hq).padded(axis: 2, before: p.left, total: wq)
        let bandRows = Swift.max(1, scratchLimit / Swift.max(n * ow * weight.shape[1], 1))
        if bandRows >= oh { return columns(padded, stride: s, rows: oh, columns: ow).linear(weight, bias: bias) }
        let bands = Swift.stride(from: 0, to: oh, by: bandRows).map { first in
            let rows = Swift.min(bandRows, oh - first)
            // The padded rows the band's windows cover, in whole blocks of s rows.
            let span = Swift.min(hq - first * s, roundedUp((rows - 1) * s + kernelHeight))
            return columns(padded.slice(axis: 1, start: first * s, length: span), stride: s, rows: rows, columns: ow)
                .linear(weight, bias: bias)
        }
        return concat(bands, axis: 1)
    }

    /// The im2col matrix [N, rows, columns, kh * kw * C] of a padded input [N, H, W, C] whose H and W are multiples
    /// of the stride: output pixel (oy, ox) holds the window at (oy * s, ox * s). A reshape to
    /// [N, H / s, s, W / s, s, C] turns every kernel tap into plain slices (tap i of a side reads blocks
    /// i / s ..< i / s + rows at phase i % s); the taps of a row are joined along the channels first, then the
    /// rows, which gives the (kernel row, kernel column, channel) order of `weight`.
    private func columns(_ padded: Tensor, stride s: Int, rows oh: Int, columns ow: Int) -> Tensor {
        let (n, hq, wq, c) = (padded.shape[0], padded.shape[1], padded.shape[2], padded.shape[3])
        let blocks = padded.reshaped([n, hq / s, s, wq / s, s, c])
        let rowsOfTaps = concat((0..<kernelWidth).map { j in
            blocks.slice(axis: 3, start: j / s, length: ow).slice(axis: 4, start: j % s, length: 1).reshaped([n, hq / s, s, ow, c])
        }, axis: 4)
        return concat((0..<kernelHeight).map { i in
            rowsOfTaps.slice(axis: 1, start: i / s, length: oh).slice(axis: 2, start: i % s, length: 1)
                .reshaped([n, oh, ow, kernelWidth * c])
        }, axis: 3)
    }
}

/// Group normalisation of channels-last images, as PyTorch's GroupNorm: per image and group of consecutive
/// channels, (x - mean) / sqrt(var + eps) with the biased variance over the group's channels and pixels, then
/// a per-channel weight and bias.
public struct GroupNorm {
    let weight: Tensor, bias: Tensor
    public let groups: Int
    public let eps: Double

    public init(weight: Tensor, bias: Tensor, groups: Int, eps: Double) {
        precondition(weight.rank == 1 && bias.shape == weight.shape && weight.shape[0] % groups == 0,
                     "GroupNorm: weight \(weight.shape) and bias \(bias.shape) for \(groups) groups")
        self.weight = weight
        self.bias = bias
        self.groups = groups
        self.eps = eps
    }

    static func shapes(_ name: String, channels: Int) -> [(name: String, shape: [Int])] {
        [(name + ".weight", [channels]), (name + ".bias", [channels])]
    }

    /// x [N, ..., C] (any pixel axes in between); the result has x's shape.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[x.rank - 1], perGroup = c / groups
        precondition(c == weight.shape[0], "GroupNorm: input \(x.shape) for \(weight.shape[0]) channels")
        let grouped = x.reshaped([n, -1, groups, perGroup])
        let centered = grouped - grouped.mean(axes: [1, 3], keepDims: true)
        let inverseStd = (centered.square().mean(axes: [1, 3], keepDims: true) + eps).rsqrt()
        // The inverse std and the weight fold into one factor per image and channel, so normalising and the
        // affine map are one pass over the pixels: centered * factor + bias.
        let factor = (inverseStd * weight.reshaped([1, 1, groups, perGroup])).reshaped([n, 1, c])
        let shift = bias.reshaped([1, 1, c]).broadcast(to: [n, 1, c])
        return Tensor.scaledSum(centered.reshaped([n, -1, c]), factor, plus: shift).reshaped(x.shape)
    }
}

/// Nearest-neighbour 2x upsampling of [N, H, W, C] (PyTorch's interpolate with scale_factor 2, mode "nearest":
/// output pixel (y, x) is input pixel (y / 2, x / 2)).
public func upsampledNearest2x(_ x: Tensor) -> Tensor {
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    return x.reshaped([n, h, 1, w, 1, c]).broadcast(to: [n, h, 2, w, 2, c]).reshaped([n, 2 * h, 2 * w, c])
}
