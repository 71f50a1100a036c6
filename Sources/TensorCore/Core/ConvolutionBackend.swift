/// A 2-D sliding window over the last two axes of NCHW tensors: a convolution's kernel or a pooling window.
/// Padding is symmetric per axis (what Inception-v3 uses); the output size rounds down, as in PyTorch
/// and TensorFlow "VALID" / explicit padding.
public struct Window2D: Equatable, Sendable {
    public var kernelHeight: Int, kernelWidth: Int
    public var strideY: Int, strideX: Int
    public var padY: Int, padX: Int

    public init(kernelHeight: Int, kernelWidth: Int, strideY: Int = 1, strideX: Int = 1, padY: Int = 0, padX: Int = 0) {
        self.kernelHeight = kernelHeight
        self.kernelWidth = kernelWidth
        self.strideY = strideY
        self.strideX = strideX
        self.padY = padY
        self.padX = padX
    }

    /// A square kernel with one stride and one padding for both axes.
    public init(kernel: Int, stride: Int = 1, padding: Int = 0) {
        self.init(kernelHeight: kernel, kernelWidth: kernel, strideY: stride, strideX: stride, padY: padding, padX: padding)
    }

    /// Output height and width for an input of `height` x `width`, or nil when the window does not fit
    /// (or a size is not positive).
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int)? {
        guard kernelHeight >= 1, kernelWidth >= 1, strideY >= 1, strideX >= 1, padY >= 0, padX >= 0,
              height >= 1, width >= 1 else { return nil }
        let h = height + 2 * padY - kernelHeight, w = width + 2 * padX - kernelWidth
        guard h >= 0, w >= 0 else { return nil }
        return (h / strideY + 1, w / strideX + 1)
    }

    /// Whether the window is the identity for a convolution's im2col (1x1, stride 1, no padding).
    public var isPointwise: Bool {
        kernelHeight == 1 && kernelWidth == 1 && strideY == 1 && strideX == 1 && padY == 0 && padX == 0
    }
}

public enum PoolKind: Equatable, Sendable {
    /// The largest value in the window; padding never wins (it counts as -infinity).
    case max
    /// The mean over the window's elements inside the input (PyTorch's count_include_pad=False): what the
    /// FID Inception's 3x3 stride-1 pools do.
    case averageExcludingPadding
    /// The sum over the window divided by its full size, padding counted as zeros (count_include_pad=True).
    case averageIncludingPadding
}

/// The kernels that image networks used for inference need beyond `Backend`: im2col for convolutions (whose
/// products go to the backend's `matmul`), pooling, bilinear resizing and a fused bias + ReLU.
///
/// These ops are forward only: they have no JVP or VJP rules, and the tensor functions that call them
/// (Ops/Convolution.swift) refuse inputs that carry a gradient or a tangent. They exist for evaluation
/// networks (the FID Inception), which are never differentiated. All tensors are NCHW and dense.
public protocol ConvolutionBackend: Backend {
    /// Unfolds `images` images [C, H, W] of `x` into `cols`, per image a [C * kh * kw, OH * OW] matrix:
    /// row (c * kh + i) * kw + j, column oy * OW + ox holds x[c, oy * sy - py + i, ox * sx - px + j], or 0
    /// where that lies in the padding.
    func im2col(_ x: Storage, _ cols: Storage, images: Int, channels: Int, height: Int, width: Int, window: Window2D)

    /// Pools each of `planes` planes [H, W] of `x` into y [planes, OH, OW].
    func pool2d(_ kind: PoolKind, _ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, window: Window2D)

    /// Bilinear resize of `planes` planes [H, W] to [outHeight, outWidth] with the sampling of TensorFlow 1's
    /// resize_bilinear (align_corners=False, half_pixel_centers=False), which the FID Inception was defined
    /// with: output pixel (oy, ox) reads the input at (oy * H / outHeight, ox * W / outWidth), interpolating
    /// between the two nearest rows and columns, the last row or column repeated past the edge.
    func resizeBilinear(_ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, outHeight: Int, outWidth: Int)

    /// In place on y [images, channels, plane]: y = max(y + bias[channel], 0).
    func addBiasReLU(_ y: Storage, bias: Storage, images: Int, channels: Int, plane: Int)
}
