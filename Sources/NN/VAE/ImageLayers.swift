import TensorCore

// The VAE's image layers on channels-last images [N, H, W, C]: convolution and group norm hold their parameters
// and call TensorCore's channels-last functions (Ops/ChannelsLastImages.swift: one kernel each where the backend
// has one, else composed from the general tensor ops), and nearest-neighbour upsampling. Forward only: nothing
// here is meant to be differentiated (the VAE is frozen).

/// A 2-D convolution (no dilation or groups) with its weight rearranged once for channels-last images.
public struct Conv2D {
    /// [O, kh * kw * C], the K axis in (kernel row, kernel column, channel) order. Made under bf16 products on the
    /// GPU, it holds only its bfloat16 values (the convolutions read nothing else; `Tensor.keptAsProductOperandOnly`),
    /// so such a layer runs under bf16 products only.
    let weight: Tensor
    let bias: Tensor
    public let inChannels: Int, outChannels: Int, kernelHeight: Int, kernelWidth: Int
    /// Where the convolution is composed: the largest im2col matrix (elements) one product is given; larger
    /// outputs go in bands of rows.
    public var scratchLimit = 1 << 24

    /// From PyTorch's layout: weight [O, C, kh, kw], bias [O].
    public init(weight w: Tensor, bias: Tensor) {
        precondition(w.rank == 4 && bias.shape == [w.shape[0]], "Conv2D: weight \(w.shape) and bias \(bias.shape) do not fit")
        (outChannels, inChannels, kernelHeight, kernelWidth) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3])
        weight = w.permuted([0, 2, 3, 1]).reshaped([outChannels, -1]).keptAsProductOperandOnly()
        self.bias = bias
    }

    /// The parameter names and shapes of a convolution called `name` (PyTorch's layout).
    static func shapes(_ name: String, in c: Int, out o: Int, kernel k: Int) -> [(name: String, shape: [Int])] {
        [(name + ".weight", [o, c, k, k]), (name + ".bias", [o])]
    }

    /// conv2d(x, weight, stride, padding) + bias for x [N, H, W, C]; gives [N, OH, OW, O], plus `residual` (of that
    /// shape) when given. `intermediate`: the result is read only by the VAE's image layers (convolutions, group norms,
    /// upsampling, the mid-block attention), so it may hold low-precision values alone (Tensor.channelsLastConvolution's
    /// `lowPrecisionOutput`).
    public func callAsFunction(_ x: Tensor, stride s: Int = 1, padding p: EdgePadding = .uniform(0), plus residual: Tensor? = nil,
                               intermediate: Bool = false) -> Tensor {
        precondition(x.rank == 4 && x.shape[3] == inChannels, "Conv2D: input \(x.shape) for \(inChannels) input channels")
        return x.channelsLastConvolution(weight: weight, bias: bias, kernelHeight: kernelHeight, kernelWidth: kernelWidth,
                                         stride: s, padding: p, plus: residual, scratchLimit: scratchLimit,
                                         lowPrecisionOutput: intermediate)
    }
}

/// Group normalisation of channels-last images, as PyTorch's GroupNorm (see Tensor.groupNormalized).
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

    /// x [N, ..., C] (any pixel axes in between); the result has x's shape. `silu`: SiLU of the result, in the
    /// same kernel where the backend has one (the norm then feeds a convolution only, so the result may hold
    /// low-precision values alone: Tensor.groupNormalized's `feedsProducts`).
    public func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        precondition(x.shape[x.rank - 1] == weight.shape[0], "GroupNorm: input \(x.shape) for \(weight.shape[0]) channels")
        return x.groupNormalized(groups: groups, weight: weight, bias: bias, eps: eps, silu: silu, feedsProducts: silu)
    }
}

/// Nearest-neighbour 2x upsampling of [N, H, W, C] (PyTorch's interpolate with scale_factor 2, mode "nearest":
/// output pixel (y, x) is input pixel (y / 2, x / 2)). `intermediate` as for Conv2D.
public func upsampledNearest2x(_ x: Tensor, intermediate: Bool = false) -> Tensor {
    x.channelsLastUpsampledNearest2x(lowPrecisionOutput: intermediate)
}
