import Foundation
import XCTest
import TensorCore
import NN
@testable import CUDABackend

/// The VAE under bf16 products with bfloat16 activations (ChannelsLastImageBackend's low-precision storages): each
/// kernel given tensors that hold only bf16 values against the same kernel given float32 tensors of the same values
/// (bit for bit: the arithmetic is float32 either way, so the bf16 result is the float32 result rounded), the whole
/// VAE against its float32 run, its peak memory against the float32 one, and a float32-only kernel refusing such a
/// tensor.
final class CUDAVAEBFloat16Tests: XCTestCase {
    /// Convolutions of the VAE's kinds (3x3 padded, the downsampler's asymmetric padding, 1x1) and an odd output
    /// width through cuDNN: input and residual bf16-only, output bf16-only, give the float32-output convolution's
    /// values rounded; and the same with cuDNN off (the im2col path widens and narrows around its float32 kernels).
    func testBF16OnlyConvolutionIsTheFloat32OutputRounded() throws {
        let cuda = try cudaOrSkip()
        if let note = cuda.cudnnNotice { throw XCTSkip(note) }
        cuda.bf16Products = true
        defer { (cuda.bf16Products, cuda.useCuDNN) = (false, true) }
        var r = TestRandom()
        let cases: [(n: Int, h: Int, w: Int, c: Int, o: Int, k: Int, stride: Int, padding: EdgePadding)] = [
            (2, 9, 7, 16, 24, 3, 1, .uniform(1)), (2, 10, 11, 16, 16, 3, 2, EdgePadding(top: 0, bottom: 1, left: 0, right: 1)),
            (2, 5, 6, 24, 40, 1, 1, .uniform(0)), (1, 16, 16, 64, 64, 3, 1, .uniform(1)),
            // An odd channel count and output count: pairs of values that straddle pixels, and a lone last value.
            (1, 3, 5, 8, 3, 3, 1, .uniform(1)),
        ]
        for cudnn in [true, false] {
            cuda.useCuDNN = cudnn
            for (i, c) in cases.enumerated() {
                let x = Tensor(bf16Values(c.n * c.h * c.w * c.c, &r), shape: [c.n, c.h, c.w, c.c], on: cuda.device)
                let weight = Tensor(r.normals(c.o * c.k * c.k * c.c, scale: 0.2).map(Float.init), shape: [c.o, c.k * c.k * c.c],
                                    on: cuda.device)
                let bias = Tensor(r.normals(c.o).map(Float.init), shape: [c.o], on: cuda.device)
                let oh = (c.h + c.padding.top + c.padding.bottom - c.k) / c.stride + 1
                let ow = (c.w + c.padding.left + c.padding.right - c.k) / c.stride + 1
                let residual = i % 2 == 0 ? Tensor(bf16Values(c.n * oh * ow * c.o, &r), shape: [c.n, oh, ow, c.o], on: cuda.device) : nil
                func convolve(_ x: Tensor, _ residual: Tensor?, lowPrecision: Bool) -> Tensor {
                    x.channelsLastConvolution(weight: weight, bias: bias, kernelHeight: c.k, kernelWidth: c.k, stride: c.stride,
                                              padding: c.padding, plus: residual, lowPrecisionOutput: lowPrecision)
                }
                let wide = convolve(x, residual, lowPrecision: false)
                XCTAssertFalse(holdsBF16Only(wide.storage))
                let before = cuda.cudnnConvolutions
                let narrow = convolve(bf16Only(x, cuda), residual.map { bf16Only($0, cuda) }, lowPrecision: true)
                XCTAssertEqual(cuda.cudnnConvolutions, before + (cudnn ? 1 : 0), "\(c): \(cuda.cudnnPlanFailure ?? "")")
                XCTAssertTrue(holdsBF16Only(narrow.storage))
                XCTAssertEqual(narrow.shape, wide.shape)
                assertRoundedEqual(narrow, wide.floats, "\(cudnn ? "cuDNN" : "im2col") \(c), seed \(r.seed)")
            }
        }
    }

    /// The group norm (+ SiLU) reading a bf16-only input and writing a bf16-only output gives the float32 norm's values
    /// rounded (statistics in float32 over the same values); a float32 output from a bf16-only input is the float32 one.
    func testBF16OnlyGroupNormIsTheFloat32OutputRounded() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { cuda.bf16Products = false }
        var r = TestRandom()
        for s in [(n: 2, h: 8, w: 8, c: 64, groups: 32), (n: 1, h: 16, w: 12, c: 128, groups: 32), (n: 2, h: 3, w: 5, c: 512, groups: 32)] {
            for silu in [false, true] {
                let x = Tensor(bf16Values(s.n * s.h * s.w * s.c, scale: 0.5, shift: 3, &r), shape: [s.n, s.h, s.w, s.c], on: cuda.device)
                let weight = Tensor(r.normals(s.c).map(Float.init), shape: [s.c], on: cuda.device)
                let bias = Tensor(r.normals(s.c).map(Float.init), shape: [s.c], on: cuda.device)
                func norm(_ x: Tensor, bf16Output: Bool) -> Tensor {
                    x.groupNormalized(groups: s.groups, weight: weight, bias: bias, eps: 1e-6, silu: silu, feedsProducts: bf16Output)
                }
                let wide = norm(x, bf16Output: false).floats
                let narrow = norm(bf16Only(x, cuda), bf16Output: true)
                XCTAssertTrue(holdsBF16Only(narrow.storage))
                assertRoundedEqual(narrow, wide, "\(s) silu \(silu), seed \(r.seed)")
                let widened = norm(bf16Only(x, cuda), bf16Output: false)
                XCTAssertFalse(holdsBF16Only(widened.storage))
                XCTAssertEqual(widened.floats, wide, "\(s) silu \(silu): a bf16-only input read as its float32 values")
            }
        }
    }

    /// Nearest 2x upsampling between every pair of storage kinds, and the widening of a bf16-only tensor (an odd count:
    /// the conversion's tail), against the CPU's.
    func testUpsamplingAndWideningOfBF16OnlyTensors() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { cuda.bf16Products = false }
        var r = TestRandom()
        let values = bf16Values(2 * 5 * 3 * 96, &r)
        let expected = Tensor(values, shape: [2, 5, 3, 96], on: .cpu).channelsLastUpsampledNearest2x().floats
        let x = Tensor(values, shape: [2, 5, 3, 96], on: cuda.device)
        for (inputBF16, outputBF16) in [(false, false), (false, true), (true, false), (true, true)] {
            let y = (inputBF16 ? bf16Only(x, cuda) : x).channelsLastUpsampledNearest2x(lowPrecisionOutput: outputBF16)
            XCTAssertEqual(y.shape, [2, 10, 6, 96])
            XCTAssertEqual(holdsBF16Only(y.storage), outputBF16)
            XCTAssertEqual(y.fullPrecisionValues().floats, expected, "input bf16 \(inputBF16), output bf16 \(outputBF16)")
        }
        let odd = r.normals(7).map(Float.init)
        XCTAssertEqual(bf16Only(Tensor(odd, shape: [7], on: cuda.device), cuda).fullPrecisionValues().floats, odd.map(bf16Rounded))
        cuda.bf16Products = false
        XCTAssertNil(cuda.lowPrecisionStorage(count: 8, dtype: .float32), "float32 products keep float32 activations")
    }

    /// The VAE with bf16 activations against its float32 run on the GPU, for the vae_small fixture's config (widths
    /// 32, 32, 64, 64, 8 groups) and the SD-VAE's widths, random weights: the posterior's mean and std and the decoded
    /// image, relative error ||a - b|| / ||b||. The bound: at most 3 times the error of bf16 products with float32
    /// activations (`bf16Activations` off, the path before; its reference check of vae_small was 1.4e-2 from the
    /// float32 reference): rounding each activation to bf16 adds one rounding (2^-9 relative) per layer to the ones
    /// the products already make of the same values, so about twice the error, not more; and below 5e-2 in any case.
    /// The activations between layers hold bf16 values alone, the outputs do not.
    func testVAEWithBF16ActivationsMatchesFloat32() throws {
        let cuda = try cudaOrSkip()
        defer { (cuda.bf16Products, cuda.bf16Activations) = (false, true) }
        var r = TestRandom()
        let small = VAEConfig(blockOutChannels: [32, 32, 64, 64], layersPerBlock: 2, normGroups: 8)
        for (config, side, batch) in [(small, 32, 2), (VAEConfig.stableDiffusion, 64, 2)] {
            let images = Tensor(r.uniforms(batch * 3 * side * side, -1, 1).map(Float.init), shape: [batch, 3, side, side],
                                on: cuda.device)
            // A model per precision, made under it (the convolution weights of one made under bf16 hold bf16 alone).
            func run(bf16: Bool, activations: Bool = true) throws -> [(String, Tensor)] {
                (cuda.bf16Products, cuda.bf16Activations) = (bf16, activations)
                let vae = AutoencoderKL(randomWeightsFor: config, seed: 3, on: cuda.device)
                let posterior = try vae.encode(images)
                return [("mean", posterior.mean), ("std", posterior.std), ("image", try vae.decode(posterior.mean))]
            }
            let wide = try run(bf16: false), products = try run(bf16: true, activations: false), narrow = try run(bf16: true)
            for i in wide.indices {
                let label = "widths \(config.blockOutChannels) \(wide[i].0)"
                XCTAssertFalse(holdsBF16Only(narrow[i].1.storage), "\(label) comes out float32")
                let before = relativeError(products[i].1.doubles, wide[i].1.doubles)
                let err = relativeError(narrow[i].1.doubles, wide[i].1.doubles), tol = Swift.min(Swift.max(3 * before, 1e-3), 5e-2)
                print("bf16 VAE: \(label): bf16 products \(String(format: "%.2e", before)), bf16 activations \(String(format: "%.2e", err))")
                ErrorRecord.record(.float32, err, tol, label)
                XCTAssertLessThan(err, tol, "\(label) (bf16 products alone: \(before)), seed \(r.seed)")
            }
        }
    }

    /// Memory of the SD-VAE's widths on the GPU's byte accounting, float32 against bf16 products with float32
    /// activations (the path before) and with bf16 activations: the resident weights (made under bf16 products the
    /// convolutions' hold bf16 alone: under 0.55 of float32's, as they are all but the attention projections' 2.1M of
    /// 83.7M parameters), and the peak of a decode of 2 x 256x256 images' latents above the tensors live before it
    /// (second call: plans and copies made). With bf16 activations the peak is below the path before, and at most
    /// 0.75 of float32's: the activations take half the bytes, plus cuDNN's workspaces (up to 256 MiB each way), the
    /// statistics and the float32 image; the activations are the larger share at this size (about 0.4 GB in
    /// float32). Printed for docs/BENCHMARKS.md.
    func testBF16ActivationsAndWeightsHalveTheBytes() throws {
        let cuda = try cudaOrSkip()
        defer { (cuda.bf16Products, cuda.bf16Activations) = (false, true) }
        var r = TestRandom()
        let latents = Tensor(r.normals(2 * 4 * 32 * 32).map(Float.init), shape: [2, 4, 32, 32], on: cuda.device)
        func measure(bf16: Bool, activations: Bool = true) throws -> (weights: Int, peak: Int) {
            (cuda.bf16Products, cuda.bf16Activations) = (bf16, activations)
            let empty = cuda.currentBytes
            let vae = AutoencoderKL(randomWeightsFor: .stableDiffusion, seed: 3, on: cuda.device)
            let weights = cuda.currentBytes - empty
            _ = try vae.decode(latents)
            let before = cuda.currentBytes
            cuda.resetPeakBytes()
            _ = try vae.decode(latents)
            return (weights, cuda.peakBytes - before)
        }
        let wide = try measure(bf16: false), products = try measure(bf16: true, activations: false), narrow = try measure(bf16: true)
        print("memory: SD-VAE weights float32 \(wide.weights >> 20) MiB, under bf16 products \(narrow.weights >> 20) MiB; "
              + "decode of 2 x 256x256, peak above live tensors: float32 \(wide.peak >> 20) MiB, bf16 products \(products.peak >> 20) "
              + "MiB, bf16 activations \(narrow.peak >> 20) MiB")
        XCTAssertLessThan(Double(narrow.weights), 0.55 * Double(wide.weights))
        XCTAssertLessThan(narrow.peak, products.peak)
        XCTAssertLessThan(Double(narrow.peak), 0.75 * Double(wide.peak))
    }

    /// A tensor that holds only bf16 values handed to a kernel that reads float32 alone (the elementwise add) stops
    /// the process (the backend's precondition) instead of reading garbage: run in a child process of this test
    /// bundle, which must die of a signal before reaching its end.
    func testFloat32KernelRefusesABF16OnlyTensor() throws {
        let cuda = try cudaOrSkip()
        if ProcessInfo.processInfo.environment["TVM_REFUSAL_CHILD"] == "1" {
            cuda.bf16Products = true
            let x = Tensor([Float](repeating: 1, count: 64), shape: [64], on: cuda.device)
            let sum = bf16Only(x, cuda) + x
            print("REFUSAL CHILD: not refused, \(sum.shape)")
            exit(0)
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["CUDABackendTests.CUDAVAEBFloat16Tests/testFloat32KernelRefusesABF16OnlyTensor"]
        child.environment = ProcessInfo.processInfo.environment.merging(["TVM_REFUSAL_CHILD": "1"]) { $1 }
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        try child.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        XCTAssertFalse(text.contains("REFUSAL CHILD: not refused"), text)
        XCTAssertEqual(child.terminationReason, .uncaughtSignal, "the child was not stopped: \(text.suffix(2000))")
    }
}
