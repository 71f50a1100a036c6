import XCTest
@testable import Formats

final class ZlibTests: XCTestCase {
    /// zlib.compress(2069 bytes of space-separated words, 9) from Python: one dynamic-Huffman block.
    static let pythonDynamic: [UInt8] = [120, 218, 141, 85, 237, 110, 131, 48, 12, 124, 21, 94, 13, 161, 108, 101, 74, 203, 84, 162, 78, 123, 251, 13, 83, 206, 57, 159, 169, 250, 163, 64, 226, 111, 223, 217, 173, 203, 186, 14, 31, 117, 249, 25, 190, 30, 223, 195, 163, 212, 101, 154, 219, 239, 208, 202, 253, 58, 223, 198, 234, 31, 117, 83, 132, 252, 58, 182, 233, 50, 223, 62, 19, 139, 205, 207, 246, 195, 5, 116, 73, 69, 13, 213, 39, 233, 169, 216, 210, 94, 91, 217, 227, 217, 9, 206, 236, 154, 175, 224, 192, 74, 209, 10, 53, 82, 43, 227, 116, 41, 119, 115, 255, 52, 218, 47, 142, 183, 93, 90, 40, 216, 88, 76, 45, 217, 148, 200, 236, 56, 60, 37, 49, 27, 148, 84, 129, 80, 159, 142, 182, 207, 244, 252, 17, 83, 213, 8, 148, 146, 118, 129, 196, 232, 50, 211, 128, 10, 226, 110, 31, 34, 237, 170, 67, 131, 43, 231, 76, 200, 70, 234, 118, 99, 156, 144, 214, 246, 193, 56, 176, 31, 142, 153, 81, 120, 143, 227, 188, 178, 7, 243, 13, 209, 188, 102, 113, 112, 148, 35, 163, 144, 34, 168, 100, 17, 2, 114, 49, 17, 131, 136, 220, 91, 218, 212, 123, 175, 56, 35, 80, 36, 142, 82, 139, 223, 204, 232, 36, 27, 162, 22, 183, 144, 135, 148, 101, 236, 215, 211, 245, 49, 97, 107, 133, 154, 138, 214, 91, 162, 51, 194, 190, 152, 136, 184, 82, 58, 115, 94, 50, 111, 96, 124, 146, 187, 204, 81, 88, 34, 217, 222, 200, 249, 211, 109, 177, 78, 183, 167, 100, 50, 46, 140, 0, 141, 35, 29, 28, 8, 182, 80, 226, 33, 151, 23, 147, 200, 205, 77, 90, 205, 91, 31, 118, 4, 3, 196, 249, 144, 38, 149, 249, 227, 124, 45, 230, 179, 161, 252, 229, 236, 179, 63, 86, 193, 53, 72, 152, 7, 97, 91, 7, 206, 112, 139, 4, 246, 20, 241, 19, 134, 254, 171, 252, 1, 99, 13, 16, 221]

    /// zlib.compressobj(9, DEFLATED, 15, 9, Z_FIXED) of "hello hello hello, fixed Huffman!".
    static let pythonFixed: [UInt8] = [120, 1, 203, 72, 205, 201, 201, 87, 200, 64, 144, 58, 10, 105, 153, 21, 169, 41,
                                       10, 30, 165, 105, 105, 185, 137, 121, 138, 0, 206, 47, 11, 223]

    /// zlib.compress(b"stored block\\x00\\x01\\xff", 0): a stored block.
    static let pythonStored: [UInt8] = [120, 1, 1, 15, 0, 240, 255, 115, 116, 111, 114, 101, 100, 32, 98, 108, 111, 99,
                                        107, 0, 1, 255, 46, 184, 5, 189]

    /// The raw DEFLATE inside a zlib stream: without the 2-byte header and the 4-byte Adler-32.
    static func raw(_ zlibStream: [UInt8]) -> [UInt8] { Array(zlibStream[2..<(zlibStream.count - 4)]) }

    func testDecodesPythonStreamsInBothFormats() throws {
        for (stream, expectedCount) in [(Self.pythonDynamic, 2069), (Self.pythonFixed, 33), (Self.pythonStored, 15)] {
            let zlib = try Zlib.inflate(stream, format: .zlib, maxOutput: 1 << 20)
            XCTAssertEqual(zlib.output.count, expectedCount)
            XCTAssertEqual(zlib.end, stream.count, "the end is after the Adler-32 trailer")
            let raw = try Zlib.inflate(Self.raw(stream), format: .raw, maxOutput: 1 << 20)
            XCTAssertEqual(raw.output, zlib.output)
            XCTAssertEqual(raw.end, stream.count - 6)
        }
        let text = try Zlib.inflate(Self.pythonDynamic, format: .zlib, maxOutput: 1 << 20).output
        XCTAssertEqual(Checksum.crc32(text), 2_252_670_488, "CRC-32 computed by Python over the original")
        XCTAssertEqual(String(decoding: try Zlib.inflate(Self.pythonFixed, format: .zlib, maxOutput: 100).output, as: UTF8.self),
                       "hello hello hello, fixed Huffman!")
        XCTAssertEqual(try Zlib.inflate(Self.pythonStored, format: .zlib, maxOutput: 100).output,
                       Array("stored block".utf8) + [0, 1, 255])
    }

    func testStartAndEndLocateAStreamInsideAFile() throws {
        let data = Array("a stream between other bytes, as in a gzip or ZIP file".utf8)
        let deflated = try Zlib.deflate(data, format: .raw)
        let file = [9, 9, 9] + deflated + [7, 7]
        let decoded = try Zlib.inflate(file, start: 3, format: .raw, maxOutput: 1000)
        XCTAssertEqual(decoded.output, data)
        XCTAssertEqual(decoded.end, 3 + deflated.count, "the bytes after the stream are not part of it")
    }

    func testRefusesCorruptStreams() {
        var badAdler = Self.pythonFixed
        badAdler[badAdler.count - 1] ^= 1
        assertFormatError(try Zlib.inflate(badAdler, format: .zlib, maxOutput: 100), contains: ["zlib stream", "incorrect data check"])
        var badHeader = Self.pythonFixed
        badHeader[1] ^= 1
        assertFormatError(try Zlib.inflate(badHeader, format: .zlib, maxOutput: 100), contains: ["incorrect header check"])
        var badLength = Self.pythonStored
        badLength[5] ^= 0xFF
        assertFormatError(try Zlib.inflate(badLength, format: .zlib, maxOutput: 100), contains: ["invalid stored block lengths"])
        assertFormatError(try Zlib.inflate([0x07], format: .raw, maxOutput: 10), contains: ["DEFLATE data", "invalid block type"])
        // A fixed-code block whose first symbol is a match of length 3 at distance 1, before any output.
        assertFormatError(try Zlib.inflate([3, 2, 0], format: .raw, maxOutput: 10), contains: ["invalid distance too far back"])
        // A dictionary id (FDICT) that no format read here provides.
        assertFormatError(try Zlib.inflate([0x78, 0xBB, 0, 0, 0, 1, 3, 0], format: .zlib, maxOutput: 10),
                          contains: ["preset dictionary"])
        for n in 0..<(Self.pythonDynamic.count - 1) {
            assertFormatError(try Zlib.inflate(Array(Self.pythonDynamic[0..<n]), format: .zlib, maxOutput: 1 << 20),
                              contains: ["zlib stream"])
        }
        assertFormatError(try Zlib.inflate(Self.raw(Self.pythonDynamic).dropLast(), format: .raw, maxOutput: 1 << 20),
                          contains: ["DEFLATE data ends early"])
        // Random corruption is refused or decoded, never a crash.
        for seed in 1...500 {
            var corrupt = Self.pythonDynamic
            let noise = pseudoRandomBytes(4, seed: UInt64(seed))
            corrupt[2 + Int(noise[0]) % (corrupt.count - 2)] ^= noise[1] | 1
            corrupt[2 + Int(noise[2]) % (corrupt.count - 2)] ^= noise[3]
            _ = try? Zlib.inflate(corrupt, format: .zlib, maxOutput: 1 << 16)
            _ = try? Zlib.inflate(pseudoRandomBytes(64, seed: UInt64(seed) &* 7919), format: .raw, maxOutput: 1 << 16)
        }
    }

    func testOutputLimitStopsABomb() throws {
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        let bomb = try Zlib.deflate(zeros, format: .zlib, level: 9)
        XCTAssertLessThan(bomb.count, 2000)
        let capped = try Zlib.inflate(bomb, format: .zlib, maxOutput: 1 << 19)
        XCTAssertNil(capped.end, "the stream goes on past the limit")
        XCTAssertEqual(capped.output.count, 1 << 19)
        let exact = try Zlib.inflate(bomb, format: .zlib, maxOutput: 1 << 20)
        XCTAssertEqual(exact.end, bomb.count, "a stream of exactly the limit is complete")
        XCTAssertEqual(exact.output, zeros)
        XCTAssertNil(try Zlib.inflate(bomb, format: .zlib, maxOutput: (1 << 20) - 1).end)
        XCTAssertEqual(try Zlib.inflate(bomb, format: .zlib, maxOutput: .max).output.count, 1 << 20)
    }

    func testPrefixStopsWhereAsked() throws {
        let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7 / 3) }
        let deflated = try Zlib.deflate(data, format: .raw)
        for count in [0, 1, 258, 5000] {
            let prefix = try Zlib.inflate(deflated, format: .raw, maxOutput: count)
            XCTAssertEqual(prefix.output, Array(data.prefix(count)))
            XCTAssertNil(prefix.end)
        }
        XCTAssertEqual(try Zlib.inflate(deflated, format: .raw, maxOutput: 400_000).output, data)
        // Everything behind the prefix is left undecoded, so damage there goes unnoticed.
        let cut = Array(deflated.prefix(deflated.count / 2))
        XCTAssertEqual(try Zlib.inflate(cut, format: .raw, maxOutput: 100).output, Array(data.prefix(100)))
        assertFormatError(try Zlib.inflate(cut, format: .raw, maxOutput: 1 << 20), contains: ["ends early"])
        // Damage inside the prefix is an error, not a short answer.
        assertFormatError(try Zlib.inflate([1, 5, 0, 0xFA, 0xFF, 1], format: .raw, maxOutput: 3), contains: ["ends early"])
    }

    func testRoundTripsAtEveryLevel() throws {
        var inputs: [[UInt8]] = [
            [], [42], Array("abcabcabcabcabcabc".utf8), [UInt8](repeating: 7, count: 1000),
            pseudoRandomBytes(100_000, seed: 3),
            (0..<300_000).map { UInt8(truncatingIfNeeded: ($0 / 7) &* 31 ^ ($0 % 97)) },
        ]
        var text: [UInt8] = []
        for i in 0..<4000 { text += Array("sample \(i % 37) loss=\(i % 11).\(i % 5)\n".utf8) }
        inputs.append(text)
        for input in inputs {
            for format in [Zlib.Format.raw, .zlib] {
                for level in [0, 1, 6, 9] {
                    let compressed = try Zlib.deflate(input, format: format, level: level)
                    let decoded = try Zlib.inflate(compressed, format: format, maxOutput: input.count)
                    XCTAssertEqual(decoded.output, input, "\(format), level \(level), length \(input.count)")
                    XCTAssertEqual(decoded.end, compressed.count)
                }
            }
        }
        XCTAssertLessThan(try Zlib.deflate(text, format: .raw, level: 9).count, 10_000, "repetitive text compresses")
        XCTAssertGreaterThan(try Zlib.deflate(text, format: .raw, level: 0).count, text.count, "level 0 stores")
        let random = pseudoRandomBytes(100_000, seed: 3)
        XCTAssertLessThan(try Zlib.deflate(random, format: .raw).count, random.count + 100, "incompressible data is stored")
    }

    func testMissingLibraryIsOneClearError() {
        guard case .failure(let error) = Zlib.load(candidates: ["libz-that-does-not-exist.so.9"]) else {
            return XCTFail("a library that does not exist was loaded")
        }
        XCTAssertEqual(error.message, "zlib (libz-that-does-not-exist.so.9) was not found: install Debian's zlib1g to read or write PNG, gzip and ZIP files")
    }

    func testStreamLayoutMatchesZlibOnLP64() {
        // z_stream's field offsets in zlib.h on 64-bit Linux; zlib itself checks only the total size.
        let offsets: [(PartialKeyPath<ZStream>, Int)] = [
            (\ZStream.nextIn, 0), (\ZStream.availIn, 8), (\ZStream.totalIn, 16), (\ZStream.nextOut, 24),
            (\ZStream.availOut, 32), (\ZStream.totalOut, 40), (\ZStream.message, 48), (\ZStream.state, 56),
            (\ZStream.allocate, 64), (\ZStream.free, 72), (\ZStream.opaque, 80), (\ZStream.dataType, 88),
            (\ZStream.adler, 96), (\ZStream.reserved, 104),
        ]
        for (path, offset) in offsets { XCTAssertEqual(MemoryLayout<ZStream>.offset(of: path), offset, "\(path)") }
        XCTAssertEqual(MemoryLayout<ZStream>.size, 112)
    }
}
