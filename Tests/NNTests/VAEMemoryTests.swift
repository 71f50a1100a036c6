import XCTest
import TensorCore
@testable import NN

/// Peak memory of the VAE's inference, measured by the CPU backend's byte accounting (`MemoryAccounting`): one
/// encode of a 64x64 image and one decode of its 8x8 latents through a model of the SD-VAE's widths (128, 256, 512,
/// 512, 32 groups) with random weights. Which tensors are alive at once does not depend on the backend, so what
/// the block code keeps alive shows here as on the GPU; the CPU's own figure is float32 bytes and its convolutions
/// and group norms are composed (their im2col matrices and temporaries count), where the GPU has one kernel each
/// and keeps bf16 operand copies beside (docs/BENCHMARKS.md, "The SD-VAE (issue 17)").
final class VAEMemoryTests: XCTestCase {
    /// The image side: 64, or `TVM_VAE_MEMORY_SIDE` for the breakdown at another size (the bounds are for 64).
    static let side = Int(ProcessInfo.processInfo.environment["TVM_VAE_MEMORY_SIDE"] ?? "") ?? 64

    var cpu: CPUBackend { CPUBackend.shared }
    func mib(_ bytes: Int) -> String { String(format: "%.2f MiB", Double(bytes) / 1_048_576) }
    func bytes(_ t: Tensor) -> Int { t.count * t.dtype.byteSize }

    /// Peak bytes above those live before `body`.
    func measure<R>(_ body: () throws -> R) rethrows -> (result: R, peak: Int) {
        let before = cpu.currentBytes
        cpu.resetPeakBytes()
        let r = try body()
        return (r, cpu.peakBytes - before)
    }

    /// Parameters of the SD-VAE's shapes (values as `AutoencoderKL(randomWeightsFor:)` draws them).
    func parameters() -> ParameterSet {
        var rng = RandomGenerator(seed: 2)
        let p = ParameterSet()
        for (name, shape) in AutoencoderKL.parameterShapes(.stableDiffusion) {
            let count = Shape.count(shape)
            p[name] = Tensor(shape.count == 1 ? [Float](repeating: name.hasSuffix(".weight") ? 1 : 0, count: count)
                                : rng.normalFloats(count).map { $0 / Float(count / shape[0]).squareRoot() }, shape: shape, on: .cpu)
        }
        return p
    }

    func image() -> Tensor {
        var rng = RandomGenerator(seed: 5)
        let n = 3 * Self.side * Self.side
        return Tensor(rng.uniformFloats(n).map { $0 * 2 - 1 }, shape: [1, 3, Self.side, Self.side], on: .cpu)
    }

    /// An FNV-1a hash of every value's bits: a change to what is kept alive must leave it as it is.
    func fingerprint(_ tensors: [Tensor]) -> UInt64 {
        var hash: UInt64 = 14_695_981_039_346_656_037
        for t in tensors { for v in t.floats { hash = (hash ^ UInt64(v.bitPattern)) &* 1_099_511_628_211 } }
        return hash
    }

    /// Encode and decode peaks above the weights, each stage of the encoder and decoder apart (its peak above what
    /// was live before it, its input included), and a fingerprint of the outputs: the breakdown recorded in
    /// docs/BENCHMARKS.md.
    func testBreakdownOfEncodeAndDecode() throws {
        let p = parameters()
        let vae = AutoencoderKL(config: .stableDiffusion, parameters: p)
        let encoder = VAEEncoder(p, .stableDiffusion), decoder = VAEDecoder(p, .stableDiffusion)
        let x = image()
        print("memory: SD-VAE widths, \(x.shape) images")
        withoutGrad {
            var h = x.permuted([0, 2, 3, 1])
            var stages: [(String, (Tensor) -> Tensor)] = [("encoder conv_in", { encoder.convIn($0, padding: .uniform(1)) })]
            stages += encoder.blocks.indices.map { i in ("encoder down block \(i)", { encoder.blocks[i]($0) }) }
            stages += [("encoder mid block", { encoder.mid($0) }),
                       ("encoder norm, conv_out", { encoder.convOut(encoder.normOut($0, silu: true), padding: .uniform(1)) })]
            for (name, stage) in stages {
                let (y, peak) = measure { stage(h) }
                print("memory:   \(name): \(h.shape) -> \(y.shape), peak \(mib(peak)) above its input (\(mib(bytes(h))))")
                h = y
            }
            h = h.slice(axis: 3, start: 0, length: 4)
            stages = [("decoder conv_in", { decoder.convIn($0, padding: .uniform(1)) }), ("decoder mid block", { decoder.mid($0) })]
            stages += decoder.blocks.indices.map { i in ("decoder up block \(i)", { decoder.blocks[i]($0) }) }
            stages += [("decoder norm, conv_out", { decoder.convOut(decoder.normOut($0, silu: true), padding: .uniform(1)) })]
            for (name, stage) in stages {
                let (y, peak) = measure { stage(h) }
                print("memory:   \(name): \(h.shape) -> \(y.shape), peak \(mib(peak)) above its input (\(mib(bytes(h))))")
                h = y
            }
        }
        let (posterior, encodePeak) = try measure { try vae.encode(x) }
        let (decoded, decodePeak) = try measure { try vae.decode(posterior.mean) }
        print("memory: encode peak above the weights and its input: \(mib(encodePeak)); decode: \(mib(decodePeak))")
        print("memory: fingerprint of the mean, std and decoded image: \(fingerprint([posterior.mean, posterior.std, decoded]))")
        XCTAssertEqual(decoded.shape, x.shape)
    }

    /// The bounds: 24.27 MiB (encode) and 48.39 MiB (decode) measured on 2026-12-07, plus 2.5% (52.36 and 96.75 MiB
    /// before the blocks ended their tensors at their last use and the composed convolution gathered its im2col
    /// matrix in one op). Bytes, not time: the same inference allocates the same storages on any machine.
    func testPeaksOfEncodeAndDecodeStayWithinTheirBounds() throws {
        guard Self.side == 64 else { throw XCTSkip("the bounds are for 64x64 images") }
        let vae = AutoencoderKL(randomWeightsFor: .stableDiffusion, seed: 2, on: .cpu)
        let x = image()
        let (posterior, encodePeak) = try measure { try vae.encode(x) }
        let (decoded, decodePeak) = try measure { try vae.decode(posterior.mean) }
        XCTAssertEqual(decoded.shape, x.shape)
        // The largest activation (the decoder's last block input, 256 channels at 64x64) is 4 MiB: the accounting
        // sees the activations.
        XCTAssertGreaterThan(decodePeak, 4 << 20)
        XCTAssertLessThanOrEqual(encodePeak, Int(24.27 * 1.025 * 1_048_576), "encode peaks at \(mib(encodePeak))")
        XCTAssertLessThanOrEqual(decodePeak, Int(48.39 * 1.025 * 1_048_576), "decode peaks at \(mib(decodePeak))")
    }
}
