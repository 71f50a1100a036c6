import XCTest
import TensorCore
import NN

/// The conversions around the VAE, against the official code's float32 arithmetic.
final class LatentPipelineTests: XCTestCase {
    /// `x.to(float32) / 127.5 - 1` as numpy computes it in float32 for pixels 0, 1, 127, 128, 254, 255.
    func testPixelsToVAEInput() {
        let x = vaeInput(pixels: [0, 1, 127, 128, 254, 255], shape: [1, 1, 2, 3], on: .cpu)
        XCTAssertEqual(x.shape, [1, 1, 2, 3])
        XCTAssertEqual(x.floats, [-1.0, -0.9921568632125854, -0.003921568393707275, 0.003921627998352051, 0.9921568632125854, 1.0])
    }

    /// `(x * 0.5 + 0.5).clamp(0, 1) * 255` then a truncating cast: 0 decodes to 127 (rounding would give 128),
    /// only x >= 1 gives 255, and values outside [-1, 1] clamp.
    func testDecodedImagesToPixelsTruncateAsTheOfficialCode() throws {
        let x: [Float] = [-3, -1, -0.999, 0, 0.0040, 0.5, 0.996, 0.999, 1, 7]
        let p = try pixels(fromDecoded: Tensor(x, shape: [1, 1, 2, 5], on: .cpu))
        XCTAssertEqual(p, [0, 0, 0, 127, 128, 191, 254, 254, 255, 255])
        XCTAssertThrowsError(try pixels(fromDecoded: Tensor([0, .nan], shape: [1, 1, 1, 2], on: .cpu))) { e in
            XCTAssertEqual("\(e)", "decoded images of shape [1, 1, 1, 2] hold a NaN at flat index 1")
        }
    }

    /// scale = float32(final_std) / float32(raw_std) and bias = float32(final_mean) - float32(raw_mean) * scale,
    /// the bit patterns numpy gives for the constants of TVM.md.
    func testNormalisationConstantsMatchTheOfficialFloat32Arithmetic() {
        func bits(_ v: [Float]) -> [UInt32] { v.map(\.bitPattern) }
        XCTAssertEqual(bits(LatentNormalization.imageNet256.scale), [0x3e52ea3c, 0x3e408260, 0x3e820a35, 0x3e806ad7])
        XCTAssertEqual(bits(LatentNormalization.imageNet256.bias), [0xbe366a89, 0x3d55f90d, 0xbd60e287, 0xbdc007d7])
        XCTAssertEqual(bits(LatentNormalization.imageNet512.scale), [0x3e424eb2, 0x3e2d4402, 0x3e733afc, 0x3e6d9646])
        XCTAssertEqual(bits(LatentNormalization.imageNet512.bias), [0xbe978f4d, 0x3df0d6da, 0xbdeaf5e8, 0xbe2d3370])
    }

    /// Per channel z * scale + bias and back, with the product and the sum (and the difference and the
    /// quotient) each rounded to float32 as PyTorch's separate ops round them.
    func testNormaliseAndBack() {
        let norm = LatentNormalization.imageNet256
        var rng = RandomGenerator(seed: 3)
        let raw = rng.normalFloats(2 * 4 * 3 * 3).map { $0 * 5 }
        let z = norm.normalized(Tensor(raw, shape: [2, 4, 3, 3], on: .cpu))
        let expected = raw.enumerated().map { i, v -> Float in
            let c = (i / 9) % 4
            let product = v * norm.scale[c]
            return product + norm.bias[c]
        }
        XCTAssertEqual(z.floats, expected)
        let back = norm.denormalized(z).floats
        XCTAssertEqual(back, expected.enumerated().map { i, v in let c = (i / 9) % 4; return (v - norm.bias[c]) / norm.scale[c] })
        XCTAssertLessThan(zip(back, raw).map { abs($0 - $1) }.max()!, 1e-5)
    }
}
