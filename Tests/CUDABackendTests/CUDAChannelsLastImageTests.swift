import XCTest
import TensorCore
@testable import CUDABackend

/// ChannelsLastImageBackend on the GPU (cuDNN's convolutions, the fused group norm) against the CPU backend, whose
/// channels-last functions are composed from core operations; and the GPU's im2col path where cuDNN is off.
final class CUDAChannelsLastImageTests: XCTestCase {
    struct Convolution {
        let images: Int, channels: Int, height: Int, width: Int, out: Int, kernel: Int, stride: Int
        let padding: EdgePadding
    }

    /// The VAE's kinds of convolution, and an odd one.
    let convolutions = [
        Convolution(images: 2, channels: 16, height: 9, width: 7, out: 24, kernel: 3, stride: 1, padding: .uniform(1)),
        Convolution(images: 2, channels: 3, height: 16, width: 12, out: 32, kernel: 3, stride: 1, padding: .uniform(1)),
        Convolution(images: 2, channels: 16, height: 10, width: 11, out: 16, kernel: 3, stride: 2,
                    padding: EdgePadding(top: 0, bottom: 1, left: 0, right: 1)),
        Convolution(images: 2, channels: 24, height: 5, width: 6, out: 40, kernel: 1, stride: 1, padding: .uniform(0)),
        Convolution(images: 1, channels: 4, height: 9, width: 9, out: 6, kernel: 5, stride: 3,
                    padding: EdgePadding(top: 2, bottom: 1, left: 0, right: 2)),
        Convolution(images: 3, channels: 32, height: 8, width: 8, out: 8, kernel: 3, stride: 1, padding: .uniform(1)),
    ]

    /// The convolution of NHWC values x with PyTorch-layout weights [O, C, k, k] on `device`, plus the residual values
    /// (nil: none), as [N, OH, OW, O] values.
    func convolve(_ c: Convolution, _ x: [Float], _ weight: [Float], _ bias: [Float], plus residual: [Float]? = nil,
                  on device: Device) -> (values: [Float], shape: [Int]) {
        let w = Tensor(weight, shape: [c.out, c.channels, c.kernel, c.kernel], on: device).permuted([0, 2, 3, 1]).reshaped([c.out, -1])
        let outShape = [c.images, (c.height + c.padding.top + c.padding.bottom - c.kernel) / c.stride + 1,
                        (c.width + c.padding.left + c.padding.right - c.kernel) / c.stride + 1, c.out]
        let y = Tensor(x, shape: [c.images, c.height, c.width, c.channels], on: device)
            .channelsLastConvolution(weight: w, bias: Tensor(bias, shape: [c.out], on: device), kernelHeight: c.kernel,
                                     kernelWidth: c.kernel, stride: c.stride, padding: c.padding,
                                     plus: residual.map { Tensor($0, shape: outShape, on: device) })
        return (y.floats, y.shape)
    }

    /// Random operands of `c`: input, weight, bias and, when `withResidual`, a residual.
    func randomOperands(_ c: Convolution, withResidual: Bool, _ r: inout TestRandom)
        -> (x: [Float], weight: [Float], bias: [Float], residual: [Float]?) {
        (r.normals(c.images * c.height * c.width * c.channels).map(Float.init),
         r.normals(c.out * c.channels * c.kernel * c.kernel, scale: 0.2).map(Float.init),
         r.normals(c.out).map(Float.init),
         withResidual ? r.normals(outputCount(c)).map(Float.init) : nil)
    }

    func outputCount(_ c: Convolution) -> Int {
        c.images * c.out * ((c.height + c.padding.top + c.padding.bottom - c.kernel) / c.stride + 1)
            * ((c.width + c.padding.left + c.padding.right - c.kernel) / c.stride + 1)
    }

    /// max |a - b| / max |b|.
    func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Double {
        let scale = b.map { abs(Double($0)) }.max()!
        return zip(a, b).map { $0.isFinite ? abs(Double($0) - Double($1)) : .infinity }.max()! / scale
    }

    /// Each convolution through cuDNN (counted) against the CPU's composed convolution, every other one with a
    /// residual added: float32 (FMA kernels, no TF32) within 1e-5 of the largest output, bf16 operands and output
    /// within 3e-2; with the heuristic's algorithms and with timed ones.
    func testCuDNNConvolutionMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        if let note = cuda.cudnnNotice { throw XCTSkip(note) }
        var r = TestRandom()
        let timedBefore = cuda.cudnnTimesAlgorithms
        defer { (cuda.bf16Products, cuda.cudnnTimesAlgorithms) = (false, timedBefore) }
        for (bf16, timed) in [(false, false), (true, false), (false, true), (true, true)] {
            (cuda.bf16Products, cuda.cudnnTimesAlgorithms) = (bf16, timed)
            for (i, c) in convolutions.enumerated() {
                let (x, weight, bias, residual) = randomOperands(c, withResidual: i % 2 == 1, &r)
                let before = cuda.cudnnConvolutions
                let got = convolve(c, x, weight, bias, plus: residual, on: cuda.device)
                XCTAssertEqual(cuda.cudnnConvolutions, before + 1,
                               "\(c)\(timed ? " timed" : "") took the composed path: \(cuda.cudnnPlanFailure ?? "?")")
                let expected = convolve(c, x, weight, bias, plus: residual, on: .cpu)
                XCTAssertEqual(got.shape, expected.shape)
                let err = maxRelativeDifference(got.values, expected.values), tol = bf16 ? 3e-2 : 1e-5
                ErrorRecord.record(.float32, err, tol, "\(bf16 ? "bf16 " : "")\(c)")
                XCTAssertLessThan(err, tol, "\(bf16 ? "bf16 " : "")\(c), seed \(r.seed)")
            }
        }
    }

    /// Without cuDNN (switched off here, as where it is missing) the GPU's im2col kernel and products: the same
    /// results (float32 within 1e-5, bf16 within 3e-2), in one band and in several, with and without a residual, and
    /// cuDNN is not asked.
    func testConvolutionWithoutCuDNNTakesIm2col() throws {
        let cuda = try cudaOrSkip()
        let bandsBefore = cuda.im2colBandElements
        cuda.useCuDNN = false
        defer { (cuda.useCuDNN, cuda.im2colBandElements, cuda.bf16Products) = (true, bandsBefore, false) }
        XCTAssertNil(cuda.cudnnNotice, "cuDNN switched off on purpose is no notice")
        var r = TestRandom()
        for (bf16, bands) in [(false, bandsBefore), (false, 700), (true, bandsBefore), (true, 700)] {
            (cuda.bf16Products, cuda.im2colBandElements) = (bf16, bands)
            for (i, c) in convolutions.enumerated() {
                let (x, weight, bias, residual) = randomOperands(c, withResidual: i % 2 == 0, &r)
                let before = cuda.cudnnConvolutions
                let got = convolve(c, x, weight, bias, plus: residual, on: cuda.device)
                XCTAssertEqual(cuda.cudnnConvolutions, before)
                let err = maxRelativeDifference(got.values, convolve(c, x, weight, bias, plus: residual, on: .cpu).values)
                let tol = bf16 ? 3e-2 : 1e-5, label = "im2col\(bf16 ? " bf16" : "") bands of \(bands) \(c)"
                ErrorRecord.record(.float32, err, tol, label)
                XCTAssertLessThan(err, tol, "\(label), seed \(r.seed)")
            }
        }
    }

    /// A cuDNN that cannot be opened is an error naming what was tried (the backend turns it into its notice and
    /// composes the convolutions). Needs no GPU.
    func testMissingCuDNNIsNamed() {
        setenv("TVM_CUDNN_LIB", "/nonexistent/libcudnn.so.9", 1)
        defer { unsetenv("TVM_CUDNN_LIB") }
        XCTAssertThrowsError(try CuDNN.load()) { error in
            XCTAssertTrue("\(error)".contains("TVM_CUDNN_LIB=/nonexistent/libcudnn.so.9"), "\(error)")
        }
    }

    /// Where a cuDNN is found (TVM_CUDNN_LIB, the linker's path, a pip wheel), every function the convolutions use
    /// binds and the version reads as 9.x. Needs no GPU (nothing is called but cudnnGetVersion).
    func testCuDNNBindsEveryFunction() throws {
        let dnn: CuDNN
        do { dnn = try CuDNN.load() } catch { throw XCTSkip("no cuDNN here: \(error)") }
        XCTAssertTrue(dnn.version.hasPrefix("9."), dnn.version)
        XCTAssertEqual(String(cString: dnn.cudnnGetErrorString(0)!), "CUDNN_STATUS_SUCCESS")
    }

    /// The fused group norm (with and without SiLU) against the CPU's composed one, on groups whose mean is far from
    /// zero (a variance from E[x^2] - E[x]^2 would show), in float32 and float64 against float64; and the bf16 values
    /// alone that it writes for the convolution after it.
    func testFusedGroupNormMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        let shapes = [(n: 2, h: 5, w: 7, c: 32, groups: 8), (n: 3, h: 16, w: 16, c: 128, groups: 32), (n: 1, h: 3, w: 3, c: 512, groups: 32),
                      (n: 2, h: 40, w: 40, c: 64, groups: 32), (n: 1, h: 1, w: 1, c: 6, groups: 3), (n: 2, h: 7, w: 3, c: 96, groups: 32)]
        for dtype in [DType.float32, .float64] {
            for s in shapes {
                for silu in [false, true] {
                    // The inputs as the element type holds them; the reference in float64 on the CPU.
                    func held(_ v: [Double]) -> [Double] { dtype == .float32 ? v.map { Double(Float($0)) } : v }
                    let x = held(r.normals(s.n * s.h * s.w * s.c).map { $0 * 0.5 + 30 })
                    let weight = held(r.normals(s.c)), bias = held(r.normals(s.c))
                    func run(_ device: Device, _ t: DType) -> [Double] {
                        Tensor(x, shape: [s.n, s.h, s.w, s.c], dtype: t, on: device)
                            .groupNormalized(groups: s.groups, weight: Tensor(weight, shape: [s.c], dtype: t, on: device),
                                             bias: Tensor(bias, shape: [s.c], dtype: t, on: device), eps: 1e-6, silu: silu)
                            .doubles
                    }
                    let err = relativeError(run(cuda.device, dtype), run(.cpu, .float64)), tol = dtype == .float32 ? 3e-5 : 1e-11
                    ErrorRecord.record(dtype, err, tol, "\(s) silu \(silu)")
                    XCTAssertLessThan(err, tol, "\(dtype) \(s) silu \(silu), seed \(r.seed)")
                }
            }
        }
        // Under bf16 products the norm that feeds a convolution writes only the bf16 values that convolution reads
        // (CUDAVAEBFloat16Tests compares them): no operand copy is made for it.
        cuda.bf16Products = true
        defer { cuda.bf16Products = false }
        let x = Tensor(r.normals(2 * 8 * 8 * 64).map(Float.init), shape: [2, 8, 8, 64], on: cuda.device)
        let y = x.groupNormalized(groups: 32, weight: Tensor([Float](repeating: 1, count: 64), shape: [64], on: cuda.device),
                                  bias: Tensor([Float](repeating: 0, count: 64), shape: [64], on: cuda.device), eps: 1e-6,
                                  silu: true, feedsProducts: true)
        XCTAssertTrue((y.storage as! CUDAStorage).operandCopyOnly)
        let copyBytes = cuda.bf16CopyBytes
        _ = cuda.bf16Operand(y.storage)
        XCTAssertEqual(cuda.bf16CopyBytes, copyBytes, "the convolution's operand copy was made again")
    }
}
