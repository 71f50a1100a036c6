import TensorCore
import Formats

/// The encoder's output distribution of the latents (diffusers' DiagonalGaussianDistribution), each tensor
/// [N, latent channels, H / f, W / f] for images [N, C, H, W] and the downsampling factor f.
public struct LatentPosterior {
    public let mean: Tensor
    /// The log variance, clamped to [-30, 20] as diffusers clamps it.
    public let logVariance: Tensor
    /// exp(logVariance / 2).
    public let std: Tensor
}

/// diffusers' `AutoencoderKL` (Stability's SD-VAE and its relatives), inference only, on any backend: images
/// in [-1, 1] to the latent posterior and latents back to images, NCHW at the interface as in PyTorch.
/// Internally the images are channels-last (see ImageLayers.swift).
public final class AutoencoderKL {
    public let config: VAEConfig
    private let encoder: VAEEncoder, decoder: VAEDecoder
    private let quantConv: Conv2D?, postQuantConv: Conv2D?

    /// The names and shapes of every parameter `config` implies, in diffusers' current key scheme.
    public static func parameterShapes(_ config: VAEConfig) -> ParameterShapes {
        let l = config.latentChannels
        return VAEEncoder.shapes(config)
            + (config.useQuantConv ? Conv2D.shapes("quant_conv", in: 2 * l, out: 2 * l, kernel: 1) : [])
            + (config.usePostQuantConv ? Conv2D.shapes("post_quant_conv", in: l, out: l, kernel: 1) : [])
            + VAEDecoder.shapes(config)
    }

    /// A model from parameters that already match `parameterShapes(config)` (names and shapes), all on one device.
    public init(config: VAEConfig, parameters p: ParameterSet) {
        for (name, shape) in Self.parameterShapes(config) {
            precondition(p.contains(name) && p[name].shape == shape, "AutoencoderKL: parameter \(name) missing or not of shape \(shape)")
        }
        self.config = config
        encoder = VAEEncoder(p, config)
        decoder = VAEDecoder(p, config)
        quantConv = config.useQuantConv ? Conv2D(p, "quant_conv") : nil
        postQuantConv = config.usePostQuantConv ? Conv2D(p, "post_quant_conv") : nil
    }

    /// The posterior of the latents of `images` [N, in channels, H, W] with values in [-1, 1]. H and W must be at
    /// least the downsampling factor (each downsampler needs two rows and columns); sizes that are not multiples
    /// of it round down at every halving, as in diffusers.
    public func encode(_ images: Tensor) throws -> LatentPosterior {
        let f = config.downsamplingFactor
        guard images.rank == 4, images.shape[1] == config.inChannels, images.shape[0] >= 1,
              images.shape[2] >= f, images.shape[3] >= f else {
            throw ModelError("images of shape \(Checkpoint.shapeText(images.shape)) do not fit this VAE, which encodes "
                             + "[N, \(config.inChannels), H, W] with H and W at least \(f)")
        }
        return withoutGrad {
            var moments = encoder(images.permuted([0, 2, 3, 1]))
            if let quantConv { moments = quantConv(moments) }
            let halves = moments.permuted([0, 3, 1, 2]).chunked(2, axis: 1)
            func constant(_ v: Double) -> Tensor { Tensor.full(v, shape: [], dtype: images.dtype, on: images.device) }
            let logVariance = halves[1].maximum(constant(-30)).minimum(constant(20))
            return LatentPosterior(mean: halves[0], logVariance: logVariance, std: (logVariance * 0.5).exp())
        }
    }

    /// Images [N, out channels, H * f, W * f] (nominally in [-1, 1], not clamped) from latents [N, latent channels, H, W].
    public func decode(_ latents: Tensor) throws -> Tensor {
        guard latents.rank == 4, latents.shape[1] == config.latentChannels, latents.shape[0] >= 1,
              latents.shape[2] >= 1, latents.shape[3] >= 1 else {
            throw ModelError("latents of shape \(Checkpoint.shapeText(latents.shape)) do not fit this VAE, which decodes "
                             + "[N, \(config.latentChannels), H, W]")
        }
        return withoutGrad {
            var z = latents.permuted([0, 2, 3, 1])
            if let postQuantConv { z = postQuantConv(z) }
            return decoder(consume z).permuted([0, 3, 1, 2])
        }
    }
}
