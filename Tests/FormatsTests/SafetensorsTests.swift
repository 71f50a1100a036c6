import XCTest
@testable import Formats
#if canImport(Glibc)
import Glibc
#endif

final class SafetensorsTests: XCTestCase {
    /// A safetensors file with the given header text and data section.
    func file(_ header: String, data: [UInt8] = []) -> [UInt8] {
        let h = Array(header.utf8)
        var out: [UInt8] = []
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: UInt64(h.count) >> UInt64(8 * k))) }
        return out + h + data
    }

    func parse(_ bytes: [UInt8]) throws -> SafetensorsFile {
        try SafetensorsFile.parse(bytes, source: "bad.safetensors")
    }

    // MARK: Conversions

    func testHalfKnownValues() {
        let cases: [(Float, UInt16)] = [
            (1.0, 0x3C00), (-2.5, 0xC100), (65504, 0x7BFF), (0, 0x0000), (-0.0, 0x8000),
            (0x1p-24, 0x0001), (0x1p-14, 0x0400), (0x1.ff8p-15, 0x03FF), (.infinity, 0x7C00), (-.infinity, 0xFC00),
            (0.333251953125, 0x3555),
        ]
        for (f, h) in cases {
            XCTAssertEqual(HalfConversion.floatToHalf(f), h, "\(f)")
            XCTAssertEqual(HalfConversion.halfToFloat(h), f, "\(h)")
        }
        XCTAssertEqual(HalfConversion.halfToFloat(0x0001), 5.9604645e-8)
        // Rounding: 5.96e-8 is closest to the smallest subnormal; half of it ties to even (zero).
        XCTAssertEqual(HalfConversion.floatToHalf(5.96e-8), 0x0001)
        XCTAssertEqual(HalfConversion.floatToHalf(0x1p-25), 0x0000)
        XCTAssertEqual(HalfConversion.floatToHalf(0x1.8p-24), 0x0002, "1.5 ulp ties to even (2)")
        XCTAssertEqual(HalfConversion.floatToHalf(65519), 0x7BFF)
        XCTAssertEqual(HalfConversion.floatToHalf(65520), 0x7C00, "the midpoint above 65504 rounds to infinity")
        XCTAssertEqual(HalfConversion.floatToHalf(1e10), 0x7C00)
        XCTAssertEqual(HalfConversion.floatToHalf(1 + 0x1p-11), 0x3C00, "tie rounds to even mantissa")
        XCTAssertEqual(HalfConversion.floatToHalf(1 + 3 * 0x1p-11), 0x3C02, "tie rounds to even mantissa")
        XCTAssertTrue(HalfConversion.halfToFloat(0x7E00).isNaN)
        XCTAssertEqual(HalfConversion.floatToHalf(.nan) & 0x7E00, 0x7E00)
    }

    func testBfloat16KnownValues() {
        XCTAssertEqual(HalfConversion.floatToBfloat16(1.0), 0x3F80)
        XCTAssertEqual(HalfConversion.floatToBfloat16(-2.5), 0xC020)
        XCTAssertEqual(HalfConversion.floatToBfloat16(1.00390625), 0x3F80, "1 + 2^-8 is a tie: rounds to even (down)")
        XCTAssertEqual(HalfConversion.floatToBfloat16(1.01171875), 0x3F82, "1 + 3*2^-8 is a tie: rounds to even (up)")
        XCTAssertEqual(HalfConversion.floatToBfloat16(Float(bitPattern: 0x3F80_8001)), 0x3F81, "just above the tie rounds up")
        XCTAssertEqual(HalfConversion.bfloat16ToFloat(0x3F81), 1.0078125)
        XCTAssertEqual(HalfConversion.floatToBfloat16(.greatestFiniteMagnitude), 0x7F80, "rounds to infinity")
        XCTAssertTrue(HalfConversion.bfloat16ToFloat(HalfConversion.floatToBfloat16(.nan)).isNaN)
        XCTAssertTrue(HalfConversion.bfloat16ToFloat(HalfConversion.floatToBfloat16(Float(bitPattern: 0x7F80_0001))).isNaN,
                      "a NaN whose payload sits in the low bits must not become infinity")
    }

    #if !((os(macOS) || targetEnvironment(macCatalyst)) && arch(x86_64))
    func testHalfMatchesSwiftFloat16Exhaustively() {
        for bits in 0...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let got = HalfConversion.halfToFloat(bits)
            if expected.isNaN {
                XCTAssertTrue(got.isNaN)
            } else if got.bitPattern != expected.bitPattern {
                XCTFail("half 0x\(String(bits, radix: 16)): \(got) != \(expected)")
                return
            }
        }
        // Encoding: every float32 bit pattern with a stride that visits all exponents and many
        // mantissas, plus the exact midpoints between neighbouring halves.
        var mismatches = 0
        for i in stride(from: UInt32(0), to: UInt32.max - 4099, by: 4099) {
            let f = Float(bitPattern: i)
            if f.isNaN { continue }
            if HalfConversion.floatToHalf(f) != Float16(f).bitPattern { mismatches += 1 }
        }
        for bits in UInt16(0)..<0x7C00 {
            let lo = Float(Float16(bitPattern: bits)), hi = Float(Float16(bitPattern: bits + 1))
            let mid = (lo + hi) / 2
            if HalfConversion.floatToHalf(mid) != Float16(mid).bitPattern { mismatches += 1 }
            if HalfConversion.floatToHalf(-mid) != Float16(-mid).bitPattern { mismatches += 1 }
        }
        XCTAssertEqual(mismatches, 0)
    }
    #endif

    // MARK: Round trips

    func testRoundTripAllDtypes() throws {
        let values: [Float] = [1, -2.5, 0.15625, 65504, -0.0, 3.140625, 1e-3, 7]
        let doubles: [Double] = [1, -2.5, 0.1, 1e-300, .pi, 6, 7, 8]
        let file = SafetensorsFile(metadata: [("format", "pt"), ("config", #"{"a": 1}"#)], tensors: [
            NamedArray(name: "w.f32", shape: [2, 4], floats: values),
            NamedArray(name: "w.f16", shape: [8], floats: values, dtype: .f16),
            NamedArray(name: "w.bf16", shape: [4, 2], floats: values, dtype: .bf16),
            NamedArray(name: "w.f64", shape: [2, 2, 2], doubles: doubles),
            NamedArray(name: "empty", shape: [0, 3], floats: []),
            NamedArray(name: "scalar", shape: [], floats: [42]),
            NamedArray(name: "labels", shape: [3], floats: [0, -7, 16_777_216], dtype: .i64),
        ])
        let bytes = try file.serialized()
        let back = try SafetensorsFile.parse(bytes, source: "memory")
        XCTAssertEqual(back.metadata.map(\.0), ["format", "config"])
        XCTAssertEqual(back.metadata("config"), #"{"a": 1}"#)
        XCTAssertEqual(back.tensors.map(\.name), file.tensors.map(\.name))
        XCTAssertEqual(back.tensors, file.tensors)
        XCTAssertEqual(back["w.f32"]?.floats(), values)
        XCTAssertEqual(back["w.f32"]?.shape, [2, 4])
        XCTAssertEqual(back["w.f16"]?.floats(), values.map { HalfConversion.halfToFloat(HalfConversion.floatToHalf($0)) })
        XCTAssertEqual(back["w.f16"]?.floats()[0...3], [1, -2.5, 0.15625, 65504])
        XCTAssertEqual(back["w.bf16"]?.floats()[0...2], [1, -2.5, 0.15625])
        XCTAssertEqual(back["w.f64"]?.doubles(), doubles)
        XCTAssertEqual(back["w.f64"]?.floats(), doubles.map(Float.init))
        XCTAssertEqual(back["w.f32"]?.doubles(), values.map(Double.init))
        XCTAssertEqual(back["empty"]?.floats(), [])
        XCTAssertEqual(back["scalar"]?.floats(), [42])
        XCTAssertEqual(back["labels"]?.doubles(), [0, -7, 16_777_216])
        XCTAssertEqual(back["labels"]?.bytes.prefix(16), [0, 0, 0, 0, 0, 0, 0, 0, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertNil(back["nope"])
        XCTAssertEqual(NamedArray(name: "x", shape: [2], floats: [1.5, -3], dtype: .f64).doubles(), [1.5, -3])
    }

    func testUnsignedBytes() throws {
        // Floats round to nearest and clamp to 0...255; NaN becomes 0.
        let u8 = NamedArray(name: "img", shape: [2, 3], floats: [0, 254.6, 300, -4, .nan, 127.4], dtype: .u8)
        XCTAssertEqual(u8.bytes, [0, 255, 255, 0, 0, 127])
        let file = SafetensorsFile(tensors: [u8, NamedArray(name: "raw", shape: [3], dtype: .u8, bytes: [9, 8, 7])])
        let back = try SafetensorsFile.parse(file.serialized(), source: "memory")
        XCTAssertEqual(back.tensors, file.tensors)
        XCTAssertEqual(back["raw"]?.floats(), [9, 8, 7])
        XCTAssertEqual(back["img"]?.doubles(), [0, 255, 255, 0, 0, 127])
    }

    func testExactByteLayout() throws {
        let file = SafetensorsFile(metadata: [("k", "v")], tensors: [
            NamedArray(name: "a", shape: [2], floats: [1, 2]),
            NamedArray(name: "b", shape: [1], floats: [-2], dtype: .bf16),
        ])
        let bytes = try file.serialized()
        let json = #"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}}"#
        var header = Array(json.utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        XCTAssertEqual(header.count % 8, 0)
        let expected = [UInt8(header.count), 0, 0, 0, 0, 0, 0, 0] + header
            + [0, 0, 0x80, 0x3F, 0, 0, 0, 0x40] + [0x00, 0xC0]
        XCTAssertEqual(bytes, expected)
    }

    func testMatchesReferenceImplementationOutput() throws {
        // Bytes of `safetensors.numpy.save({"a.weight": np.arange(1, 7, dtype=np.float32).reshape(2, 3)},
        // metadata={"format": "pt"})` from the official Python package (0.8.0).
        let header = #"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}} "#
        let data: [UInt8] = [0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64, 0, 0, 192, 64]
        let reference = [0x60, 0, 0, 0, 0, 0, 0, 0] + Array(header.utf8) + data
        let ours = SafetensorsFile(metadata: [("format", "pt")],
                                   tensors: [NamedArray(name: "a.weight", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])])
        XCTAssertEqual(try ours.serialized(), reference)
        XCTAssertEqual(try SafetensorsFile.parse(reference, source: "ref")["a.weight"]?.floats(), [1, 2, 3, 4, 5, 6])
    }

    func testWriteAndReadFile() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("model.safetensors")
        let file = SafetensorsFile(tensors: [NamedArray(name: "x", shape: [3], floats: [1, 2, 3])])
        try file.write(path: path)
        XCTAssertEqual(try SafetensorsFile.read(path: path)["x"]?.floats(), [1, 2, 3])
        // Overwriting replaces the file whole and leaves no temporary behind.
        let second = SafetensorsFile(tensors: [NamedArray(name: "y", shape: [1], floats: [9])])
        try second.write(path: path)
        XCTAssertEqual(try SafetensorsFile.read(path: path).tensors.map(\.name), ["y"])
        XCTAssertEqual(dir.entries(), ["model.safetensors"])
        XCTAssertEqual(try AtomicFile.read(path: path), try second.serialized())
    }

    func testWriteRefusesInconsistentTensors() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("bad.safetensors")
        let wrongCount = SafetensorsFile(tensors: [NamedArray(name: "x", shape: [4], floats: [1, 2, 3])])
        assertFormatError(try wrongCount.write(path: path), contains: [path, "\"x\"", "do not match shape [4]"])
        let duplicate = SafetensorsFile(tensors: [NamedArray(name: "x", shape: [1], floats: [1]),
                                                  NamedArray(name: "x", shape: [1], floats: [2])])
        assertFormatError(try duplicate.serialized(), contains: ["duplicate tensor name \"x\""])
        let reserved = SafetensorsFile(tensors: [NamedArray(name: "__metadata__", shape: [1], floats: [1])])
        assertFormatError(try reserved.serialized(), contains: ["__metadata__"])
        let negative = SafetensorsFile(tensors: [NamedArray(name: "n", shape: [-1], dtype: .f32, bytes: [])])
        assertFormatError(try negative.serialized(), contains: ["\"n\"", "invalid shape"])
        XCTAssertEqual(dir.entries(), [], "a refused write creates nothing")
        assertFormatError(try SafetensorsFile(tensors: []).write(path: dir.file("missing/dir/x.safetensors")),
                          contains: ["missing/dir/x.safetensors", "cannot create"])
    }

    func testPathReaderAppliesTheSameValidation() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let good = try SafetensorsFile(metadata: [("m", "x")], tensors: [
            NamedArray(name: "a", shape: [3], floats: [1, 2, 3]),
            NamedArray(name: "b", shape: [2], floats: [4, 5], dtype: .f16),
        ]).serialized()
        let path = dir.file("t.safetensors")
        for n in [0, 5, 8, 20, good.count - 1] {
            try AtomicFile.write(path: path, bytes: Array(good[0..<n]))
            XCTAssertThrowsError(try SafetensorsFile.read(path: path), "truncated to \(n)") { error in
                XCTAssertTrue("\(error)".hasPrefix(path), "\(error)")
            }
        }
        try AtomicFile.write(path: path, bytes: good)
        XCTAssertEqual(try SafetensorsFile.read(path: path).tensors, try SafetensorsFile.parse(good, source: "m").tensors)
        try AtomicFile.write(path: path, bytes: file(#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, data: [0, 0, 0, 0]))
        assertFormatError(try SafetensorsFile.read(path: path), contains: [path, "tensor \"w\"", "out of range"])
        assertFormatError(try SafetensorsFile.read(path: dir.path), contains: ["not a regular file"])
    }

    func testReadMissingFile() {
        assertFormatError(try SafetensorsFile.read(path: "/nonexistent/x.safetensors"), contains: ["/nonexistent/x.safetensors", "cannot open"])
    }

    // MARK: Validation

    func testRejectsShortFile() {
        assertFormatError(try parse([1, 2, 3]), contains: ["bad.safetensors", "shorter than the 8-byte header length"])
        assertFormatError(try parse([]), contains: ["0 bytes"])
    }

    func testRejectsHeaderLengthBeyondFile() {
        var bytes = file("{}")
        bytes[0] = 200
        assertFormatError(try parse(bytes), contains: ["header length 200", "beyond the end of the file"])
    }

    func testRejectsHugeHeader() {
        var bytes = [UInt8](repeating: 0, count: 16)
        let n: UInt64 = 200_000_000
        for k in 0..<8 { bytes[k] = UInt8(truncatingIfNeeded: n >> UInt64(8 * k)) }
        assertFormatError(try parse(bytes), contains: ["not a safetensors file", "header length of 200000000", "100 MB"])
        bytes = [UInt8](repeating: 0xFF, count: 16)
        assertFormatError(try parse(bytes), contains: ["100 MB"])
    }

    func testRejectsInvalidJSONAndNonObject() {
        assertFormatError(try parse(file("{not json}")), contains: ["not valid JSON"])
        assertFormatError(try parse(file(#"{"a": {"dtype": "F32"}} trailing"#)), contains: ["not valid JSON", "trailing"])
        assertFormatError(try parse(file("[1, 2]")), contains: ["header is not a JSON object"])
        assertFormatError(try parse(file("")), contains: ["not valid JSON"])
    }

    func testRejectsUnknownDtype() {
        assertFormatError(try parse(file(#"{"w": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}"#, data: [0, 0, 0, 0])),
                          contains: ["tensor \"w\"", "unknown dtype \"I32\""])
        assertFormatError(try parse(file(#"{"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}"#, data: [0, 0, 0, 0])),
                          contains: ["tensor \"w\"", "dtype"])
        assertFormatError(try parse(file(#"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#, data: [0, 0, 0, 0])),
                          contains: ["tensor \"w\"", "missing \"dtype\""])
    }

    func testRejectsBadShapes() {
        for shape in ["3", "[-1]", "[1.5]", #"["2"]"#, "[null]", "[1e300]"] {
            let header = #"{"w": {"dtype": "F32", "shape": \#(shape), "data_offsets": [0, 4]}}"#
            assertFormatError(try parse(file(header, data: [0, 0, 0, 0])),
                              contains: ["tensor \"w\"", "shape is not a list of non-negative integers"])
        }
        let overflow = #"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 4]}}"#
        assertFormatError(try parse(file(overflow, data: [0, 0, 0, 0])), contains: ["tensor \"w\"", "overflows"])
        // Fits in Int as an element count, but not once multiplied by the 8-byte element size.
        let byteOverflow = #"{"w": {"dtype": "F64", "shape": [4503599627370496, 512], "data_offsets": [0, 4]}}"#
        assertFormatError(try parse(file(byteOverflow, data: [0, 0, 0, 0])), contains: ["tensor \"w\"", "overflows"])
    }

    func testRejectsBadOffsets() {
        for offsets in ["[0]", "[0, 4, 8]", #"["0", 4]"#, "[0, 4.5]", "[-4, 0]", "7", "[0, null]"] {
            let header = #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": \#(offsets)}}"#
            assertFormatError(try parse(file(header, data: [0, 0, 0, 0])),
                              contains: ["tensor \"w\"", "data_offsets is not a list of two non-negative integers"])
        }
        let reversed = #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#
        assertFormatError(try parse(file(reversed, data: [0, 0, 0, 0])), contains: ["tensor \"w\"", "begin 4 is after end 0"])
        let missing = #"{"w": {"dtype": "F32", "shape": [1]}}"#
        assertFormatError(try parse(file(missing, data: [0, 0, 0, 0])), contains: ["tensor \"w\"", "missing \"data_offsets\""])
    }

    func testRejectsOffsetsOutOfRange() {
        let header = #"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#
        assertFormatError(try parse(file(header, data: [0, 0, 0, 0])),
                          contains: ["tensor \"w\"", "offsets [0, 8] out of range", "4 bytes"])
    }

    func testRejectsSizeMismatch() {
        let header = #"{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}"#
        assertFormatError(try parse(file(header, data: [UInt8](repeating: 0, count: 24))),
                          contains: ["tensor \"w\"", "span 16 bytes", "[2, 3] of F32 needs 24"])
    }

    func testRejectsOverlappingTensors() {
        let header = #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#
        assertFormatError(try parse(file(header, data: [UInt8](repeating: 0, count: 12))),
                          contains: ["\"a\"", "\"b\"", "overlapping"])
        // Order in the header does not matter, and a tensor inside another one is caught too.
        let nested = #"{"inner": {"dtype": "F16", "shape": [1], "data_offsets": [4, 6]}, "outer": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}"#
        assertFormatError(try parse(file(nested, data: [UInt8](repeating: 0, count: 12))),
                          contains: ["\"inner\"", "\"outer\"", "overlapping"])
        let afterLong = #"{"big": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "s1": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}"#
        assertFormatError(try parse(file(afterLong, data: [UInt8](repeating: 0, count: 16))), contains: ["overlapping"])
        // Touching ranges and empty tensors are fine.
        let fine = #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "e": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#
        XCTAssertEqual(try parse(file(fine, data: [UInt8](repeating: 0, count: 8))).tensors.map(\.name), ["a", "e", "b"])
    }

    func testRejectsDuplicateNames() {
        let header = #"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#
        assertFormatError(try parse(file(header, data: [UInt8](repeating: 0, count: 8))), contains: ["duplicate tensor name \"w\""])
    }

    func testRejectsBadMetadata() {
        assertFormatError(try parse(file(#"{"__metadata__": {"epoch": 3}}"#)),
                          contains: ["\"__metadata__\" value for key \"epoch\" is not a string"])
        assertFormatError(try parse(file(#"{"__metadata__": "x"}"#)), contains: ["\"__metadata__\" is not an object"])
        assertFormatError(try parse(file(#"{"__metadata__": {"a": "1", "a": "2"}}"#)), contains: ["duplicate", "\"a\""])
        XCTAssertEqual(try parse(file(#"{"__metadata__": {"epoch": "3"}}"#)).metadata("epoch"), "3")
    }

    func testTensorEntryMustBeObject() {
        assertFormatError(try parse(file(#"{"w": [1, 2]}"#)), contains: ["tensor \"w\"", "not an object"])
    }

    func testHostileNameStaysOneLineInMessages() {
        let header = #"{"evil\nname": {"dtype": "X", "shape": [], "data_offsets": [0, 0]}}"#
        assertFormatError(try parse(file(header)), contains: ["evil\\nname"])
    }

    func testEveryTruncationOfAValidFileIsRefusedCleanly() throws {
        let bytes = try SafetensorsFile(metadata: [("m", "x")], tensors: [
            NamedArray(name: "a", shape: [3], floats: [1, 2, 3]),
            NamedArray(name: "b", shape: [2], floats: [4, 5], dtype: .f16),
        ]).serialized()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try parse(Array(bytes[0..<n])), "truncated to \(n) bytes")
        }
        // Random byte corruption must never crash; it either parses or throws.
        for seed in 1...300 {
            var corrupt = bytes
            let noise = pseudoRandomBytes(4, seed: UInt64(seed))
            corrupt[Int(noise[0]) % corrupt.count] = noise[1]
            corrupt[Int(noise[2]) % corrupt.count] = noise[3]
            _ = try? parse(corrupt)
        }
    }

    // MARK: Reference fixture

    func testReferenceFixture() throws {
        let path = "/work/shared/fixtures/tvm_reference_small.safetensors"
        guard access(path, R_OK) == 0 else { throw XCTSkip("fixture \(path) is not present") }
        let file = try SafetensorsFile.read(path: path)
        // 149 tensors (params 44, teacher 44, grads 43, inputs 9, outputs 9), as Python's json module
        // counts them in this file's header.
        XCTAssertEqual(file.tensors.count, 149)
        var groups: [String: Int] = [:]
        for t in file.tensors { groups[String(t.name.prefix { $0 != "." }), default: 0] += 1 }
        XCTAssertEqual(groups, ["params": 44, "teacher": 44, "grads": 43, "inputs": 9, "outputs": 9])
        let images = try XCTUnwrap(file["inputs.images"])
        XCTAssertEqual(images.shape, [6, 4, 8, 8])
        XCTAssertEqual(images.dtype, .f32)
        XCTAssertEqual(images.floats().count, 6 * 4 * 8 * 8)
        XCTAssertTrue(images.floats().allSatisfy(\.isFinite))
        let config = try XCTUnwrap(file.metadata("config"))
        let parsed = try JSONValue.parse(config)
        XCTAssertNotNil(parsed.object)
        XCTAssertEqual(parsed["hidden"]?.int, 64)
        XCTAssertEqual(parsed["res"]?.int, 8)
        XCTAssertEqual(parsed["scale_param"]?.bool, true)
        // Re-serializing reproduces a file with identical content.
        let again = try SafetensorsFile.parse(file.serialized(), source: "re-serialized")
        XCTAssertEqual(again.tensors, file.tensors)
    }
}
