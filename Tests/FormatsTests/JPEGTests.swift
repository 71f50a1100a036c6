import XCTest
@testable import Formats

/// JPEG decoding through TurboJPEG. Pixel parity with PIL (gray, CMYK, YCCK, progressive 4:2:2 and the fixture's
/// 4:2:0 photographs) is checked by `ImageReferenceTests` against PIL's output; these tests cover the layouts,
/// PIL's CMYK arithmetic and the failures.
final class JPEGTests: XCTestCase {
    override func setUpWithError() throws {
        guard JPEG.isAvailable else { throw XCTSkip(JPEG.missingLibraryMessage) }
    }

    func read(_ name: String) throws -> [UInt8] { try AtomicFile.read(path: pilImagesResource(name)) }

    func testLayouts() throws {
        let gray = try JPEG.decode(read("gray.jpg"))
        XCTAssertEqual([gray.width, gray.height, gray.channels], [23, 17, 1])
        XCTAssertEqual(gray.pixels.count, 23 * 17)
        for (name, size) in [("cmyk.jpg", [20, 14]), ("ycck.jpg", [22, 18]), ("progressive422.jpg", [19, 21])] {
            let image = try JPEG.decode(read(name))
            XCTAssertEqual([image.width, image.height, image.channels], size + [3], name)
        }
        // Decoding by content: the same bytes through Image.decode, and a JPEG under a PNG name.
        XCTAssertEqual(try Image.decode(read("gray.jpg")), gray)
        let dir = try TempDir()
        defer { dir.remove() }
        try AtomicFile.write(path: dir.file("photo.png"), bytes: read("gray.jpg"))
        XCTAssertEqual(try Image.read(path: dir.file("photo.png")), gray)
    }

    /// PIL inverts the stored samples (Adobe convention) and computes nk − round(c·nk/255), nk = 255 − k.
    func testCMYKArithmeticOfPIL() {
        // Stored (c, m, y, k): k = 255 stored is no black ink; c = 255 stored is no cyan.
        let stored: [UInt8] = [255, 255, 255, 255,  0, 0, 0, 255,  10, 20, 30, 0,  127, 64, 200, 200]
        // (127, 200): c = 128, nk = 200, 128·200/255 = 100.39 -> 100, 200 − 100 = 100.
        // (64, 200): c = 191, 191·200/255 = 149.8 -> 150 -> 50. (200, 200): c = 55, 43.1 -> 43 -> 157.
        XCTAssertEqual(JPEG.rgbFromInvertedCMYK(stored), [255, 255, 255,  0, 0, 0,  0, 0, 0,  100, 50, 157])
    }

    func testRefusesDamagedFiles() throws {
        let good = try read("gray.jpg")
        assertFormatError(try JPEG.decode([]), contains: ["JPEG:", "empty"])
        assertFormatError(try JPEG.decode(Array("GIF89a....".utf8)), contains: ["JPEG:", "not a JPEG"])
        // Cut in the headers, and cut in the entropy-coded data (PIL refuses truncated files too).
        assertFormatError(try JPEG.decode(Array(good.prefix(60))), contains: ["JPEG:"])
        assertFormatError(try JPEG.decode(Array(good.prefix(good.count - 100))), contains: ["JPEG:", "truncated"])
        // A frame header claiming 0 components.
        var badFrame = good
        let sof = try XCTUnwrap(marker(0xC0, in: good).first)
        badFrame[sof + 9] = 0
        assertFormatError(try JPEG.decode(badFrame), contains: ["JPEG:"])
        // Junk between header segments is a libjpeg warning; PIL skips it, and the pixels are unchanged.
        let progressive = try read("progressive422.jpg")
        let dqt = try XCTUnwrap(marker(0xDB, in: progressive).first)
        var junk = progressive
        junk.insert(contentsOf: [0x12, 0x34], at: dqt)
        XCTAssertEqual(try JPEG.decode(junk), try JPEG.decode(progressive))
        // The same warning followed by a fatal error (a Huffman table of invalid index before the last scan):
        // refused with the fatal error's message, as PIL refuses it ("broken data stream").
        var fatalAfterWarning = junk
        fatalAfterWarning[try XCTUnwrap(marker(0xC4, in: junk).last) + 4] = 0x37
        assertFormatError(try JPEG.decode(fatalAfterWarning), contains: ["JPEG:", "DHT"])
        assertFormatError(try JPEG.decode(Array(progressive.prefix(progressive.count - 2))), contains: ["truncated"])
        // Anything neither JPEG nor PNG is named by what it looks like.
        assertFormatError(try Image.decode([]), contains: ["empty file"])
        assertFormatError(try Image.decode(Array("GIF89a....".utf8)), contains: ["not a JPEG or PNG", "GIF"])
        assertFormatError(try Image.decode(Array("<!DOCTYPE html>".utf8)), contains: ["HTML"])
        assertFormatError(try Image.decode([1, 2, 3]), contains: ["starts with bytes 01 02 03"])
    }

    /// Offsets of the marker 0xFF `code`.
    func marker(_ code: UInt8, in bytes: [UInt8]) -> [Int] {
        (0..<(bytes.count - 1)).filter { bytes[$0] == 0xFF && bytes[$0 + 1] == code }
    }

    func testReadNamesTheFile() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try AtomicFile.write(path: dir.file("cut.jpg"), bytes: Array(read("gray.jpg").prefix(400)))
        try AtomicFile.write(path: dir.file("empty.JPEG"), bytes: [])
        assertFormatError(try Image.read(path: dir.file("cut.jpg")), contains: [dir.file("cut.jpg"), "truncated"])
        assertFormatError(try Image.read(path: dir.file("empty.JPEG")), contains: [dir.file("empty.JPEG"), "empty file"])
        assertFormatError(try Image.read(path: dir.file("missing.jpg")), contains: [dir.file("missing.jpg"), "cannot open"])
    }

    /// Damaged files from strangers: every mutation either decodes or throws, never crashes, and a decoded
    /// image has the header's size.
    func testRandomDamageDecodesOrThrows() throws {
        for name in ["gray.jpg", "cmyk.jpg", "ycck.jpg", "progressive422.jpg"] {
            let good = try read(name)
            let reference = try JPEG.decode(good)
            for seed in 0..<150 {
                var damaged = good
                let noise = pseudoRandomBytes(6, seed: UInt64(seed + 1))
                damaged[(Int(noise[0]) << 8 | Int(noise[1])) % damaged.count] = noise[2]
                damaged[(Int(noise[3]) << 8 | Int(noise[4])) % damaged.count] ^= noise[5] | 1
                if seed % 5 == 0 { damaged.removeLast(Int(noise[5]) % (damaged.count / 2)) }
                do {
                    let image = try JPEG.decode(damaged)
                    XCTAssertEqual(image.pixels.count, image.width * image.height * image.channels)
                    if damaged.count == good.count && image.width == reference.width { XCTAssertEqual(image.channels, reference.channels) }
                } catch let e as FormatError {
                    XCTAssertTrue(e.message.hasPrefix("JPEG:"), e.message)
                }
            }
        }
    }

    /// Each decode has its own TurboJPEG instance and libjpeg-turbo keeps its messages per thread: threads may
    /// decode at once, good and damaged files alike.
    func testDecodesConcurrently() throws {
        let files = try ["gray.jpg", "cmyk.jpg", "ycck.jpg", "progressive422.jpg"].map(read)
        let expected = try files.map { try JPEG.decode($0) }
        let truncated = Array(files[3].prefix(files[3].count - 2))
        let results = UnsafeMutableBufferPointer<Bool>.allocate(capacity: 64)
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            if i % 2 == 0 {
                results[i] = (try? JPEG.decode(files[i / 2 % 4])) == expected[i / 2 % 4]
            } else {
                do { _ = try JPEG.decode(truncated); results[i] = false } catch { results[i] = "\(error)".contains("truncated") }
            }
        }
        XCTAssertTrue(results.allSatisfy { $0 })
    }

    func testMissingLibraryIsOneClearLine() {
        XCTAssertNil(TurboJPEG.load(["libturbojpeg-that-does-not-exist.so.0"]))
        XCTAssertFalse(JPEG.missingLibraryMessage.contains("\n"))
        XCTAssertTrue(JPEG.missingLibraryMessage.contains("apt-get install libturbojpeg0"))
    }

    func testRGBConversionAsPIL() {
        let gray = Image(width: 2, height: 1, channels: 1, pixels: [7, 200])
        XCTAssertEqual(gray.rgb().pixels, [7, 7, 7, 200, 200, 200])
        let grayAlpha = Image(width: 2, height: 1, channels: 2, pixels: [7, 0, 200, 128])
        XCTAssertEqual(grayAlpha.rgb().pixels, [7, 7, 7, 200, 200, 200])
        let rgba = Image(width: 1, height: 1, channels: 4, pixels: [1, 2, 3, 0])
        XCTAssertEqual(rgba.rgb(), Image(width: 1, height: 1, channels: 3, pixels: [1, 2, 3]))
    }
}
