import TensorCore

// The building blocks of diffusers' AutoencoderKL (Encoder / Decoder of `autoencoders/vae.py` with the
// `DownEncoderBlock2D`, `UpDecoderBlock2D` and `UNetMidBlock2D` they use), on channels-last images, with the
// parameter names and shapes of diffusers' current key scheme next to the code that reads them.
//
// Inference memory: each block takes its input as `consuming` and ends every large tensor (`consume`) as soon as
// its last use is done, so that a storage goes the moment nothing needs it rather than at the end of the block or
// of its caller. The order of the operations and their results are those of diffusers; only lifetimes change.
//
// Precision: every convolution but the encoder's and decoder's last is `intermediate` (read only by the image
// layers), as are the SiLU group norms and the upsampling, so that under bf16 products on CUDA the activations between
// layers hold bfloat16 values alone (ChannelsLastImageBackend); the mid-block attention widens its input to float32
// (a small tensor at the lowest resolution), and the encoder's moments and the decoder's image come out float32.

/// A list of parameter names and shapes in PyTorch's layouts.
public typealias ParameterShapes = [(name: String, shape: [Int])]

/// Every group norm of the VAE (resnets, mid-block attention, output norms) uses this epsilon.
let vaeNormEpsilon = 1e-6

extension Conv2D {
    init(_ p: ParameterSet, _ name: String) {
        self.init(weight: p[name + ".weight"], bias: p[name + ".bias"])
    }
}

extension GroupNorm {
    init(_ p: ParameterSet, _ name: String, groups: Int) {
        self.init(weight: p[name + ".weight"], bias: p[name + ".bias"], groups: groups, eps: vaeNormEpsilon)
    }
}

/// diffusers' ResnetBlock2D without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), the
/// residual through a 1x1 `conv_shortcut` when the width changes (the output scale factor is 1 in the VAE).
struct ResnetBlock {
    let norm1: GroupNorm, conv1: Conv2D, norm2: GroupNorm, conv2: Conv2D
    let shortcut: Conv2D?

    static func shapes(_ name: String, in c: Int, out o: Int) -> ParameterShapes {
        GroupNorm.shapes(name + ".norm1", channels: c) + Conv2D.shapes(name + ".conv1", in: c, out: o, kernel: 3)
            + GroupNorm.shapes(name + ".norm2", channels: o) + Conv2D.shapes(name + ".conv2", in: o, out: o, kernel: 3)
            + (c == o ? [] : Conv2D.shapes(name + ".conv_shortcut", in: c, out: o, kernel: 1))
    }

    init(_ p: ParameterSet, _ name: String, groups: Int) {
        norm1 = GroupNorm(p, name + ".norm1", groups: groups)
        conv1 = Conv2D(p, name + ".conv1")
        norm2 = GroupNorm(p, name + ".norm2", groups: groups)
        conv2 = Conv2D(p, name + ".conv2")
        shortcut = conv1.inChannels == conv1.outChannels ? nil : Conv2D(p, name + ".conv_shortcut")
    }

    func callAsFunction(_ x: consuming Tensor) -> Tensor {
        let h = conv1(norm1(x, silu: true), padding: .uniform(1), intermediate: true)
        // The residual made (or taken) before norm2 so that the input goes first: then the input, h, norm2's
        // output and conv2's are never all alive at once.
        let residual: Tensor
        if let shortcut { residual = shortcut(consume x, intermediate: true) } else { residual = consume x }
        let normalized = norm2(consume h, silu: true)
        // The residual is added in the convolution's bias pass where the backend has one (y + r equals r + y).
        return conv2(consume normalized, padding: .uniform(1), plus: consume residual, intermediate: true)
    }
}

/// The mid block's self-attention (diffusers' Attention with one head as wide as the block, group norm
/// first, a residual connection and an output rescale factor of 1): x + out(attention(q, k, v)) over the pixels,
/// q, k, v linear maps of the normalised pixels, the scores scaled by 1 / sqrt(channels).
struct MidBlockAttention {
    /// The projections' names in diffusers' current key scheme, in the order query, key, value, output.
    static let projectionNames = ["to_q", "to_k", "to_v", "to_out.0"]

    let norm: GroupNorm
    let projections: [(weight: Tensor, bias: Tensor)]

    static func shapes(_ name: String, channels c: Int) -> ParameterShapes {
        GroupNorm.shapes(name + ".group_norm", channels: c)
            + projectionNames.flatMap { [("\(name).\($0).weight", [c, c]), ("\(name).\($0).bias", [c])] }
    }

    init(_ p: ParameterSet, _ name: String, groups: Int) {
        norm = GroupNorm(p, name + ".group_norm", groups: groups)
        projections = Self.projectionNames.map { (p["\(name).\($0).weight"], p["\(name).\($0).bias"]) }
    }

    func callAsFunction(_ input: consuming Tensor) -> Tensor {
        // Widened once here: the projections' outputs, the attention and the residual sum are float32.
        let x = (consume input).fullPrecisionValues()
        let tokens = norm(x).reshaped([x.shape[0], -1, x.shape[3]])
        func project(_ t: Tensor, _ i: Int) -> Tensor { t.linear(projections[i].weight, bias: projections[i].bias) }
        let query = project(tokens, 0), key = project(tokens, 1), value = project(consume tokens, 2)
        // Scores, softmax and weighted sum as separate ops, whose products are large matrix products on every
        // backend: the fused attention primitive spreads its work over heads (this block has one, as wide as the
        // block: 512 in the SD-VAE, any width in general), and its CUDA kernels stop at head width 512.
        let attended = decomposedAttention(consume query, consume key, consume value)
        let output = project(consume attended, 3).reshaped(x.shape)
        return x + output
    }
}

/// UNetMidBlock2D with one attention layer: resnet, attention (unless the config leaves it out), resnet.
struct MidBlock {
    let first: ResnetBlock, attention: MidBlockAttention?, second: ResnetBlock

    static func shapes(_ name: String, channels c: Int, attention: Bool) -> ParameterShapes {
        ResnetBlock.shapes(name + ".resnets.0", in: c, out: c)
            + (attention ? MidBlockAttention.shapes(name + ".attentions.0", channels: c) : [])
            + ResnetBlock.shapes(name + ".resnets.1", in: c, out: c)
    }

    init(_ p: ParameterSet, _ name: String, groups: Int, attention: Bool) {
        first = ResnetBlock(p, name + ".resnets.0", groups: groups)
        self.attention = attention ? MidBlockAttention(p, name + ".attentions.0", groups: groups) : nil
        second = ResnetBlock(p, name + ".resnets.1", groups: groups)
    }

    func callAsFunction(_ x: consuming Tensor) -> Tensor {
        var h = first(consume x)
        if let attention { h = attention(consume h) }
        return second(consume h)
    }
}

/// One resolution of the encoder or decoder: its resnets, then the change of resolution (none in the last
/// block): a 3x3 stride-2 convolution after padding the right and bottom by one pixel (the encoder's
/// Downsample2D with padding 0), or nearest-neighbour 2x upsampling and a 3x3 convolution (the decoder's Upsample2D).
struct ResolutionBlock {
    enum Resampling { case down, up }

    let resnets: [ResnetBlock]
    let resample: (conv: Conv2D, kind: Resampling)?

    /// Parameter names and shapes of `layers` resnets from `c` to `o` channels, then the resampler if any.
    static func shapes(_ name: String, in c: Int, out o: Int, layers: Int, resampling: Resampling?) -> ParameterShapes {
        var shapes = (0..<layers).flatMap { ResnetBlock.shapes("\(name).resnets.\($0)", in: $0 == 0 ? c : o, out: o) }
        if let kind = resampling {
            shapes += Conv2D.shapes(name + (kind == .down ? ".downsamplers.0.conv" : ".upsamplers.0.conv"), in: o, out: o, kernel: 3)
        }
        return shapes
    }

    init(_ p: ParameterSet, _ name: String, layers: Int, groups: Int, resampling: Resampling?) {
        resnets = (0..<layers).map { ResnetBlock(p, "\(name).resnets.\($0)", groups: groups) }
        resample = resampling.map { kind in
            (Conv2D(p, name + (kind == .down ? ".downsamplers.0.conv" : ".upsamplers.0.conv")), kind)
        }
    }

    func callAsFunction(_ x: consuming Tensor) -> Tensor {
        var h = consume x
        for resnet in resnets { h = resnet(consume h) }
        switch resample {
        case nil: return h
        case let (conv, .down)?:
            return conv(consume h, stride: 2, padding: EdgePadding(top: 0, bottom: 1, left: 0, right: 1), intermediate: true)
        case let (conv, .up)?:
            // The input goes once it is upsampled, before the convolution's output is made.
            return conv(upsampledNearest2x(consume h, intermediate: true), padding: .uniform(1), intermediate: true)
        }
    }
}

/// The encoder: conv_in, the down blocks, the mid block, group norm, SiLU, conv_out to 2 x latent channels
/// (the posterior's means and log variances).
struct VAEEncoder {
    let convIn: Conv2D, blocks: [ResolutionBlock], mid: MidBlock, normOut: GroupNorm, convOut: Conv2D

    static func shapes(_ c: VAEConfig) -> ParameterShapes {
        let w = c.blockOutChannels
        var shapes = Conv2D.shapes("encoder.conv_in", in: c.inChannels, out: w[0], kernel: 3)
        for i in w.indices {
            shapes += ResolutionBlock.shapes("encoder.down_blocks.\(i)", in: w[max(i - 1, 0)], out: w[i], layers: c.layersPerBlock,
                                             resampling: i == w.count - 1 ? nil : .down)
        }
        return shapes + MidBlock.shapes("encoder.mid_block", channels: w.last!, attention: c.midBlockAttention)
            + GroupNorm.shapes("encoder.conv_norm_out", channels: w.last!)
            + Conv2D.shapes("encoder.conv_out", in: w.last!, out: 2 * c.latentChannels, kernel: 3)
    }

    init(_ p: ParameterSet, _ c: VAEConfig) {
        let blockCount = c.blockOutChannels.count
        convIn = Conv2D(p, "encoder.conv_in")
        blocks = (0..<blockCount).map { i in
            ResolutionBlock(p, "encoder.down_blocks.\(i)", layers: c.layersPerBlock, groups: c.normGroups,
                            resampling: i == blockCount - 1 ? nil : .down)
        }
        mid = MidBlock(p, "encoder.mid_block", groups: c.normGroups, attention: c.midBlockAttention)
        normOut = GroupNorm(p, "encoder.conv_norm_out", groups: c.normGroups)
        convOut = Conv2D(p, "encoder.conv_out")
    }

    func callAsFunction(_ x: consuming Tensor) -> Tensor {
        var h = convIn(consume x, padding: .uniform(1), intermediate: true)
        for block in blocks { h = block(consume h) }
        h = mid(consume h)
        return convOut(normOut(consume h, silu: true), padding: .uniform(1))
    }
}

/// The decoder: conv_in, the mid block, the up blocks (widths in reverse, one more resnet each than the
/// encoder's), group norm, SiLU, conv_out to the image channels.
struct VAEDecoder {
    let convIn: Conv2D, mid: MidBlock, blocks: [ResolutionBlock], normOut: GroupNorm, convOut: Conv2D

    static func shapes(_ c: VAEConfig) -> ParameterShapes {
        let w = Array(c.blockOutChannels.reversed())
        var shapes = Conv2D.shapes("decoder.conv_in", in: c.latentChannels, out: w[0], kernel: 3)
            + MidBlock.shapes("decoder.mid_block", channels: w[0], attention: c.midBlockAttention)
        for i in w.indices {
            shapes += ResolutionBlock.shapes("decoder.up_blocks.\(i)", in: w[max(i - 1, 0)], out: w[i], layers: c.layersPerBlock + 1,
                                             resampling: i == w.count - 1 ? nil : .up)
        }
        return shapes + GroupNorm.shapes("decoder.conv_norm_out", channels: w.last!)
            + Conv2D.shapes("decoder.conv_out", in: w.last!, out: c.outChannels, kernel: 3)
    }

    init(_ p: ParameterSet, _ c: VAEConfig) {
        let blockCount = c.blockOutChannels.count
        convIn = Conv2D(p, "decoder.conv_in")
        mid = MidBlock(p, "decoder.mid_block", groups: c.normGroups, attention: c.midBlockAttention)
        blocks = (0..<blockCount).map { i in
            ResolutionBlock(p, "decoder.up_blocks.\(i)", layers: c.layersPerBlock + 1, groups: c.normGroups,
                            resampling: i == blockCount - 1 ? nil : .up)
        }
        normOut = GroupNorm(p, "decoder.conv_norm_out", groups: c.normGroups)
        convOut = Conv2D(p, "decoder.conv_out")
    }

    func callAsFunction(_ z: consuming Tensor) -> Tensor {
        var h = mid(convIn(consume z, padding: .uniform(1), intermediate: true))
        for block in blocks { h = block(consume h) }
        return convOut(normOut(consume h, silu: true), padding: .uniform(1))
    }
}
