import XCTest
@testable import Data
import Formats

/// PIL-compatible BOX / BICUBIC resampling and the ADM center crop on small synthetic images. Byte-for-byte
/// parity with PIL itself is in `ImageReferenceTests`; these check the arithmetic independently.
final class ImageResamplingTests: XCTestCase {
    /// Smooth content (no clipping at 0 or 255, where fixed-point and real arithmetic part ways) plus a little
    /// deterministic roughness.
    func smoothImage(width: Int, height: Int, channels: Int) -> Image {
        var pixels: [UInt8] = []
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<channels {
                    let v = 128 + 60 * sin(Double(x) / Double(3 + c) + Double(y) / 5) + 20 * cos(Double(y) / 4)
                    pixels.append(UInt8(v + Double((x * 7 + y * 13 + c) % 5)))
                }
            }
        }
        return Image(width: width, height: height, channels: channels, pixels: pixels)
    }

    /// The same filter in real arithmetic, one 2-D weighted mean per output sample, and how far PIL's integer
    /// arithmetic may stray from it: half a level for the final rounding, plus half a level for the rounding after
    /// the horizontal pass times the vertical weights' absolute sum (above 1 for bicubic), plus 0.01 for the
    /// 22-bit weights.
    func realResize(_ image: Image, width: Int, height: Int, filter: ResampleFilter) -> (values: [Double], bounds: [Double]) {
        func weights(_ inSize: Int, _ outSize: Int) -> [[(Int, Double)]] {
            let scale = Double(inSize) / Double(outSize), filterScale = max(scale, 1)
            return (0..<outSize).map { o in
                let center = (Double(o) + 0.5) * scale
                let taps = (0..<inSize).map { i in (i, filter.weight((Double(i) + 0.5 - center) / filterScale)) }.filter { $0.1 != 0 }
                let total = taps.reduce(0) { $0 + $1.1 }
                return taps.map { ($0.0, $0.1 / total) }
            }
        }
        let wx = weights(image.width, width), wy = weights(image.height, height), c = image.channels
        var values: [Double] = [], bounds: [Double] = []
        for y in 0..<height {
            let bound = 0.51 + (height == image.height ? 0 : 0.5 * wy[y].reduce(0) { $0 + abs($1.1) })
            for x in 0..<width {
                for ch in 0..<c {
                    var sum = 0.0
                    for (iy, ky) in wy[y] {
                        for (ix, kx) in wx[x] { sum += ky * kx * Double(image.pixels[(iy * image.width + ix) * c + ch]) }
                    }
                    values.append(sum)
                    bounds.append(bound)
                }
            }
        }
        return (values, bounds)
    }

    func testAgreesWithRealArithmetic() {
        // BOX gives a pixel whose center lies exactly on a window edge all or nothing, and the last bit of PIL's
        // floating-point window arithmetic decides which; these sizes have no such ties (odd output sizes when
        // shrinking, odd input sizes when enlarging).
        let image = smoothImage(width: 29, height: 17, channels: 3)
        for filter in [ResampleFilter.box, .bicubic] {
            for (w, h) in [(13, 9), (9, 17), (29, 5), (7, 5), (45, 31), (13, 40)] {
                let resized = image.resized(width: w, height: h, filter: filter)
                XCTAssertEqual([resized.width, resized.height, resized.channels], [w, h, 3])
                let real = realResize(image, width: w, height: h, filter: filter)
                for i in resized.pixels.indices where abs(Double(resized.pixels[i]) - real.values[i]) > real.bounds[i] {
                    XCTFail("\(filter) to \(w)x\(h): sample \(i) is \(resized.pixels[i]), real arithmetic gives \(real.values[i])")
                    break
                }
            }
        }
    }

    /// Halving even sides with BOX: PIL's horizontal pass rounds (a + b) / 2 half up to 8 bits, then the
    /// vertical pass does the same to the two rounded values.
    func testBoxHalvingRoundsEachPass() {
        let image = Image(width: 6, height: 4, channels: 1, pixels: (0..<24).map { UInt8(($0 * 89 + 7) % 256) })
        let half = image.resized(width: 3, height: 2, filter: .box)
        func p(_ x: Int, _ y: Int) -> Int { Int(image.pixels[y * 6 + x]) }
        var expected: [UInt8] = []
        for y in 0..<2 {
            for x in 0..<3 {
                let top = (p(2 * x, 2 * y) + p(2 * x + 1, 2 * y) + 1) / 2
                let bottom = (p(2 * x, 2 * y + 1) + p(2 * x + 1, 2 * y + 1) + 1) / 2
                expected.append(UInt8((top + bottom + 1) / 2))
            }
        }
        XCTAssertEqual(half.pixels, expected)
    }

    func testUnchangedSidesAreNotResampled() {
        let image = smoothImage(width: 9, height: 7, channels: 1)
        XCTAssertEqual(image.resized(width: 9, height: 7, filter: .bicubic), image)
        // Only the changed side is filtered: every column of a vertical-only resize is that column resized.
        let tall = image.resized(width: 9, height: 4, filter: .bicubic)
        for x in 0..<9 {
            let column = Image(width: 1, height: 7, channels: 1, pixels: (0..<7).map { image.pixels[$0 * 9 + x] })
            XCTAssertEqual(column.resized(width: 1, height: 4, filter: .bicubic).pixels, (0..<4).map { tall.pixels[$0 * 9 + x] })
        }
    }

    func testFixedPointWeightsSumToOne() {
        for (inSize, outSize) in [(37, 18), (18, 7), (7, 32), (1031, 412), (5, 5)] {
            for filter in [ResampleFilter.box, .bicubic] {
                let windows = ResampleWindows(inputSize: inSize, outputSize: outSize, filter: filter)
                for o in 0..<outSize {
                    let sum = (0..<windows.count[o]).reduce(0) { $0 + Int(windows.weights[o * windows.taps + $1]) }
                    // Each weight is rounded separately: the sum is 2^22 up to half a unit per tap.
                    XCTAssertLessThanOrEqual(abs(sum - (1 << 22)), windows.taps, "\(filter) \(inSize)->\(outSize) at \(o)")
                    XCTAssertGreaterThanOrEqual(windows.first[o], 0)
                    XCTAssertLessThanOrEqual(windows.first[o] + windows.count[o], inSize)
                }
            }
        }
    }

    func testCenterCropGeometry() {
        // A constant image stays constant through halvings, bicubic and the crop, whatever the shape.
        for (w, h, size) in [(700, 530, 64), (161, 1031, 64), (5, 3, 8), (1, 1, 4), (256, 256, 256), (513, 1024, 256)] {
            let image = Image(width: w, height: h, channels: 3, pixels: [UInt8](repeating: 77, count: w * h * 3))
            let crop = image.centerCropDhariwal(size: size)
            XCTAssertEqual([crop.width, crop.height, crop.channels], [size, size, 3], "\(w)x\(h) at \(size)")
            XCTAssertTrue(crop.pixels.allSatisfy { $0 == 77 }, "\(w)x\(h) at \(size)")
        }
        // Exactly the requested size: no resampling, the crop is the image.
        let image = smoothImage(width: 8, height: 8, channels: 3)
        XCTAssertEqual(image.centerCropDhariwal(size: 8), image)
        // The center of a wide image: a 12x4 image at size 4 keeps columns 4 to 7.
        let wide = smoothImage(width: 12, height: 4, channels: 1)
        XCTAssertEqual(wide.centerCropDhariwal(size: 4).pixels, (0..<4).flatMap { y in wide.pixels[(y * 12 + 4)..<(y * 12 + 8)] })
    }
}
