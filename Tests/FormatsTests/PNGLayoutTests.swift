import XCTest
@testable import Formats

/// The PNG layouts beyond 8-bit gray/RGB(A): low bit depths, 16 bits, palettes and Adam7 interlacing, built here
/// by a tiny independent encoder. Parity with PIL on such files is in `ImageReferenceTests`.
final class PNGLayoutTests: XCTestCase {
    /// A PNG of the given IHDR fields whose sub-images (the image, or Adam7's seven passes) have rows produced by
    /// `packRow(x0, dx, y)`; every row is stored with filter type Up when `up`, else None.
    func png(width: Int, height: Int, depth: UInt8, colorType: UInt8, interlaced: Bool = false, chunks: [(String, [UInt8])] = [],
             up: Bool = false, packRow: (_ x0: Int, _ dx: Int, _ y: Int) -> [UInt8]) throws -> [UInt8] {
        let passes = interlaced ? [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
                                : [(0, 0, 1, 1)]
        var stream: [UInt8] = []
        for (x0, y0, dx, dy) in passes where x0 < width && y0 < height {
            var previous: [UInt8]? = nil
            for y in stride(from: y0, to: height, by: dy) {
                let row = packRow(x0, dx, y)
                if up, let p = previous {
                    stream.append(2)
                    stream += zip(row, p).map { $0 &- $1 }
                } else {
                    stream.append(0)
                    stream += row
                }
                previous = row
            }
        }
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var ihdr: [UInt8] = []
        PNGChunks.appendBE32(&ihdr, UInt32(width))
        PNGChunks.appendBE32(&ihdr, UInt32(height))
        ihdr += [depth, colorType, 0, 0, interlaced ? 1 : 0]
        PNGChunks.append(&out, type: "IHDR", data: ihdr[...])
        for (type, data) in chunks { PNGChunks.append(&out, type: type, data: data[...]) }
        PNGChunks.append(&out, type: "IDAT", data: try Zlib.deflate(stream, format: .zlib)[...])
        PNGChunks.append(&out, type: "IEND", data: [][...])
        return out
    }

    /// Packs `values` MSB first at `depth` bits each (8: bytes, 16: big-endian pairs).
    func pack(_ values: [Int], depth: Int) -> [UInt8] {
        if depth == 16 { return values.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] } }
        var out = [UInt8](repeating: 0, count: (values.count * depth + 7) / 8)
        for (i, v) in values.enumerated() {
            let bit = i * depth
            out[bit / 8] |= UInt8(v << (8 - depth - bit % 8))
        }
        return out
    }

    func testInterlacedMatchesEveryPassGeometry() throws {
        // Every size up to 10x10 leaves a different set of Adam7 passes empty.
        for width in 1...10 {
            for height in 1...10 {
                let value = { (x: Int, y: Int) in (x * 29 + y * 71) % 256 }
                let bytes = try png(width: width, height: height, depth: 8, colorType: 0, interlaced: true, up: true) { x0, dx, y in
                    stride(from: x0, to: width, by: dx).map { UInt8(value($0, y)) }
                }
                let image = try Image.decodePNG(bytes)
                let expected = (0..<(width * height)).map { UInt8(value($0 % width, $0 / width)) }
                XCTAssertEqual(image, Image(width: width, height: height, channels: 1, pixels: expected), "\(width)x\(height)")
            }
        }
    }

    func testLowBitDepthGrayScalesToFullRange() throws {
        for depth in [1, 2, 4] {
            let top = (1 << depth) - 1, width = 11
            let value = { (x: Int, y: Int) in (x + 3 * y) % (top + 1) }
            for interlaced in [false, true] {
                let bytes = try png(width: width, height: 3, depth: UInt8(depth), colorType: 0, interlaced: interlaced) { x0, dx, y in
                    self.pack(stride(from: x0, to: width, by: dx).map { value($0, y) }, depth: depth)
                }
                let image = try Image.decodePNG(bytes)
                XCTAssertEqual(image.channels, 1)
                XCTAssertEqual(image.pixels, (0..<(width * 3)).map { UInt8(value($0 % width, $0 / width) * 255 / top) },
                               "depth \(depth), interlaced \(interlaced)")
            }
        }
    }

    func testSixteenBitKeepsTheHighByte() throws {
        for (colorType, channels) in [(UInt8(0), 1), (4, 2), (2, 3), (6, 4)] {
            let width = 5, samples = { (x: Int, y: Int) in (0..<channels).map { c in (x * 4099 + y * 257 + c * 9001) % 65536 } }
            let bytes = try png(width: width, height: 2, depth: 16, colorType: colorType, up: true) { _, _, y in
                self.pack((0..<width).flatMap { samples($0, y) }, depth: 16)
            }
            let image = try Image.decodePNG(bytes)
            let expected = (0..<(width * 2)).flatMap { samples($0 % width, $0 / width).map { UInt8($0 >> 8) } }
            XCTAssertEqual(image, Image(width: width, height: 2, channels: channels, pixels: expected), "color type \(colorType)")
        }
    }

    func testPaletteExpandsWithAlphaAndBlackBeyondTheEnd() throws {
        let palette: [UInt8] = [10, 20, 30, 40, 50, 60, 70, 80, 90]  // three entries
        for depth in [1, 2, 4, 8] {
            let width = 6, top = min(3, (1 << depth) - 1)
            let index = { (x: Int, y: Int) in (x + y) % (top + 1) }  // index 3 (when it fits) is past the palette
            let rows = { (x0: Int, dx: Int, y: Int) in self.pack(stride(from: x0, to: width, by: dx).map { index($0, y) }, depth: depth) }
            func color(_ i: Int) -> [UInt8] { i < 3 ? Array(palette[(3 * i)..<(3 * i + 3)]) : [0, 0, 0] }

            let opaque = try Image.decodePNG(png(width: width, height: 2, depth: UInt8(depth), colorType: 3,
                                                 chunks: [("PLTE", palette)], packRow: rows))
            XCTAssertEqual(opaque.pixels, (0..<(width * 2)).flatMap { color(index($0 % width, $0 / width)) }, "depth \(depth)")
            // tRNS gives entries 0 and 1 an alpha; later entries are opaque.
            let alpha: [UInt8] = [0, 128]
            let translucent = try Image.decodePNG(png(width: width, height: 2, depth: UInt8(depth), colorType: 3,
                                                      chunks: [("PLTE", palette), ("tRNS", alpha)], packRow: rows))
            XCTAssertEqual(translucent.channels, 4)
            XCTAssertEqual(translucent.pixels, (0..<(width * 2)).flatMap { p -> [UInt8] in
                let i = index(p % width, p / width)
                return color(i) + [i < 2 ? alpha[i] : 255]
            }, "depth \(depth)")
        }
    }

    func testRefusesBadPalettes() {
        let rows = { (_: Int, _: Int, _: Int) -> [UInt8] in [0, 1] }
        assertFormatError(try Image.decodePNG(png(width: 2, height: 1, depth: 8, colorType: 3, chunks: [("PLTE", [1, 2])], packRow: rows)),
                          contains: ["PLTE chunk has length 2"])
        assertFormatError(try Image.decodePNG(png(width: 2, height: 1, depth: 8, colorType: 3,
                                                  chunks: [("PLTE", [1, 2, 3]), ("PLTE", [1, 2, 3])], packRow: rows)),
                          contains: ["duplicate PLTE"])
        // A gray image's tRNS (a color key) is ignored, as PIL's convert('RGB') ignores it.
        XCTAssertEqual(try Image.decodePNG(png(width: 2, height: 1, depth: 8, colorType: 0, chunks: [("tRNS", [0, 1])],
                                               packRow: rows)).pixels, [0, 1])
    }
}
