import XCTest
@testable import Formats

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
        let raw = try Zlib.inflate(Array(png[41..<(png.count - 16)]), format: .zlib, maxOutput: 100).output
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
        PNGChunks.append(&png, type: "IDAT", data: try Zlib.deflate([5, 0], format: .zlib)[...])
        PNGChunks.append(&png, type: "IEND", data: [][...])
        assertFormatError(try Image.decodePNG(png), contains: ["filter type 5"])
        var unknownCritical: [UInt8] = Array(png[0..<33])
        PNGChunks.append(&unknownCritical, type: "ABCD", data: [1][...])
        assertFormatError(try Image.decodePNG(unknownCritical), contains: ["critical chunk ABCD"])
    }
}
