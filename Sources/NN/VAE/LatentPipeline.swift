import TensorCore

// The conversions around the VAE in the official latent pipeline (TVM.md, "The latent pipeline"; the
// official `training/encoders.py`): 8-bit pixels to the VAE's input, decoded images to 8-bit pixels, and the
// per-channel normalisation between the VAE's raw latents and the latents the network trains on. Each is
// computed in float32 with the official code's operations and rounding.

/// 8-bit pixels to the VAE's input, `x / 127.5 - 1` in float32 (a division, not a product with 1 / 127.5,
/// which can differ in the last bit), as a tensor of `shape` (NCHW) on `device`.
public func vaeInput(pixels: [UInt8], shape: [Int], on device: Device = .default) -> Tensor {
    precondition(pixels.count == Shape.count(shape), "vaeInput: \(pixels.count) pixels for shape \(shape)")
    return Tensor(pixels.map { Float($0) / 127.5 - 1 }, shape: shape, on: device)
}

/// Decoded images (nominally in [-1, 1]) to 8-bit pixels in the same layout, as the official code does:
/// `(x * 0.5 + 0.5).clamp(0, 1) * 255` in float32, then PyTorch's cast to uint8, which truncates (so only
/// x >= 1 gives 255). A NaN has no pixel value: it is an error naming its flat index.
public func pixels(fromDecoded images: Tensor) throws -> [UInt8] {
    let values = images.floats
    var out = [UInt8](repeating: 0, count: values.count)
    for (i, x) in values.enumerated() {
        guard !x.isNaN else { throw ModelError("decoded images of shape \(Checkpoint.shapeText(images.shape)) hold a NaN at flat index \(i)") }
        out[i] = UInt8(Swift.min(Swift.max(x * 0.5 + 0.5, 0), 1) * 255)
    }
    return out
}

/// The per-channel affine map from the VAE's raw latents to the network's latents, `z * scale + bias`, with
/// `scale = final_std / raw_std` and `bias = final_mean - raw_mean * scale` computed in float32 as the
/// official StabilityVAEEncoder computes them. `raw_mean` and `raw_std` are the dataset's latent statistics
/// (the official `dataset_tool.py getstats`).
public struct LatentNormalization: Equatable, Sendable {
    public let scale: [Float]
    public let bias: [Float]

    public init(rawMean: [Double], rawStd: [Double], finalMean: Double = 0, finalStd: Double = 1) {
        precondition(rawMean.count == rawStd.count && !rawMean.isEmpty, "LatentNormalization: one mean and one std per channel")
        let scale = rawStd.map { Float(finalStd) / Float($0) }
        self.scale = scale
        bias = zip(rawMean, scale).map { Float(finalMean) - Float($0) * $1 }
    }

    /// The raw statistics (`raw_mean`, `raw_std`) of the SD-VAE latents of ImageNet 256x256, as the official
    /// configs `im256_w2` and `im256_w1p75` give them.
    public static let imageNet256Statistics = (mean: [0.86488, -0.27787343, 0.21616915, 0.3738409],
                                               std: [4.85503674, 5.31922414, 3.93725398, 3.9870003])
    /// Those of ImageNet 512x512 (EDM2's), as the official `im512_*` configs give them.
    public static let imageNet512Statistics = (mean: [1.56, -0.695, 0.483, 0.729], std: [5.27, 5.91, 4.21, 4.31])
    /// The official ImageNet 256x256 configs: those statistics normalised to mean 0 and std 1.
    public static let imageNet256 = LatentNormalization(rawMean: imageNet256Statistics.mean, rawStd: imageNet256Statistics.std)
    /// The official ImageNet 512x512 configs, normalised to mean 0 and std 1.
    public static let imageNet512 = LatentNormalization(rawMean: imageNet512Statistics.mean, rawStd: imageNet512Statistics.std)

    public var channels: Int { scale.count }

    /// `raw * scale + bias` per channel of NCHW latents (a product, then a sum, each rounded, as in PyTorch).
    public func normalized(_ raw: Tensor) -> Tensor {
        let (s, b) = factors(for: raw)
        return raw * s + b
    }

    /// The inverse, `(z - bias) / scale` per channel, as the official decoding does before the VAE.
    public func denormalized(_ z: Tensor) -> Tensor {
        let (s, b) = factors(for: z)
        return (z - b) / s
    }

    private func factors(for x: Tensor) -> (scale: Tensor, bias: Tensor) {
        precondition(x.rank == 4 && x.shape[1] == channels,
                     "LatentNormalization: latents of shape \(x.shape) for \(channels) channels (NCHW)")
        return (Tensor(scale, shape: [1, channels, 1, 1], on: x.device).cast(x.dtype),
                Tensor(bias, shape: [1, channels, 1, 1], on: x.device).cast(x.dtype))
    }
}
