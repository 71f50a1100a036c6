import XCTest
import TensorCore

/// The inference kernels of the FID network (im2col convolution, pooling, bilinear resize) against naive loops
/// and hand-computed values, on the CPU backend.
final class ConvolutionTests: XCTestCase {
    var rng = RandomGenerator(seed: 11)

    /// max(conv + bias, 0) by the definition: a loop over every output and every kernel tap, in Double.
    func naiveConvBiasReLU(_ x: [Double], n: Int, c: Int, h: Int, w: Int, weight: [Double], o: Int, bias: [Double],
                           window g: Window2D) -> [Double] {
        let (oh, ow) = g.outputSize(height: h, width: w)!
        var y = [Double](repeating: 0, count: n * o * oh * ow)
        for b in 0..<n { for k in 0..<o { for oy in 0..<oh { for ox in 0..<ow {
            var s = bias[k]
            for ci in 0..<c { for i in 0..<g.kernelHeight { for j in 0..<g.kernelWidth {
                let iy = oy * g.strideY - g.padY + i, ix = ox * g.strideX - g.padX + j
                if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                s += x[((b * c + ci) * h + iy) * w + ix] * weight[((k * c + ci) * g.kernelHeight + i) * g.kernelWidth + j]
            } } }
            y[((b * o + k) * oh + oy) * ow + ox] = Swift.max(s, 0)
        } } } }
        return y
    }

    func maxRelativeError(_ a: [Double], _ b: [Double]) -> Double {
        let scale = b.map(Swift.abs).max() ?? 1
        return zip(a, b).map { Swift.abs($0 - $1) }.max()! / Swift.max(scale, 1e-300)
    }

    func testConvolutionMatchesNaiveLoopsForEveryWindowKind() {
        let windows: [(String, Window2D)] = [
            ("3x3", Window2D(kernel: 3)), ("3x3 stride 2", Window2D(kernel: 3, stride: 2)),
            ("3x3 pad 1", Window2D(kernel: 3, padding: 1)), ("5x5 pad 2", Window2D(kernel: 5, padding: 2)),
            ("1x1", Window2D(kernel: 1)), ("1x7 pad 0,3", Window2D(kernelHeight: 1, kernelWidth: 7, padX: 3)),
            ("7x1 pad 3,0", Window2D(kernelHeight: 7, kernelWidth: 1, padY: 3)),
            ("3x2 strides 2,3 pads 1,2", Window2D(kernelHeight: 3, kernelWidth: 2, strideY: 2, strideX: 3, padY: 1, padX: 2)),
        ]
        let (n, c, h, w, o) = (3, 4, 9, 11, 5)
        for (label, g) in windows {
            let x = Tensor.randomNormal([n, c, h, w], rng: &rng, dtype: .float64)
            let weight = Tensor.randomNormal([o, c, g.kernelHeight, g.kernelWidth], rng: &rng, dtype: .float64)
            let bias = Tensor.randomNormal([o], rng: &rng, dtype: .float64)
            let expected = naiveConvBiasReLU(x.doubles, n: n, c: c, h: h, w: w, weight: weight.doubles, o: o,
                                             bias: bias.doubles, window: g)
            let y = x.conv2dBiasReLU(weight: weight, bias: bias, window: g)
            let (oh, ow) = g.outputSize(height: h, width: w)!
            XCTAssertEqual(y.shape, [n, o, oh, ow], label)
            XCTAssertLessThan(maxRelativeError(y.doubles, expected), 1e-13, label)
            // About half the outputs are clamped: the ReLU is really there, and the rest are not all zero.
            let zeros = expected.filter { $0 == 0 }.count
            XCTAssertTrue(zeros > 0 && zeros < expected.count, label)
            // Images in groups (a scratch limit below one batch's im2col matrix) give the same values.
            let grouped = x.conv2dBiasReLU(weight: weight, bias: bias, window: g, scratchLimit: 1)
            XCTAssertEqual(grouped.doubles, y.doubles, "\(label): grouped")
            // float32 agrees with the float64 loop to float32 accuracy.
            let y32 = x.cast(.float32).conv2dBiasReLU(weight: weight.cast(.float32), bias: bias.cast(.float32), window: g)
            XCTAssertLessThan(maxRelativeError(y32.doubles, expected), 1e-5, "\(label): float32")
        }
    }

    func testWindowOutputSizes() {
        XCTAssertTrue(Window2D(kernel: 3, stride: 2).outputSize(height: 299, width: 299)! == (149, 149))
        XCTAssertTrue(Window2D(kernel: 3, stride: 2).outputSize(height: 147, width: 147)! == (73, 73))
        XCTAssertTrue(Window2D(kernel: 3, padding: 1).outputSize(height: 35, width: 35)! == (35, 35))
        XCTAssertTrue(Window2D(kernelHeight: 1, kernelWidth: 7, padX: 3).outputSize(height: 17, width: 17)! == (17, 17))
        XCTAssertNil(Window2D(kernel: 5).outputSize(height: 4, width: 9))
        XCTAssertTrue(Window2D(kernel: 1).isPointwise)
        XCTAssertFalse(Window2D(kernel: 1, stride: 2).isPointwise)
    }

    func testPoolingPaddingSemantics() {
        // One 3x3 plane of negative values: padding must not win a max, and must or must not count in a mean.
        let v: [Double] = [-1, -2, -3, -4, -5, -6, -7, -8, -9]
        let x = Tensor(v, shape: [1, 1, 3, 3], dtype: .float64)
        let g = Window2D(kernel: 3, stride: 1, padding: 1)
        XCTAssertEqual(x.pooled(.max, window: g).doubles, [-1, -1, -2, -1, -1, -2, -4, -4, -5])
        // Corner (0, 0) sees -1, -2, -4, -5; the edge (0, 1) six values; the centre all nine.
        let exclude = x.pooled(.averageExcludingPadding, window: g).doubles
        XCTAssertEqual(exclude[0], -12.0 / 4, accuracy: 1e-15)
        XCTAssertEqual(exclude[1], -21.0 / 6, accuracy: 1e-15)
        XCTAssertEqual(exclude[4], -45.0 / 9, accuracy: 1e-15)
        let include = x.pooled(.averageIncludingPadding, window: g).doubles
        XCTAssertEqual(include[0], -12.0 / 9, accuracy: 1e-15)
        XCTAssertEqual(include[1], -21.0 / 9, accuracy: 1e-15)
        XCTAssertEqual(include[4], -45.0 / 9, accuracy: 1e-15)
        // 3x3 stride 2 without padding on 5x5 (Inception's reductions), several planes at once.
        let big = Tensor((0..<50).map { Double(($0 * 17) % 23) }, shape: [2, 1, 5, 5], dtype: .float64)
        let pooled = big.pooled(.max, window: Window2D(kernel: 3, stride: 2))
        XCTAssertEqual(pooled.shape, [2, 1, 2, 2])
        let b = big.doubles
        for p in 0..<2 { for oy in 0..<2 { for ox in 0..<2 {
            var m = -Double.infinity
            for i in 0..<3 { for j in 0..<3 { m = Swift.max(m, b[p * 25 + (2 * oy + i) * 5 + 2 * ox + j]) } }
            XCTAssertEqual(pooled.doubles[p * 4 + oy * 2 + ox], m)
        } } }
        // NaN is not skipped by the max (as in PyTorch).
        let withNaN = Tensor([1, .nan, 3, 4] as [Double], shape: [1, 1, 2, 2], dtype: .float64)
        XCTAssertTrue(withNaN.pooled(.max, window: Window2D(kernel: 2)).doubles[0].isNaN)
    }

    func testBilinearResizeSamplesLikeTensorFlow1() {
        // 2x2 -> 4x4: output index o reads input position o / 2; past the last row or column the edge repeats.
        let x = Tensor([0, 10, 20, 30] as [Float], shape: [1, 1, 2, 2])
        XCTAssertEqual(x.resizedBilinear(height: 4, width: 4).floats,
                       [0, 5, 10, 10, 10, 15, 20, 20, 20, 25, 30, 30, 20, 25, 30, 30])
        // 1x4 -> 1x3 (downsampling): positions 0, 4/3, 8/3 -> 0, 1 + 1/3 of the way to 2, 2 + 2/3 of the way to 3.
        let row = Tensor([0, 3, 6, 9, 100, 103, 106, 109] as [Double], shape: [2, 1, 1, 4], dtype: .float64)
        let r = row.resizedBilinear(height: 1, width: 3).doubles
        for (got, want) in zip(r, [0, 4, 8, 100, 104, 108] as [Double]) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        // The same size is the identity (returned as is).
        let same = Tensor.randomNormal([2, 3, 5, 7], rng: &rng)
        XCTAssertTrue(same.resizedBilinear(height: 5, width: 7) === same)
        // 28 -> 299 (Fashion-MNIST to Inception): values stay within the input's range and the corners are kept.
        let small = Tensor.randomUniform([1, 1, 28, 28], rng: &rng)
        let up = small.resizedBilinear(height: 299, width: 299).floats
        let s = small.floats
        XCTAssertEqual(up.count, 299 * 299)
        XCTAssertEqual(up[0], s[0])
        XCTAssertEqual(up[298], s[27], accuracy: 1e-6)
        XCTAssertTrue(up.allSatisfy { $0 >= s.min()! - 1e-6 && $0 <= s.max()! + 1e-6 })
    }
}
