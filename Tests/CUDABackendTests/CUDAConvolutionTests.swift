import XCTest
import TensorCore
import CUDABackend
import Formats
import Eval

/// The CUDA side of ConvolutionBackend (im2col, pooling, resize, bias + ReLU) and the FID Inception on the GPU,
/// against the CPU backend.
final class CUDAConvolutionTests: XCTestCase {
    let dtypes: [DType] = [.float32, .float64]

    let windows: [Window2D] = [
        Window2D(kernel: 3), Window2D(kernel: 3, stride: 2), Window2D(kernel: 3, padding: 1), Window2D(kernel: 5, padding: 2),
        Window2D(kernelHeight: 1, kernelWidth: 7, padX: 3), Window2D(kernelHeight: 7, kernelWidth: 1, padY: 3),
        Window2D(kernelHeight: 3, kernelWidth: 2, strideY: 2, strideX: 3, padY: 1, padX: 2), Window2D(kernel: 8, stride: 8),
    ]

    func testIm2colMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        let (n, c, h, w) = (3, 5, 17, 19)
        for dtype in dtypes {
            for g in windows {
                let (oh, ow) = g.outputSize(height: h, width: w)!
                let rows = c * g.kernelHeight * g.kernelWidth
                compareWithCPU("im2col \(g)", cuda, dtype: dtype, tolerance: 0, inputs: [r.normals(n * c * h * w)],
                               outputs: [(n * rows * oh * ow, nil)]) { b, i, o in
                    (b as! any ConvolutionBackend).im2col(i[0], o[0], images: n, channels: c, height: h, width: w, window: g)
                }
            }
        }
    }

    func testPoolingMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        let (planes, h, w) = (7, 17, 35)
        for dtype in dtypes {
            for g in windows where g.padY < g.kernelHeight && g.padX < g.kernelWidth {
                let (oh, ow) = g.outputSize(height: h, width: w)!
                for kind in [PoolKind.max, .averageExcludingPadding, .averageIncludingPadding] {
                    compareWithCPU("pool \(kind) \(g)", cuda, dtype: dtype, inputs: [r.normals(planes * h * w)],
                                   outputs: [(planes * oh * ow, nil)]) { b, i, o in
                        (b as! any ConvolutionBackend).pool2d(kind, i[0], o[0], planes: planes, height: h, width: w, window: g)
                    }
                }
            }
        }
    }

    func testResizeAndBiasReLUMatchCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        for dtype in dtypes {
            for (h, w, oh, ow) in [(28, 28, 299, 299), (32, 32, 299, 299), (40, 56, 299, 299), (512, 400, 299, 299), (5, 7, 3, 11)] {
                let planes = 3
                compareWithCPU("resize \(h)x\(w) to \(oh)x\(ow)", cuda, dtype: dtype, inputs: [r.uniforms(planes * h * w, 0, 255)],
                               outputs: [(planes * oh * ow, nil)]) { b, i, o in
                    (b as! any ConvolutionBackend).resizeBilinear(i[0], o[0], planes: planes, height: h, width: w,
                                                                 outHeight: oh, outWidth: ow)
                }
            }
            let (images, channels, plane) = (4, 6, 289)
            compareWithCPU("bias + ReLU", cuda, dtype: dtype, inputs: [r.normals(channels)],
                           outputs: [(images * channels * plane, r.normals(images * channels * plane))]) { b, i, o in
                (b as! any ConvolutionBackend).addBiasReLU(o[0], bias: i[0], images: images, channels: channels, plane: plane)
            }
        }
    }

    func testConvolutionOpMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        let (n, c, h, w, o) = (4, 6, 15, 13, 9)
        for dtype in dtypes {
            for g in windows + [Window2D(kernel: 1)] {
                let x = pair(r.normals(n * c * h * w), [n, c, h, w], dtype, cuda)
                let weight = pair(r.normals(o * c * g.kernelHeight * g.kernelWidth, scale: 0.3), [o, c, g.kernelHeight, g.kernelWidth], dtype, cuda)
                let bias = pair(r.normals(o), [o], dtype, cuda)
                let expected = x.cpu.conv2dBiasReLU(weight: weight.cpu, bias: bias.cpu, window: g)
                assertClose(x.gpu.conv2dBiasReLU(weight: weight.gpu, bias: bias.gpu, window: g), expected, tolerance(dtype), "conv \(g) \(dtype)")
                assertClose(x.gpu.conv2dBiasReLU(weight: weight.gpu, bias: bias.gpu, window: g, scratchLimit: 1), expected,
                            tolerance(dtype), "conv \(g) \(dtype) grouped")
            }
        }
    }

    /// The whole network on the GPU against the CPU on the same images (with the converted weights; skipped
    /// without them: set TVM_INCEPTION_WEIGHTS).
    func testInceptionFeaturesMatchCPU() throws {
        let cuda = try cudaOrSkip()
        let env = ProcessInfo.processInfo.environment
        let path = env["TVM_INCEPTION_WEIGHTS"] ?? (env["HOME"] ?? "") + "/.cache/terminalvelocity/inception-2015-12-05.safetensors"
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("no converted Inception weights at \(path) (set TVM_INCEPTION_WEIGHTS; README, FID)")
        }
        let file = try SafetensorsFile.read(path: path)
        let gpu = FIDFeatureExtractor(network: try InceptionV3(file: file, source: path, device: cuda.device), batchSize: 3)
        let cpuNet = FIDFeatureExtractor(network: try InceptionV3(file: file, source: path, device: .cpu), batchSize: 3)
        var r = TestRandom()
        for (c, side) in [(1, 32), (3, 299), (3, 64)] {
            let images = try ByteImages(pixels: (0..<(5 * c * side * side)).map { _ in UInt8(r.int(256)) }, count: 5, channels: c,
                                        height: side, width: side)
            let expected = cpuNet.features(images, range: 0..<5)
            assertClose(gpu.features(images, range: 0..<5), expected, 1e-4, "Inception features, \(c)x\(side)x\(side)")
            let a = try gpu.statistics(images), b = try cpuNet.statistics(images)
            XCTAssertLessThan(relativeError(a.mean, b.mean), 1e-4)
            XCTAssertLessThan(relativeError(a.covariance, b.covariance), 1e-3)
        }
    }
}
