import XCTest
import TensorCore
import NN

/// The channels-last convolution, group norm and upsampling against direct loops in float64 on NCHW arrays
/// (PyTorch's definitions).
final class ImageLayersTests: XCTestCase {
    /// conv2d of x [n, c, h, w] with w [o, c, k, k] after zero padding (top, bottom, left, right), in float64.
    func referenceConvolution(_ x: [Float], _ shape: [Int], _ weight: [Float], _ bias: [Float], outChannels o: Int, kernel k: Int,
                              stride s: Int, padding p: EdgePadding) -> (values: [Double], oh: Int, ow: Int) {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let oh = (h + p.top + p.bottom - k) / s + 1, ow = (w + p.left + p.right - k) / s + 1
        var y = [Double](repeating: 0, count: n * o * oh * ow)
        for b in 0..<n { for oc in 0..<o { for oy in 0..<oh { for ox in 0..<ow {
            var acc = Double(bias[oc])
            for ic in 0..<c { for i in 0..<k { for j in 0..<k {
                let iy = oy * s + i - p.top, ix = ox * s + j - p.left
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                acc += Double(x[((b * c + ic) * h + iy) * w + ix]) * Double(weight[((oc * c + ic) * k + i) * k + j])
            } } }
            y[((b * o + oc) * oh + oy) * ow + ox] = acc
        } } } }
        return (y, oh, ow)
    }

    func maxRelativeDifference(_ a: [Float], _ b: [Double]) -> Double {
        let scale = b.map(abs).max()!
        return zip(a, b).map { abs(Double($0) - $1) }.max()! / scale
    }

    func checkConvolution(batch n: Int, channels c: Int, height h: Int, width w: Int, out o: Int, kernel k: Int, stride s: Int,
                          padding p: EdgePadding, scratchLimit: Int = 1 << 26, seed: UInt64) {
        var rng = RandomGenerator(seed: seed)
        let x = rng.normalFloats(n * c * h * w), weight = rng.normalFloats(o * c * k * k), bias = rng.normalFloats(o)
        var conv = Conv2D(weight: Tensor(weight, shape: [o, c, k, k], on: .cpu), bias: Tensor(bias, shape: [o], on: .cpu))
        conv.scratchLimit = scratchLimit
        let y = conv(Tensor(x, shape: [n, c, h, w], on: .cpu).permuted([0, 2, 3, 1]), stride: s, padding: p).permuted([0, 3, 1, 2])
        let expected = referenceConvolution(x, [n, c, h, w], weight, bias, outChannels: o, kernel: k, stride: s, padding: p)
        XCTAssertEqual(y.shape, [n, o, expected.oh, expected.ow])
        XCTAssertLessThan(maxRelativeDifference(y.floats, expected.values), 1e-6, "\(k)x\(k) stride \(s) padding \(p) on \(h)x\(w)")
    }

    func testThreeByThreeConvolutionWithSamePadding() {
        checkConvolution(batch: 2, channels: 5, height: 7, width: 6, out: 4, kernel: 3, stride: 1, padding: .uniform(1), seed: 1)
    }

    /// The encoder's downsampler: pad right and bottom by one, then 3x3 stride 2 (even and odd sizes).
    func testStrideTwoConvolutionWithAsymmetricPadding() {
        let downsampler = EdgePadding(top: 0, bottom: 1, left: 0, right: 1)
        checkConvolution(batch: 2, channels: 3, height: 8, width: 8, out: 5, kernel: 3, stride: 2, padding: downsampler, seed: 2)
        checkConvolution(batch: 1, channels: 4, height: 7, width: 10, out: 3, kernel: 3, stride: 2, padding: downsampler, seed: 3)
        checkConvolution(batch: 1, channels: 2, height: 2, width: 3, out: 2, kernel: 3, stride: 2, padding: downsampler, seed: 4)
    }

    func testPointwiseAndOtherConvolutions() {
        checkConvolution(batch: 2, channels: 6, height: 3, width: 5, out: 7, kernel: 1, stride: 1, padding: .uniform(0), seed: 5)
        checkConvolution(batch: 1, channels: 3, height: 9, width: 9, out: 2, kernel: 5, stride: 3,
                         padding: EdgePadding(top: 2, bottom: 1, left: 0, right: 2), seed: 6)
    }

    /// Outputs whose im2col matrix would pass the scratch limit go in bands of rows; the result is the same.
    func testConvolutionInBandsOfRows() {
        // 6 output rows of 2 x 6 x 27 values each: bands of 4 and 2 rows.
        checkConvolution(batch: 2, channels: 3, height: 6, width: 6, out: 4, kernel: 3, stride: 1, padding: .uniform(1),
                         scratchLimit: 4 * 2 * 6 * 27 + 5, seed: 7)
        // The downsampler on 11x7: 5 output rows of 3 x 27 values, bands of 2, 2 and 1 rows.
        checkConvolution(batch: 1, channels: 3, height: 11, width: 7, out: 2, kernel: 3, stride: 2,
                         padding: EdgePadding(top: 0, bottom: 1, left: 0, right: 1), scratchLimit: 2 * 4 * 27, seed: 8)
        checkConvolution(batch: 1, channels: 2, height: 9, width: 9, out: 2, kernel: 5, stride: 3,
                         padding: EdgePadding(top: 2, bottom: 1, left: 0, right: 2), scratchLimit: 1, seed: 9)
    }

    /// A residual given to the convolution is added to its output: the same values as adding it afterwards.
    func testConvolutionPlusResidual() {
        var rng = RandomGenerator(seed: 10)
        let conv = Conv2D(weight: Tensor(rng.normalFloats(4 * 3 * 9), shape: [4, 3, 3, 3], on: .cpu),
                          bias: Tensor(rng.normalFloats(4), shape: [4], on: .cpu))
        let x = Tensor(rng.normalFloats(2 * 5 * 6 * 3), shape: [2, 5, 6, 3], on: .cpu)
        let residual = Tensor(rng.normalFloats(2 * 5 * 6 * 4), shape: [2, 5, 6, 4], on: .cpu)
        XCTAssertEqual(conv(x, padding: .uniform(1), plus: residual).floats, (conv(x, padding: .uniform(1)) + residual).floats)
    }

    /// SiLU in the norm call: the norm followed by SiLU.
    func testGroupNormWithSiLU() {
        var rng = RandomGenerator(seed: 11)
        let norm = GroupNorm(weight: Tensor(rng.normalFloats(8), shape: [8], on: .cpu), bias: Tensor(rng.normalFloats(8), shape: [8], on: .cpu),
                             groups: 4, eps: 1e-6)
        let x = Tensor(rng.normalFloats(2 * 3 * 3 * 8), shape: [2, 3, 3, 8], on: .cpu)
        XCTAssertEqual(norm(x, silu: true).floats, norm(x).silu().floats)
    }

    func testGroupNormMatchesItsDefinition() {
        let (n, c, h, w, groups, eps) = (2, 6, 5, 4, 3, 1e-6)
        var rng = RandomGenerator(seed: 8)
        // An offset far from zero, so a variance computed as E[x^2] - E[x]^2 would show.
        let x = rng.normalFloats(n * c * h * w).map { $0 * 0.5 + 30 }
        let weight = rng.normalFloats(c), bias = rng.normalFloats(c)
        let norm = GroupNorm(weight: Tensor(weight, shape: [c], on: .cpu), bias: Tensor(bias, shape: [c], on: .cpu), groups: groups, eps: eps)
        let y = norm(Tensor(x, shape: [n, c, h, w], on: .cpu).permuted([0, 2, 3, 1])).permuted([0, 3, 1, 2]).floats
        var expected = [Double](repeating: 0, count: x.count)
        let perGroup = c / groups * h * w
        for b in 0..<n { for g in 0..<groups {
            let start = (b * c + g * (c / groups)) * h * w
            let values = x[start..<(start + perGroup)].map(Double.init)
            let mean = values.reduce(0, +) / Double(perGroup)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(perGroup)
            for i in 0..<perGroup {
                let channel = g * (c / groups) + i / (h * w)
                expected[start + i] = (values[i] - mean) / (variance + eps).squareRoot() * Double(weight[channel]) + Double(bias[channel])
            }
        } }
        XCTAssertLessThan(maxRelativeDifference(y, expected), 1e-5)
    }

    func testNearestUpsamplingRepeatsEachPixel() {
        let x = Tensor((0..<12).map(Float.init), shape: [1, 2, 3, 2], on: .cpu)  // [N, H, W, C]
        let y = upsampledNearest2x(x)
        XCTAssertEqual(y.shape, [1, 4, 6, 2])
        let v = y.floats
        for oy in 0..<4 { for ox in 0..<6 { for ch in 0..<2 {
            XCTAssertEqual(v[(oy * 6 + ox) * 2 + ch], Float(((oy / 2) * 3 + ox / 2) * 2 + ch))
        } } }
    }
}
