import XCTest
@testable import Formats

final class ChecksumTests: XCTestCase {
    func testKnownCRC32Values() {
        XCTAssertEqual(Checksum.crc32(Array("IEND".utf8)), 0xAE42_6082)
        XCTAssertEqual(Checksum.crc32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(Checksum.crc32([]), 0)
        let split = Checksum.crc32(Array("6789".utf8), previous: Checksum.crc32(Array("12345".utf8)))
        XCTAssertEqual(split, 0xCBF4_3926, "running CRC continues across pieces")
    }

    func testKnownAdler32Values() {
        XCTAssertEqual(Checksum.adler32(Array("Wikipedia".utf8)), 0x11E6_0398)
        XCTAssertEqual(Checksum.adler32([]), 1)
        // Long input exercises the deferred modulo; value from Python's zlib.adler32.
        XCTAssertEqual(Checksum.adler32([UInt8](repeating: 0xFF, count: 100_000)), 0x149A_302C)
    }
}

final class DeflateTests: XCTestCase {
    /// zlib.compress(2069 bytes of space-separated words, 9) from Python: one dynamic-Huffman block.
    static let pythonDynamic: [UInt8] = [120, 218, 141, 85, 237, 110, 131, 48, 12, 124, 21, 94, 13, 161, 108, 101, 74, 203, 84, 162, 78, 123, 251, 13, 83, 206, 57, 159, 169, 250, 163, 64, 226, 111, 223, 217, 173, 203, 186, 14, 31, 117, 249, 25, 190, 30, 223, 195, 163, 212, 101, 154, 219, 239, 208, 202, 253, 58, 223, 198, 234, 31, 117, 83, 132, 252, 58, 182, 233, 50, 223, 62, 19, 139, 205, 207, 246, 195, 5, 116, 73, 69, 13, 213, 39, 233, 169, 216, 210, 94, 91, 217, 227, 217, 9, 206, 236, 154, 175, 224, 192, 74, 209, 10, 53, 82, 43, 227, 116, 41, 119, 115, 255, 52, 218, 47, 142, 183, 93, 90, 40, 216, 88, 76, 45, 217, 148, 200, 236, 56, 60, 37, 49, 27, 148, 84, 129, 80, 159, 142, 182, 207, 244, 252, 17, 83, 213, 8, 148, 146, 118, 129, 196, 232, 50, 211, 128, 10, 226, 110, 31, 34, 237, 170, 67, 131, 43, 231, 76, 200, 70, 234, 118, 99, 156, 144, 214, 246, 193, 56, 176, 31, 142, 153, 81, 120, 143, 227, 188, 178, 7, 243, 13, 209, 188, 102, 113, 112, 148, 35, 163, 144, 34, 168, 100, 17, 2, 114, 49, 17, 131, 136, 220, 91, 218, 212, 123, 175, 56, 35, 80, 36, 142, 82, 139, 223, 204, 232, 36, 27, 162, 22, 183, 144, 135, 148, 101, 236, 215, 211, 245, 49, 97, 107, 133, 154, 138, 214, 91, 162, 51, 194, 190, 152, 136, 184, 82, 58, 115, 94, 50, 111, 96, 124, 146, 187, 204, 81, 88, 34, 217, 222, 200, 249, 211, 109, 177, 78, 183, 167, 100, 50, 46, 140, 0, 141, 35, 29, 28, 8, 182, 80, 226, 33, 151, 23, 147, 200, 205, 77, 90, 205, 91, 31, 118, 4, 3, 196, 249, 144, 38, 149, 249, 227, 124, 45, 230, 179, 161, 252, 229, 236, 179, 63, 86, 193, 53, 72, 152, 7, 97, 91, 7, 206, 112, 139, 4, 246, 20, 241, 19, 134, 254, 171, 252, 1, 99, 13, 16, 221]

    /// zlib.compressobj(9, DEFLATED, 15, 9, Z_FIXED) of "hello hello hello, fixed Huffman!".
    static let pythonFixed: [UInt8] = [120, 1, 203, 72, 205, 201, 201, 87, 200, 64, 144, 58, 10, 105, 153, 21, 169, 41,
                                       10, 30, 165, 105, 105, 185, 137, 121, 138, 0, 206, 47, 11, 223]

    /// zlib.compress(b"stored block\\x00\\x01\\xff", 0): a stored block.
    static let pythonStored: [UInt8] = [120, 1, 1, 15, 0, 240, 255, 115, 116, 111, 114, 101, 100, 32, 98, 108, 111, 99,
                                        107, 0, 1, 255, 46, 184, 5, 189]

    func testInflatesPythonStreams() throws {
        XCTAssertEqual((Self.pythonDynamic[2] >> 1) & 3, 2, "first block is dynamic")
        let text = try Deflate.zlibDecompress(Self.pythonDynamic, maxOutput: 1 << 20)
        XCTAssertEqual(text.count, 2069)
        XCTAssertEqual(Checksum.crc32(text), 2_252_670_488, "CRC-32 computed by Python over the original")
        let words = Set(String(decoding: text, as: UTF8.self).split(separator: " ").map(String.init))
        XCTAssertEqual(words, ["velocity", "terminal", "flow", "matching", "step", "loss", "jvp", "teacher"])

        XCTAssertEqual((Self.pythonFixed[2] >> 1) & 3, 1, "block is fixed-Huffman")
        XCTAssertEqual(String(decoding: try Deflate.zlibDecompress(Self.pythonFixed, maxOutput: 100), as: UTF8.self),
                       "hello hello hello, fixed Huffman!")
        XCTAssertEqual(try Deflate.zlibDecompress(Self.pythonStored, maxOutput: 100), Array("stored block".utf8) + [0, 1, 255])
    }

    func testInflateRefusesCorruptStreams() {
        assertFormatError(try Deflate.zlibDecompress(Self.pythonDynamic, maxOutput: 1000), contains: ["exceeds", "1000"])
        var badAdler = Self.pythonFixed
        badAdler[badAdler.count - 1] ^= 1
        assertFormatError(try Deflate.zlibDecompress(badAdler, maxOutput: 100), contains: ["Adler-32 mismatch"])
        var badHeader = Self.pythonFixed
        badHeader[1] ^= 1
        assertFormatError(try Deflate.zlibDecompress(badHeader, maxOutput: 100), contains: ["header check"])
        var badLength = Self.pythonStored
        badLength[5] ^= 0xFF
        assertFormatError(try Deflate.zlibDecompress(badLength, maxOutput: 100), contains: ["stored block length"])
        // Block type 3 is reserved.
        assertFormatError(try Deflate.inflate([0x07], maxOutput: 10), contains: ["block type 3"])
        // A fixed block whose first symbol is a match with distance 1 and no output yet.
        var w = Deflate.BitWriter()
        w.put(1, 1); w.put(1, 2)
        let code = Deflate.fixedLiteralCodes[257]
        w.put(code.bits, code.length)
        w.put(Deflate.fixedDistanceCodes[0].bits, 5)
        w.flush()
        assertFormatError(try Deflate.inflate(w.out, maxOutput: 10), contains: ["before the start of the output"])
        for n in 0..<(Self.pythonDynamic.count - 4) {
            XCTAssertThrowsError(try Deflate.zlibDecompress(Array(Self.pythonDynamic[0..<n]), maxOutput: 1 << 20), "truncated to \(n)")
        }
        // Random corruption must never crash.
        for seed in 1...500 {
            var corrupt = Self.pythonDynamic
            let noise = pseudoRandomBytes(4, seed: UInt64(seed))
            corrupt[2 + Int(noise[0]) % (corrupt.count - 2)] ^= noise[1] | 1
            corrupt[2 + Int(noise[2]) % (corrupt.count - 2)] ^= noise[3]
            _ = try? Deflate.zlibDecompress(corrupt, maxOutput: 1 << 16)
            _ = try? Deflate.inflate(pseudoRandomBytes(64, seed: UInt64(seed) &* 7919), maxOutput: 1 << 16)
        }
    }

    func testRefusesZipBomb() throws {
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        let bomb = Deflate.zlibCompress(zeros)
        XCTAssertLessThan(bomb.count, 2000)
        assertFormatError(try Deflate.zlibDecompress(bomb, maxOutput: 1 << 19), contains: ["exceeds"])
        XCTAssertEqual(try Deflate.zlibDecompress(bomb, maxOutput: 1 << 20), zeros)
    }

    func testInflatePrefixStopsWhereAsked() throws {
        let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7 / 3) }
        let deflated = Deflate.compress(data)
        for count in [0, 1, 258, 5000] {
            XCTAssertEqual(try Deflate.inflatePrefix(deflated, count: count), Array(data.prefix(count)))
        }
        XCTAssertEqual(try Deflate.inflatePrefix(deflated, count: 400_000), data)
        XCTAssertEqual(try Deflate.inflatePrefix(deflated, count: .max), data)
        // Everything behind the prefix is left undecoded, so damage there goes unnoticed.
        let cut = Array(deflated.prefix(deflated.count / 2))
        XCTAssertEqual(try Deflate.inflatePrefix(cut, count: 100), Array(data.prefix(100)))
        XCTAssertThrowsError(try Deflate.inflate(cut, maxOutput: 1 << 20))
        // Damage inside the prefix is an error, not a short answer.
        assertFormatError(try Deflate.inflatePrefix([0x07], count: 10), contains: ["invalid block type 3"])
        assertFormatError(try Deflate.inflatePrefix([0x01, 5, 0, 0xFA, 0xFF, 1], count: 3), contains: ["stored block runs past"])
    }

    func testCompressRoundTrips() throws {
        var inputs: [[UInt8]] = [
            [], [42], Array("abcabcabcabcabcabc".utf8), [UInt8](repeating: 7, count: 1000),
            pseudoRandomBytes(100_000, seed: 3),
            (0..<300_000).map { UInt8(truncatingIfNeeded: ($0 / 7) &* 31 ^ ($0 % 97)) },
        ]
        inputs.append(Array(Self.pythonStored[0..<10]) + [UInt8](repeating: 0, count: 70_000) + pseudoRandomBytes(5000, seed: 9))
        // Mixed: text-like runs with far repeats, longer than one block of symbols.
        var mixed: [UInt8] = []
        for i in 0..<4000 { mixed += Array("sample \(i % 37) loss=\(i % 11).\(i % 5)\n".utf8) }
        inputs.append(mixed)
        for input in inputs {
            let compressed = Deflate.zlibCompress(input)
            XCTAssertEqual(try Deflate.zlibDecompress(compressed, maxOutput: input.count), input, "length \(input.count)")
            let raw = Deflate.compress(input)
            let (out, end) = try Deflate.inflate(raw, maxOutput: input.count)
            XCTAssertEqual(out, input)
            XCTAssertEqual(end, raw.count, "inflate reports where the stream ends")
        }
        // zlib -9 gives 9523 bytes for this input.
        XCTAssertLessThan(Deflate.compress(mixed).count, 9600, "repetitive text compresses about as well as zlib -9")
        XCTAssertLessThan(Deflate.compress([UInt8](repeating: 7, count: 1000)).count, 20)
        let random = pseudoRandomBytes(100_000, seed: 3)
        XCTAssertLessThan(Deflate.compress(random).count, random.count + 100, "incompressible data falls back to stored")
    }

    func testHuffmanLengthsRespectLimit() {
        // Fibonacci frequencies force a very deep unrestricted tree.
        var freq = [Int](repeating: 0, count: 30)
        var a = 1, b = 1
        for i in 0..<30 { freq[i] = a; (a, b) = (b, a + b) }
        let lengths = Deflate.huffmanLengths(freq, maxBits: 15)
        XCTAssertLessThanOrEqual(lengths.max() ?? 0, 15)
        var kraft = 0.0
        for l in lengths where l > 0 { kraft += 1 / Double(1 << Int(l)) }
        XCTAssertLessThanOrEqual(kraft, 1.0)
        XCTAssertEqual(Deflate.huffmanLengths([0, 0, 5], maxBits: 7).filter { $0 > 0 }.count, 2, "a lone symbol gets a partner")
    }
}

final class PNGTests: XCTestCase {
    /// A 7x5 RGBA PNG built in Python with rows filtered None, Sub, Up, Average, Paeth in turn, plus a
    /// tEXt chunk; pixel (x, y) channel c is (x*37 + y*91 + c*53) % 256.
    static let pythonPNG: [UInt8] = [137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 7, 0, 0, 0, 5, 8, 6, 0, 0, 0, 137, 154, 246, 216, 0, 0, 0, 22, 116, 69, 88, 116, 67, 111, 109, 109, 101, 110, 116, 0, 109, 97, 100, 101, 32, 98, 121, 32, 112, 121, 116, 104, 111, 110, 153, 51, 147, 163, 0, 0, 0, 73, 73, 68, 65, 84, 120, 218, 99, 96, 48, 205, 154, 175, 26, 213, 127, 196, 171, 126, 203, 203, 252, 37, 55, 249, 166, 156, 252, 103, 188, 243, 157, 114, 196, 61, 97, 143, 90, 198, 232, 9, 71, 127, 169, 226, 0, 76, 209, 120, 0, 243, 182, 139, 217, 109, 7, 28, 80, 192, 1, 48, 2, 98, 22, 144, 10, 36, 147, 162, 193, 8, 202, 2, 0, 135, 88, 45, 245, 158, 149, 163, 64, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130]

    func testDecodesAllFilterTypesFromPython() throws {
        let image = try Image.decodePNG(Self.pythonPNG)
        XCTAssertEqual(image.width, 7)
        XCTAssertEqual(image.height, 5)
        XCTAssertEqual(image.channels, 4)
        var expected: [UInt8] = []
        for y in 0..<5 { for x in 0..<7 { for c in 0..<4 { expected.append(UInt8((x * 37 + y * 91 + c * 53) % 256)) } } }
        XCTAssertEqual(image.pixels, expected)
    }

    func testRoundTripAllChannelCounts() throws {
        for channels in 1...4 {
            for (w, h) in [(1, 1), (3, 2), (17, 9), (64, 33)] {
                let pixels = (0..<(w * h * channels)).map { UInt8(truncatingIfNeeded: ($0 * 7) ^ ($0 / (w * channels)) * 29) }
                let image = Image(width: w, height: h, channels: channels, pixels: pixels)
                let png = try image.pngBytes()
                XCTAssertEqual(try Image.decodePNG(png), image, "\(w)x\(h)x\(channels)")
            }
        }
        let noise = Image(width: 50, height: 40, channels: 3, pixels: pseudoRandomBytes(6000, seed: 5))
        XCTAssertEqual(try Image.decodePNG(noise.pngBytes()), noise)
    }

    func testExactChunkLayout() throws {
        let image = Image(width: 2, height: 1, channels: 3, pixels: [255, 0, 0, 0, 255, 0])
        let png = try image.pngBytes()
        XCTAssertEqual(Array(png[0..<8]), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        let ihdr: [UInt8] = [0, 0, 0, 13] + Array("IHDR".utf8) + [0, 0, 0, 2, 0, 0, 0, 1, 8, 2, 0, 0, 0]
        XCTAssertEqual(Array(png[8..<29]), ihdr)
        let crc = Checksum.crc32(png[12..<29])
        XCTAssertEqual(Array(png[29..<33]), [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)])
        XCTAssertEqual(Array(png[33..<37]), [0, 0, 0, UInt8(png.count - 57)])
        XCTAssertEqual(Array(png[37..<41]), Array("IDAT".utf8))
        XCTAssertEqual(Array(png.suffix(12)), [0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82])
        // The IDAT payload is a zlib stream of the filtered rows.
        let raw = try Deflate.zlibDecompress(Array(png[41..<(png.count - 16)]), maxOutput: 100)
        XCTAssertEqual(raw.count, 1 + 6)
        XCTAssertLessThanOrEqual(raw[0], 4)
    }

    func testWritePNGFile() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let image = Image(width: 4, height: 4, channels: 1, pixels: (0..<16).map { UInt8($0 * 16) })
        try image.writePNG(path: dir.file("g.png"))
        XCTAssertEqual(try Image.readPNG(path: dir.file("g.png")), image)
        XCTAssertEqual(dir.entries(), ["g.png"])
        let bad = Image(width: 4, height: 4, channels: 1, pixels: [1, 2, 3])
        assertFormatError(try bad.writePNG(path: dir.file("bad.png")), contains: ["bad.png", "3 pixel bytes"])
        assertFormatError(try Image(width: 0, height: 1, channels: 3, pixels: []).pngBytes(), contains: ["invalid size"])
        assertFormatError(try Image(width: 1, height: 1, channels: 5, pixels: [0, 0, 0, 0, 0]).pngBytes(), contains: ["5 channels"])
        XCTAssertEqual(dir.entries(), ["g.png"])
    }

    /// A PNG with a hand-made IHDR (valid CRC) followed by the IDAT/IEND of a real image.
    func withHeader(width: UInt32 = 7, height: UInt32 = 5, depth: UInt8 = 8, colorType: UInt8 = 6, interlace: UInt8 = 0) -> [UInt8] {
        var png = Self.pythonPNG
        var data: [UInt8] = []
        PNGChunks.appendBE32(&data, width)
        PNGChunks.appendBE32(&data, height)
        data += [depth, colorType, 0, 0, interlace]
        png.replaceSubrange(16..<29, with: data)
        let crc = Checksum.crc32(png[12..<29])
        png.replaceSubrange(29..<33, with: [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)])
        return png
    }

    func testRefusesUnsupportedAndCorruptPNGs() {
        XCTAssertNoThrow(try Image.decodePNG(withHeader()))
        // Valid layouts whose data size does not match this image's stream.
        assertFormatError(try Image.decodePNG(withHeader(interlace: 1)), contains: ["image data"])
        assertFormatError(try Image.decodePNG(withHeader(depth: 16)), contains: ["image data"])
        assertFormatError(try Image.decodePNG(withHeader(interlace: 2)), contains: ["interlace method 2"])
        assertFormatError(try Image.decodePNG(withHeader(depth: 4)), contains: ["bit depth 4 is invalid for color type 6"])
        assertFormatError(try Image.decodePNG(withHeader(depth: 16, colorType: 3)), contains: ["bit depth 16 is invalid for color type 3"])
        assertFormatError(try Image.decodePNG(withHeader(colorType: 3)), contains: ["palette image without a PLTE chunk"])
        assertFormatError(try Image.decodePNG(withHeader(colorType: 5)), contains: ["color type 5"])
        assertFormatError(try Image.decodePNG(withHeader(width: 0)), contains: ["invalid image size"])
        assertFormatError(try Image.decodePNG(withHeader(width: 1 << 16, height: 1 << 16)), contains: ["pixel limit"])
        assertFormatError(try Image.decodePNG(withHeader(width: 8)), contains: ["image data"])
        assertFormatError(try Image.decodePNG(withHeader(width: 6)), contains: ["exceeds"])
        var badCRC = Self.pythonPNG
        badCRC[20] ^= 1
        assertFormatError(try Image.decodePNG(badCRC), contains: ["CRC mismatch in IHDR"])
        assertFormatError(try Image.decodePNG(Array(Self.pythonPNG.prefix(100))), contains: ["PNG"])
        assertFormatError(try Image.decodePNG(Array("GIF89a".utf8)), contains: ["signature"])
        for n in 0..<Self.pythonPNG.count {
            XCTAssertThrowsError(try Image.decodePNG(Array(Self.pythonPNG[0..<n])), "truncated to \(n)")
        }
    }

    func testRefusesBadFilterType() throws {
        // A 1x1 gray image whose only row claims filter type 5.
        var png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        PNGChunks.append(&png, type: "IHDR", data: [0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0][...])
        PNGChunks.append(&png, type: "IDAT", data: Deflate.zlibCompress([5, 0])[...])
        PNGChunks.append(&png, type: "IEND", data: [][...])
        assertFormatError(try Image.decodePNG(png), contains: ["filter type 5"])
        var unknownCritical: [UInt8] = Array(png[0..<33])
        PNGChunks.append(&unknownCritical, type: "ABCD", data: [1][...])
        assertFormatError(try Image.decodePNG(unknownCritical), contains: ["critical chunk ABCD"])
    }
}
