// Tests of the Data module's image data sets: gzip, IDX, ImageDataset loaders, batches and the sampler.
// Files are written here byte by byte (stored-block gzip, PNG and .npy built by hand), so the readers
// are checked against independent encoders, not only against the module's own writers.
import Foundation
import XCTest
import TensorCore
import Data

// MARK: - Independent encoders

enum Bytes {
    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }

    static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        for x in bytes { a = (a + UInt32(x)) % 65521; b = (b + a) % 65521 }
        return b << 16 | a
    }

    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    static func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }

    /// Raw DEFLATE made of stored blocks (at most 65535 bytes each).
    static func storedDeflate(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var pos = 0
        repeat {
            let n = min(65535, data.count - pos)
            let final = pos + n == data.count
            out.append(final ? 1 : 0)
            out += le16(n) + le16(~n & 0xFFFF)
            out += data[pos..<(pos + n)]
            pos += n
        } while pos < data.count
        return out
    }

    /// One gzip member with stored blocks and any of the optional header fields.
    static func gzipMember(_ data: [UInt8], extra: [UInt8]? = nil, name: String? = nil, comment: String? = nil,
                           headerCRC: Bool = false) -> [UInt8] {
        var flags: UInt8 = 0
        if extra != nil { flags |= 0x04 }
        if name != nil { flags |= 0x08 }
        if comment != nil { flags |= 0x10 }
        if headerCRC { flags |= 0x02 }
        var out: [UInt8] = [0x1F, 0x8B, 8, flags, 0x12, 0x34, 0x56, 0x78, 0, 3]
        if let extra { out += le16(extra.count) + extra }
        if let name { out += Array(name.utf8) + [0] }
        if let comment { out += Array(comment.utf8) + [0] }
        if headerCRC { out += le16(Int(crc32(out) & 0xFFFF)) }
        out += storedDeflate(data)
        out += le32(crc32(data)) + le32(UInt32(truncatingIfNeeded: data.count))
        return out
    }

    /// An 8-bit PNG (color type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA) with filter 0 rows and a stored zlib stream.
    static func png(width: Int, height: Int, colorType: UInt8, pixels: [UInt8]) -> [UInt8] {
        let channels = [0: 1, 2: 3, 4: 2, 6: 4][Int(colorType)]!
        precondition(pixels.count == width * height * channels)
        var raw: [UInt8] = []
        for y in 0..<height {
            raw.append(0)
            raw += pixels[(y * width * channels)..<((y + 1) * width * channels)]
        }
        let zlib: [UInt8] = [0x78, 0x01] + storedDeflate(raw) + be32(adler32(raw))
        func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
            let body = Array(type.utf8) + data
            return be32(UInt32(data.count)) + body + be32(crc32(body))
        }
        let ihdr = be32(UInt32(width)) + be32(UInt32(height)) + [8, colorType, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr) + chunk("IDAT", zlib) + chunk("IEND", [])
    }

    /// A version 1.0 .npy file.
    static func npy(descr: String, shape: [Int], data: [UInt8]) -> [UInt8] {
        let dims = shape.count == 1 ? "\(shape[0])," : shape.map(String.init).joined(separator: ", ")
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(dims)), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        return [0x93] + Array("NUMPY".utf8) + [1, 0] + le16(header.utf8.count) + Array(header.utf8) + data
    }

    static func floats(_ v: [Float]) -> [UInt8] { v.flatMap { le32($0.bitPattern) } }
    static func int64s(_ v: [Int]) -> [UInt8] {
        v.flatMap { x in (0..<8).map { UInt8(truncatingIfNeeded: UInt64(bitPattern: Int64(x)) >> (8 * UInt64($0))) } }
    }

    /// An IDX file: magic 00 00 type rank, big-endian dimensions, values (type 0x08 = uint8).
    static func idx(_ shape: [Int], _ values: [UInt8], type: UInt8 = 0x08) -> [UInt8] {
        [0, 0, type, UInt8(shape.count)] + shape.flatMap { be32(UInt32($0)) } + values
    }
}

/// A fresh temporary directory, removed at the end of the test.
class TempDirTestCase: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "imgdata-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let path = dir + "/" + name
        let parent = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Foundation.Data(bytes)), path)
        return path
    }

    /// Asserts that `body` throws a one-line DataError containing every string in `parts`.
    func assertDataError<T>(_ parts: [String], file: StaticString = #filePath, line: UInt = #line,
                            _ body: () throws -> T) {
        do {
            _ = try body()
            XCTFail("expected an error containing \(parts)", file: file, line: line)
        } catch let e as DataError {
            XCTAssertFalse(e.message.contains("\n"), "multi-line message: \(e.message)", file: file, line: line)
            for p in parts {
                XCTAssertTrue(e.message.contains(p), "'\(e.message)' does not contain '\(p)'", file: file, line: line)
            }
        } catch {
            XCTFail("expected a DataError, got \(type(of: error)): \(error)", file: file, line: line)
        }
    }
}

// MARK: - gzip

final class GzipTests: TempDirTestCase {
    func sample(_ n: Int, seed: UInt64) -> [UInt8] {
        var rng = RandomGenerator(seed: seed)
        // Half noise, half runs: exercises literals and long matches in the compressor.
        return rng.uniformFloats(n).enumerated().map { i, u in i % 1000 < 500 ? UInt8(u * 256) : UInt8(i / 1000 % 7) }
    }

    func testCompressedRoundTrip() throws {
        for n in [0, 1, 100, 70_000, 300_000] {
            let data = sample(n, seed: UInt64(n))
            let gz = try Gzip.compress(data, name: "x.bin")
            XCTAssertTrue(Gzip.isGzip(gz))
            XCTAssertEqual(try Gzip.decompress(gz), data, "n = \(n)")
            if n == 300_000 { XCTAssertLessThan(gz.count, n * 3 / 4) }
        }
    }

    func testOptionalHeaderFields() throws {
        let data = sample(200_000, seed: 3)  // several stored blocks
        let variants: [[UInt8]] = [
            Bytes.gzipMember(data),
            Bytes.gzipMember(data, extra: [1, 2, 3, 4, 5]),
            Bytes.gzipMember(data, name: "file.idx"),
            Bytes.gzipMember(data, comment: "a comment"),
            Bytes.gzipMember(data, headerCRC: true),
            Bytes.gzipMember(data, extra: [], name: "n", comment: "c", headerCRC: true),
        ]
        for (k, gz) in variants.enumerated() {
            XCTAssertEqual(try Gzip.decompress(gz, source: "v\(k)"), data, "variant \(k)")
        }
    }

    func testMultiMemberAndTrailingZeros() throws {
        let a = sample(1000, seed: 1), b = sample(5000, seed: 2)
        let file = try Bytes.gzipMember(a, name: "a") + Gzip.compress(b) + Bytes.gzipMember([]) + [0, 0, 0, 0]
        XCTAssertEqual(try Gzip.decompress(file), a + b)
        // The cap applies to the total over all members.
        assertDataError(["m.gz", "over the 5999-byte limit"]) { try Gzip.decompress(file, maxOutput: 5999, source: "m.gz") }
        XCTAssertEqual(try Gzip.decompress(file, maxOutput: 6000).count, 6000)
    }

    func testOutputCap() throws {
        let bomb = try Gzip.compress([UInt8](repeating: 0, count: 1_000_000))
        XCTAssertLessThan(bomb.count, 5000)
        assertDataError(["bomb.gz", "gzip", "over the 1000-byte limit"]) {
            try Gzip.decompress(bomb, maxOutput: 1000, source: "bomb.gz")
        }
        let path = write("bomb.gz", bomb)
        assertDataError([path, "over the 4096-byte limit"]) { try Gzip.readFile(path: path, maxOutput: 4096) }
        let plain = write("plain.bin", [UInt8](repeating: 7, count: 5000))
        assertDataError([plain, "over the 4096-byte limit"]) { try Gzip.readFile(path: plain, maxOutput: 4096) }
    }

    func testDecompressPrefixDecodesOnlyWhatIsAskedFor() throws {
        let data = sample(200_000, seed: 5)
        let gz = try Gzip.compress(data)
        XCTAssertEqual(try Gzip.decompressPrefix(gz, count: 1000), Array(data.prefix(1000)))
        XCTAssertEqual(try Gzip.decompressPrefix(gz, count: 0), [])
        XCTAssertEqual(try Gzip.decompressPrefix(gz, count: 1 << 20), data, "a shorter member comes back whole")
        // The stream is cut in half: the prefix is still there, because nothing behind it is decoded.
        let cut = Array(gz.prefix(gz.count / 2))
        XCTAssertEqual(try Gzip.decompressPrefix(cut, count: 1000), Array(data.prefix(1000)))
        assertDataError(["cut.gz", "gzip: DEFLATE"]) { try Gzip.decompress(cut, source: "cut.gz") }
        // A stored block is copied in one piece; the prefix still ends where asked.
        let stored = Bytes.gzipMember(Array(data.prefix(65535)))
        XCTAssertEqual(try Gzip.decompressPrefix(stored, count: 10), Array(data.prefix(10)))
        assertDataError(["x.gz", "magic"]) { try Gzip.decompressPrefix([1, 2, 3], count: 4, source: "x.gz") }
        assertDataError(["x.gz", "invalid block type"]) {
            try Gzip.decompressPrefix([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 0x07], count: 4, source: "x.gz")
        }
    }

    func testPlainFilesPassThrough() throws {
        let data: [UInt8] = [0x1F, 0x00, 1, 2, 3]  // starts like gzip but is not
        let path = write("plain.bin", data)
        XCTAssertEqual(try Gzip.readFile(path: path), data)
        XCTAssertEqual(try Gzip.readFile(path: write("empty.bin", [])), [])
        let gz = write("data.gz", Bytes.gzipMember(data))
        XCTAssertEqual(try Gzip.readFile(path: gz), data)
        assertDataError([dir + "/missing.gz", "cannot open"]) { try Gzip.readFile(path: dir + "/missing.gz") }
    }

    func testCorruptFiles() throws {
        let data = sample(3000, seed: 9)
        let good = Bytes.gzipMember(data, name: "n", headerCRC: true)
        let n = good.count
        func corrupt(_ edit: (inout [UInt8]) -> Void) -> [UInt8] { var g = good; edit(&g); return g }
        let cases: [([UInt8], String)] = [
            (corrupt { $0[n - 8] ^= 1 }, "CRC-32 mismatch"),
            (corrupt { $0[n - 4] ^= 1 }, "ISIZE mismatch"),
            (Array(good.prefix(n - 3)), "trailer"),
            (Array(good.prefix(n - 100)), "DEFLATE"),
            (Array(good.prefix(5)), "10-byte header"),
            (corrupt { $0[2] = 7 }, "compression method 7"),
            (corrupt { $0[3] |= 0x20 }, "reserved header flag"),
            (corrupt { $0[4] ^= 1 }, "header CRC mismatch"),
            (good + [1, 2, 3], "3 unexpected bytes after member 1"),
            (good + Array(good.prefix(12)), "member 2"),
            (Array(Bytes.gzipMember(data, name: "unterminated").prefix(15)), "FNAME"),
            (Array(Bytes.gzipMember(data, extra: [1, 2, 3, 4]).prefix(13)), "FEXTRA"),
            ([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 0x07, 0, 0, 0, 0, 0, 0, 0, 0], "invalid block type"),
            ([0x50, 0x4B, 3, 4], "magic"),
        ]
        for (k, (bytes, expected)) in cases.enumerated() {
            assertDataError(["case\(k).gz", "gzip: ", expected]) { try Gzip.decompress(bytes, source: "case\(k).gz") }
        }
    }
}

// MARK: - IDX

final class IDXTests: TempDirTestCase {
    func testReadRawAndGzipped() throws {
        let values = (0..<24).map { UInt8($0 * 10) }
        let raw = write("images-idx3-ubyte", Bytes.idx([2, 3, 4], values))
        let gz = try write("images-idx3-ubyte.gz", Gzip.compress(Bytes.idx([2, 3, 4], values)))
        for p in [raw, gz] {
            let a = try IDX.readImages(path: p)
            XCTAssertEqual(a.shape, [2, 3, 4])
            XCTAssertEqual(a.values, values)
        }
        try IDX.write(path: dir + "/w.gz", shape: [6], values: [1, 2, 3, 4, 5, 6], gzip: true)
        try IDX.write(path: dir + "/w", shape: [6], values: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try IDX.readLabels(path: dir + "/w.gz"), IDXArray(shape: [6], values: [1, 2, 3, 4, 5, 6]))
        XCTAssertEqual(try IDX.readLabels(path: dir + "/w"), IDXArray(shape: [6], values: [1, 2, 3, 4, 5, 6]))
        XCTAssertEqual(try IDX.encode(shape: [2, 1], values: [9, 8]), [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 1, 9, 8])
        XCTAssertThrowsError(try IDX.encode(shape: [2, 2], values: [1]))
    }

    func testErrors() throws {
        let img = Bytes.idx([2, 2, 2], [UInt8](repeating: 1, count: 8))
        let labels = write("labels", Bytes.idx([2], [0, 1]))
        let images = write("images", img)
        assertDataError([labels, "wrong magic 0x00000801", "expected 0x00000803", "label file"]) {
            try IDX.readImages(path: labels)
        }
        assertDataError([images, "wrong magic 0x00000803", "expected 0x00000801", "image file"]) {
            try IDX.readLabels(path: images)
        }
        let cases: [(String, [UInt8], String)] = [
            ("png", [0x89, 0x50, 0x4E, 0x47, 0, 0, 0, 0], "wrong magic 0x89504e47"),
            ("short", [0, 0], "truncated IDX file"),
            ("float", Bytes.idx([2, 2, 2], [], type: 0x0D), "wrong magic 0x00000d03"),
            ("header", Array(img.prefix(10)), "truncated IDX header"),
            ("data", Array(img.prefix(img.count - 1)), "truncated IDX data"),
            ("extra", img + [0], "1 unexpected bytes"),
            ("overflow", Bytes.idx([0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF], []), "overflows"),
            ("huge", Bytes.idx([1_000_000, 0xFFFF, 0xFFFF], []), "over the"),
            ("absurd", Bytes.idx([1, 1, 100_000], [UInt8](repeating: 0, count: 100_000)), "absurd IDX image size 1x100000"),
            ("zero", Bytes.idx([3, 0, 28], []), "absurd IDX image size 0x28"),
        ]
        for (name, bytes, expected) in cases {
            let path = write(name, bytes)
            assertDataError([path, expected]) { try IDX.readImages(path: path) }
        }
        // The generic reader names the element type it does not support.
        let floatFile = write("float2", Bytes.idx([1], [0, 0, 0, 0], type: 0x0D))
        assertDataError([floatFile, "0xd (float32) is not supported"]) { try IDX.read(path: floatFile) }
        // A gzipped IDX file whose gzip layer is damaged names the file too.
        var gz = try Gzip.compress(img)
        gz[gz.count - 8] ^= 0xFF
        let bad = write("bad.gz", gz)
        assertDataError([bad, "CRC-32 mismatch"]) { try IDX.readImages(path: bad) }
    }
}

extension IDXTests {
    /// 4 MB of zeros behind a label-file header that declares 4 bytes, gzipped to a few KB, with its
    /// CRC-32 damaged: decoding everything would end on the CRC, decoding what the header declares ends
    /// at byte 13.
    func testGzipIsDecompressedNoFurtherThanTheHeaderDeclares() throws {
        var bomb = try Gzip.compress(Bytes.idx([4], [1, 2, 3, 4]) + [UInt8](repeating: 0, count: 4 << 20))
        XCTAssertLessThan(bomb.count, 10_000)
        bomb[bomb.count - 8] ^= 0xFF
        let path = write("labels.gz", bomb)
        assertDataError([path, "gzip: decompressed data is over the 12 bytes its IDX header declares"]) {
            try IDX.readLabels(path: path)
        }
        assertDataError([path, "over the 12 bytes"]) { try IDX.read(path: path) }
    }

    func testGzippedHeaderIsCheckedBeforeTheData() throws {
        // Each file's CRC-32 is damaged too, so each error shows that the header was refused first.
        func damaged(_ idx: [UInt8]) throws -> [UInt8] {
            var gz = try Gzip.compress(idx + [UInt8](repeating: 7, count: 100_000))
            gz[gz.count - 8] ^= 0xFF
            return gz
        }
        let cases: [(String, [UInt8], String)] = [
            ("float.gz", Bytes.idx([1], [], type: 0x0D), "0xd (float32) is not supported"),
            ("overflow.gz", Bytes.idx([0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF], []), "overflows"),
            ("huge.gz", Bytes.idx([60_000, 0xFFFF, 0xFFFF], []), "over the 2147483648-byte limit"),
        ]
        for (name, idx, expected) in cases {
            let path = try write(name, damaged(idx))
            assertDataError([path, expected]) { try IDX.read(path: path) }
        }
        let labels = try write("labels.gz", damaged(Bytes.idx([5], [])))
        assertDataError([labels, "wrong magic 0x00000801 for an IDX image file"]) { try IDX.readImages(path: labels) }
    }

    func testHeaderSplitAcrossGzipMembers() throws {
        let values = (0..<24).map { UInt8($0) }
        let file = Bytes.idx([2, 3, 4], values)
        // The first member holds 6 bytes, less than the 16-byte header: the size is learnt after decoding.
        let path = try write("split.gz", Gzip.compress(Array(file.prefix(6))) + Gzip.compress(Array(file.dropFirst(6))))
        XCTAssertEqual(try IDX.readImages(path: path), IDXArray(shape: [2, 3, 4], values: values))
        XCTAssertEqual(try IDX.readImages(path: path, maxBytes: 24).values, values)
        assertDataError([path, "declare 24 bytes, over the 23-byte limit"]) { try IDX.readImages(path: path, maxBytes: 23) }
    }
}

// MARK: - Data set loaders

final class ImageDatasetLoaderTests: TempDirTestCase {
    func testIDXPaddingAndScalingExact() throws {
        // Two 2x3 images with values that check the endpoints and a few interior points.
        let px: [UInt8] = [0, 255, 51, 128, 127, 1,
                           255, 255, 255, 0, 0, 204]
        let images = try write("img.gz", Gzip.compress(Bytes.idx([2, 2, 3], px)))
        let labels = write("lab", Bytes.idx([2], [7, 2]))
        let ds = try ImageDataset.idx(images: images, labels: labels, pad: 1)
        XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width, ds.classes], [2, 1, 4, 5, 10])
        XCTAssertEqual(ds.labels, [7, 2])
        XCTAssertEqual(ds.images.count, 2 * 4 * 5)
        let t = ImageDataset.byteToUnit
        XCTAssertEqual(t[0], -1); XCTAssertEqual(t[255], 1)
        XCTAssertEqual(t[51], Float(-0.6)); XCTAssertEqual(t[204], Float(0.6))
        XCTAssertEqual(t[128], Float(0.5 / 127.5)); XCTAssertEqual(t[127], Float(-0.5 / 127.5))
        for i in 0..<2 {
            let img = Array(ds.image(i))
            for y in 0..<4 {
                for x in 0..<5 {
                    let v = img[y * 5 + x]
                    if y == 0 || y == 3 || x == 0 || x == 4 {
                        XCTAssertEqual(v, -1, "padding at (\(y), \(x)) of image \(i)")
                    } else {
                        let byte = px[i * 6 + (y - 1) * 3 + (x - 1)]
                        XCTAssertEqual(v, Float(Double(byte) / 127.5 - 1), "pixel (\(y), \(x)) of image \(i)")
                        XCTAssertEqual(ImageDataset.unitToByte(v), byte)
                    }
                }
            }
        }
        // pad 0 and the raw (not gzipped) file give the unpadded image.
        let rawImages = write("img", Bytes.idx([2, 2, 3], px))
        let plain = try ImageDataset.idx(images: rawImages, labels: labels, pad: 0)
        XCTAssertEqual([plain.height, plain.width], [2, 3])
        XCTAssertEqual(plain.images, px.map { t[Int($0)] })
        // The default pad of 2 turns 28x28 into 32x32.
        let big = write("big", Bytes.idx([1, 28, 28], [UInt8](repeating: 255, count: 784)))
        let one = write("one", Bytes.idx([1], [0]))
        let padded = try ImageDataset.idx(images: big, labels: one)
        XCTAssertEqual([padded.height, padded.width], [32, 32])
        XCTAssertEqual(padded.images.filter { $0 == 1 }.count, 784)
        XCTAssertEqual(padded.images.filter { $0 == -1 }.count, 1024 - 784)
        XCTAssertEqual(padded.image(0)[2 * 32 + 2], 1)
        XCTAssertEqual(padded.image(0)[2 * 32 + 1], -1)
    }

    func testIDXDatasetErrors() throws {
        let images = write("img", Bytes.idx([3, 2, 2], [UInt8](repeating: 9, count: 12)))
        let two = write("two-labels", Bytes.idx([2], [0, 1]))
        assertDataError([two, "2 labels for the 3 images of \(images)"]) { try ImageDataset.idx(images: images, labels: two) }
        let big = write("big-label", Bytes.idx([3], [0, 10, 1]))
        assertDataError([big, "label 10 of image 1 is out of range for 10 classes"]) {
            try ImageDataset.idx(images: images, labels: big)
        }
        let ok = write("ok", Bytes.idx([3], [0, 4, 1]))
        assertDataError([ok, "label 4 of image 1 is out of range for 3 classes"]) {
            try ImageDataset.idx(images: images, labels: ok, classes: 3)
        }
        XCTAssertEqual(try ImageDataset.idx(images: images, labels: ok, classes: 5).classes, 5)
        let empty = write("empty", Bytes.idx([0, 2, 2], []))
        let noLabels = write("nolabels", Bytes.idx([0], []))
        assertDataError([empty, "no images"]) { try ImageDataset.idx(images: empty, labels: noLabels) }
        assertDataError(["padding -1"]) { try ImageDataset.idx(images: images, labels: ok, pad: -1) }
        assertDataError([dir + "/nope", "cannot open"]) { try ImageDataset.idx(images: dir + "/nope", labels: ok) }
    }

    func testFashionMNISTFileNamesAndMissingDirectory() throws {
        assertDataError([dir + "/absent", "does not exist", "apt-get install dataset-fashion-mnist"]) {
            try ImageDataset.fashionMNIST(directory: dir + "/absent")
        }
        assertDataError([dir, "train-images-idx3-ubyte[.gz] is not in", "apt-get install dataset-fashion-mnist"]) {
            try ImageDataset.fashionMNIST(directory: dir)
        }
        // Training split gzipped, test split plain with the dotted spelling.
        try write("train-images-idx3-ubyte.gz", Gzip.compress(Bytes.idx([2, 28, 28], [UInt8](repeating: 3, count: 1568))))
        try write("train-labels-idx1-ubyte.gz", Gzip.compress(Bytes.idx([2], [9, 0])))
        write("t10k-images.idx3-ubyte", Bytes.idx([1, 28, 28], [UInt8](repeating: 4, count: 784)))
        write("t10k-labels.idx1-ubyte", Bytes.idx([1], [5]))
        let train = try ImageDataset.fashionMNIST(directory: dir)
        XCTAssertEqual([train.count, train.channels, train.height, train.width, train.classes], [2, 1, 32, 32, 10])
        XCTAssertEqual(train.labels, [9, 0])
        XCTAssertEqual(train.classNames[9], "Ankle boot")
        let test = try ImageDataset.fashionMNIST(directory: dir, train: false)
        XCTAssertEqual(test.labels, [5])
        XCTAssertEqual(test.image(0)[16 * 32 + 16], ImageDataset.byteToUnit[4])
    }

    /// The real files from the Debian package `dataset-fashion-mnist`; skipped where it is not installed.
    func testRealFashionMNIST() throws {
        let d = ImageDataset.fashionMNISTDirectory
        guard FileManager.default.fileExists(atPath: d + "/train-images-idx3-ubyte.gz") else {
            throw XCTSkip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        }
        var start = Date()
        let train = try ImageDataset.fashionMNIST()
        let trainTime = Date().timeIntervalSince(start)
        start = Date()
        let test = try ImageDataset.fashionMNIST(train: false)
        print("Fashion-MNIST load: train \(String(format: "%.2f", trainTime)) s, test \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        XCTAssertEqual([train.count, train.channels, train.height, train.width, train.classes], [60000, 1, 32, 32, 10])
        XCTAssertEqual(test.count, 10000)
        XCTAssertEqual(Array(train.labels.prefix(10)), [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
        XCTAssertEqual(Array(test.labels.prefix(10)), [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
        XCTAssertEqual(train.classCounts, [Int](repeating: 6000, count: 10))
        XCTAssertEqual(test.classCounts, [Int](repeating: 1000, count: 10))
        // Pixel sums of the original bytes (from numpy): the first training image and the whole test split.
        func byteSum(_ ds: ImageDataset, _ range: Range<Int>) -> Int {
            var s = 0
            for i in range { for v in ds.image(i) { s += Int(ImageDataset.unitToByte(v)) } }
            return s
        }
        XCTAssertEqual(byteSum(train, 0..<1), 76247)
        XCTAssertEqual(byteSum(test, 0..<10000), 573_469_082)
        // The two-pixel frame is padding.
        for i in [0, 59999] {
            let img = Array(train.image(i))
            for k in 0..<32 {
                for (y, x) in [(0, k), (1, k), (30, k), (31, k), (k, 0), (k, 1), (k, 30), (k, 31)] {
                    XCTAssertEqual(img[y * 32 + x], -1)
                }
            }
        }
        XCTAssertEqual(train.images.min(), -1)
        XCTAssertEqual(train.images.max(), 1)
    }

    // MARK: PNG folders

    func makeDataset(channels: Int, height: Int, width: Int, labels: [Int], classes: Int, names: [String]? = nil,
                     seed: UInt64 = 1) throws -> ImageDataset {
        var rng = RandomGenerator(seed: seed)
        let bytes = rng.uniformFloats(labels.count * channels * height * width).map { Int($0 * 256) }
        return try ImageDataset(images: bytes.map { ImageDataset.byteToUnit[$0] }, labels: labels, channels: channels,
                                height: height, width: width, classes: classes, classNames: names)
    }

    func testPNGFolderRoundTrip() throws {
        for channels in [1, 3] {
            let ds = try makeDataset(channels: channels, height: 5, width: 7, labels: [1, 0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 0],
                                     classes: 3, names: ["cat", "dog/wolf", "eel"], seed: UInt64(channels))
            let root = dir + "/rt\(channels)"
            try ds.writePNGFolder(root)
            let back = try ImageDataset.pngFolder(root)
            XCTAssertEqual(back.classNames, ["0_cat", "1_dog_wolf", "2_eel"])
            XCTAssertEqual([back.count, back.channels, back.height, back.width, back.classes], [12, channels, 5, 7, 3])
            // Read back class by class, in file-name (= original index) order within a class.
            let order = (0..<3).flatMap { c in (0..<ds.count).filter { ds.labels[$0] == c } }
            XCTAssertEqual(back.labels, order.map { ds.labels[$0] })
            XCTAssertEqual(back.images, order.flatMap { Array(ds.image($0)) })
            // limitPerClass keeps the first images of each class.
            let few = dir + "/few\(channels)"
            try ds.writePNGFolder(few, limitPerClass: 2)
            XCTAssertEqual(try ImageDataset.pngFolder(few).classCounts, [2, 2, 2])
        }
    }

    func testPNGFolderChannelsAndLayout() throws {
        // Hand-made PNGs: RGB to CHW, gray+alpha and RGBA with opaque alpha accepted as gray / RGB.
        let rgb: [UInt8] = [10, 20, 30, 40, 50, 60]  // 2x1: pixels (10,20,30), (40,50,60)
        write("c/a/x.png", Bytes.png(width: 2, height: 1, colorType: 2, pixels: rgb))
        write("c/b/y.PNG", Bytes.png(width: 2, height: 1, colorType: 6, pixels: [1, 2, 3, 255, 4, 5, 6, 255]))
        write("c/b/notes.txt", Array("ignored".utf8))
        write("c/.hidden/z.png", [1, 2, 3])
        write("c/readme.md", Array("ignored".utf8))
        let ds = try ImageDataset.pngFolder(dir + "/c")
        let t = ImageDataset.byteToUnit
        XCTAssertEqual(ds.classNames, ["a", "b"])
        XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width], [2, 3, 1, 2])
        XCTAssertEqual(ds.labels, [0, 1])
        XCTAssertEqual(Array(ds.image(0)), [10, 40, 20, 50, 30, 60].map { t[$0] })
        XCTAssertEqual(Array(ds.image(1)), [1, 4, 2, 5, 3, 6].map { t[$0] })
        write("g/only/p.png", Bytes.png(width: 1, height: 2, colorType: 4, pixels: [7, 255, 8, 255]))
        let gray = try ImageDataset.pngFolder(dir + "/g")
        XCTAssertEqual(gray.channels, 1)
        XCTAssertEqual(gray.images, [t[7], t[8]])
    }

    func testPNGFolderErrors() throws {
        let g2x2 = Bytes.png(width: 2, height: 2, colorType: 0, pixels: [1, 2, 3, 4])
        write("size/a/1.png", g2x2)
        let odd = write("size/b/2.png", Bytes.png(width: 3, height: 2, colorType: 0, pixels: [1, 2, 3, 4, 5, 6]))
        assertDataError([odd, "3x2", dir + "/size/a/1.png", "2x2"]) { try ImageDataset.pngFolder(dir + "/size") }

        write("chan/a/1.png", g2x2)
        let color = write("chan/b/2.png", Bytes.png(width: 2, height: 2, colorType: 2, pixels: [UInt8](repeating: 9, count: 12)))
        assertDataError([color, "3 color channel(s)", "has 1"]) { try ImageDataset.pngFolder(dir + "/chan") }

        let alpha = write("alpha/a/1.png", Bytes.png(width: 1, height: 1, colorType: 6, pixels: [1, 2, 3, 128]))
        assertDataError([alpha, "alpha"]) { try ImageDataset.pngFolder(dir + "/alpha") }

        write("corrupt/a/1.png", g2x2)
        var bad = g2x2
        bad[bad.count - 20] ^= 0xFF
        let broken = write("corrupt/a/2.png", bad)
        assertDataError([broken, "PNG"]) { try ImageDataset.pngFolder(dir + "/corrupt") }

        write("emptyclass/a/1.png", g2x2)
        write("emptyclass/b/readme.txt", [1])
        assertDataError([dir + "/emptyclass/b", "no .png files"]) { try ImageDataset.pngFolder(dir + "/emptyclass") }

        write("flat/1.png", g2x2)
        assertDataError([dir + "/flat", "no class subfolders"]) { try ImageDataset.pngFolder(dir + "/flat") }
        assertDataError([dir + "/missing", "cannot open directory"]) { try ImageDataset.pngFolder(dir + "/missing") }
    }

    // MARK: .npy

    func testNPYUint8AndFloat() throws {
        let px: [UInt8] = (0..<24).map { UInt8($0 * 11) }
        let images = write("u8.npy", Bytes.npy(descr: "|u1", shape: [2, 3, 4], data: px))
        let labels = write("l.npy", Bytes.npy(descr: "<i8", shape: [2], data: Bytes.int64s([3, 1])))
        let ds = try ImageDataset.npy(images: images, labels: labels)
        XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width, ds.classes], [2, 1, 3, 4, 4])
        XCTAssertEqual(ds.labels, [3, 1])
        XCTAssertEqual(ds.images, px.map { ImageDataset.byteToUnit[Int($0)] })

        let f: [Float] = (0..<(2 * 3 * 2 * 2)).map { Float($0) / 12 - 1 }
        let fimages = write("f.npy", Bytes.npy(descr: "<f4", shape: [2, 3, 2, 2], data: Bytes.floats(f)))
        let unlabeled = try ImageDataset.npy(images: fimages, labels: nil)
        XCTAssertEqual([unlabeled.count, unlabeled.channels, unlabeled.height, unlabeled.width, unlabeled.classes], [2, 3, 2, 2, 1])
        XCTAssertEqual(unlabeled.labels, [0, 0])
        XCTAssertEqual(unlabeled.images, f)
        let u8labels = write("l8.npy", Bytes.npy(descr: "|u1", shape: [2], data: [0, 1]))
        XCTAssertEqual(try ImageDataset.npy(images: fimages, labels: u8labels, classes: 10).classes, 10)
    }

    func testNPYErrors() throws {
        let f = write("f255.npy", Bytes.npy(descr: "<f4", shape: [1, 2, 2], data: Bytes.floats([0, 255, 3, 1])))
        assertDataError([f, "255", "outside [-1, 1]"]) { try ImageDataset.npy(images: f, labels: nil) }
        let nan = write("nan.npy", Bytes.npy(descr: "<f4", shape: [1, 1, 1], data: Bytes.floats([.nan])))
        assertDataError([nan, "outside [-1, 1]"]) { try ImageDataset.npy(images: nan, labels: nil) }
        let nhwc = write("nhwc.npy", Bytes.npy(descr: "|u1", shape: [1, 8, 8, 3], data: [UInt8](repeating: 0, count: 192)))
        assertDataError([nhwc, "channels-last"]) { try ImageDataset.npy(images: nhwc, labels: nil) }
        let flat = write("flat.npy", Bytes.npy(descr: "|u1", shape: [4, 4], data: [UInt8](repeating: 0, count: 16)))
        assertDataError([flat, "expected [n, H, W] or [n, C, H, W]"]) { try ImageDataset.npy(images: flat, labels: nil) }
        let ints = write("i4.npy", Bytes.npy(descr: "<i4", shape: [1, 1, 1], data: [0, 0, 0, 0]))
        assertDataError([ints, "dtype <i4 is not supported"]) { try ImageDataset.npy(images: ints, labels: nil) }
        let trunc = write("trunc.npy", Array(Bytes.npy(descr: "|u1", shape: [2, 2, 2], data: [1, 2, 3]).dropLast()))
        assertDataError([trunc, "truncated"]) { try ImageDataset.npy(images: trunc, labels: nil) }

        let images = write("ok.npy", Bytes.npy(descr: "|u1", shape: [2, 1, 1], data: [0, 255]))
        let three = write("three.npy", Bytes.npy(descr: "<i8", shape: [3], data: Bytes.int64s([0, 1, 2])))
        assertDataError([three, "shape [3], expected [2]"]) { try ImageDataset.npy(images: images, labels: three) }
        let neg = write("neg.npy", Bytes.npy(descr: "<i8", shape: [2], data: Bytes.int64s([0, -1])))
        assertDataError([neg, "label -1.0 of image 1"]) { try ImageDataset.npy(images: images, labels: neg) }
        let frac = write("frac.npy", Bytes.npy(descr: "<f4", shape: [2], data: Bytes.floats([0, 1.5])))
        assertDataError([frac, "label 1.5 of image 1"]) { try ImageDataset.npy(images: images, labels: frac) }
        let five = write("five.npy", Bytes.npy(descr: "<i8", shape: [2], data: Bytes.int64s([0, 5])))
        assertDataError([five, "label 5 of image 1 is out of range for 3 classes"]) {
            try ImageDataset.npy(images: images, labels: five, classes: 3)
        }
    }

    func testInitValidation() {
        assertDataError(["7 values do not match 2 images of 1x2x2"]) {
            try ImageDataset(images: [Float](repeating: 0, count: 7), labels: [0, 0], channels: 1, height: 2, width: 2, classes: 1)
        }
        assertDataError(["label 2 of image 1 is outside 0..<2"]) {
            try ImageDataset(images: [0, 0], labels: [0, 2], channels: 1, height: 1, width: 1, classes: 2)
        }
        assertDataError(["1 class names for 2 classes"]) {
            try ImageDataset(images: [0, 0], labels: [0, 1], channels: 1, height: 1, width: 1, classes: 2, classNames: ["a"])
        }
        assertDataError(["no images"]) { try ImageDataset(images: [], labels: [], channels: 1, height: 1, width: 1, classes: 1) }
    }
}

// MARK: - Batches and sampling

final class ImageBatchTests: XCTestCase {
    /// 5 images of 2 channels, 2x3, whose values encode (image, channel, y, x).
    func dataset() throws -> ImageDataset {
        var v: [Float] = []
        for i in 0..<5 { for c in 0..<2 { for y in 0..<2 { for x in 0..<3 { v.append(Float(i * 1000 + c * 100 + y * 10 + x)) } } } }
        return try ImageDataset(images: v, labels: [0, 1, 2, 0, 1], channels: 2, height: 2, width: 3, classes: 3)
    }

    func testBatchWithoutFlip() throws {
        let ds = try dataset()
        var rng = RandomGenerator(seed: 5)
        let before = rng
        let (t, labels) = ds.batch(indices: [3, 0, 3], flip: false, rng: &rng, on: .cpu)
        XCTAssertEqual(rng, before, "no flip must not draw random numbers")
        XCTAssertEqual(t.shape, [3, 2, 2, 3])
        XCTAssertEqual(labels, [0, 0, 0])
        XCTAssertEqual(t.floats, Array(ds.image(3)) + Array(ds.image(0)) + Array(ds.image(3)))
    }

    func testFlipIsAHorizontalMirrorDrawnPerImage() throws {
        let ds = try dataset()
        var rng = RandomGenerator(seed: 11)
        var flippedSeen = 0, keptSeen = 0
        for _ in 0..<20 {
            var predict = rng
            let u = predict.uniformFloats(5)
            let indices = [4, 2, 0, 1, 3]
            let (t, labels) = ds.batch(indices: indices, flip: true, rng: &rng, on: .cpu)
            XCTAssertEqual(rng, predict, "one uniform per image")
            XCTAssertEqual(labels, indices.map { ds.labels[$0] })
            let out = t.floats
            for (b, i) in indices.enumerated() {
                let flipped = u[b] < 0.5
                if flipped { flippedSeen += 1 } else { keptSeen += 1 }
                for c in 0..<2 { for y in 0..<2 { for x in 0..<3 {
                    let sx = flipped ? 2 - x : x
                    XCTAssertEqual(out[b * 12 + c * 6 + y * 3 + x], Float(i * 1000 + c * 100 + y * 10 + sx))
                } } }
            }
        }
        XCTAssertGreaterThan(flippedSeen, 20)
        XCTAssertGreaterThan(keptSeen, 20)
        // Same generator state, same batch.
        var a = RandomGenerator(seed: 3), b = RandomGenerator(seed: 3)
        XCTAssertEqual(ds.batchValues(indices: [0, 1, 2, 3, 4], flip: true, rng: &a).values,
                       ds.batchValues(indices: [0, 1, 2, 3, 4], flip: true, rng: &b).values)
    }

    func testSamplerEpochsArePermutations() {
        var s = BatchSampler(count: 10, seed: 42)
        var seen: [[Int]] = []
        for _ in 0..<3 { seen.append(s.next(4) + s.next(6)) }
        for e in seen { XCTAssertEqual(e.sorted(), Array(0..<10)) }
        XCTAssertNotEqual(seen[0], seen[1])
        XCTAssertEqual(s.epoch, 3)
        XCTAssertEqual(s.position, 0)
        // Batches straddle epochs: 7 + 7 = 14 = one epoch and 4 of the next.
        var t = BatchSampler(count: 10, seed: 42)
        let x = t.next(7) + t.next(7)
        XCTAssertEqual(Array(x.prefix(10)), seen[0])
        XCTAssertEqual(Array(x.suffix(4)), Array(seen[1].prefix(4)))
        XCTAssertEqual(t.state, BatchSampler.State(count: 10, seed: 42, epoch: 1, position: 4))
        // A batch larger than the data set spans several epochs.
        var u = BatchSampler(count: 10, seed: 42)
        XCTAssertEqual(u.next(25), seen[0] + seen[1] + Array(seen[2].prefix(5)))
        XCTAssertEqual(u.next(0), [])
        XCTAssertEqual(BatchSampler.permutation(count: 10, seed: 42, epoch: 2), seen[2])
        XCTAssertNotEqual(BatchSampler(count: 10, seed: 43).order, BatchSampler(count: 10, seed: 42).order)
        XCTAssertEqual(BatchSampler(count: 1, seed: 0).order, [0])
    }

    func testSamplerIsUniformish() {
        // Position of item 0 in the permutation over many epochs: roughly uniform.
        var hist = [Int](repeating: 0, count: 8)
        for e in 0..<4000 { hist[BatchSampler.permutation(count: 8, seed: 7, epoch: e).firstIndex(of: 0)!] += 1 }
        for h in hist { XCTAssertEqual(Double(h), 500, accuracy: 90) }
    }

    func testSamplerResume() throws {
        var original = BatchSampler(count: 37, seed: 9)
        for _ in 0..<11 { _ = original.next(8) }
        let saved = original.state
        XCTAssertEqual(saved.text, "count=37 seed=9 epoch=2 position=14")
        let parsed = try BatchSampler.State(text: saved.text)
        XCTAssertEqual(parsed, saved)
        var resumed = try BatchSampler(count: 37, state: parsed)
        XCTAssertEqual(resumed, original)
        for _ in 0..<20 { XCTAssertEqual(resumed.next(8), original.next(8)) }
        XCTAssertEqual(resumed.state, original.state)

        XCTAssertThrowsError(try BatchSampler(count: 36, state: saved)) { e in
            XCTAssertTrue("\(e)".contains("saved for 37 items, the data set has 36"), "\(e)")
        }
        XCTAssertThrowsError(try BatchSampler(count: 37, state: .init(count: 37, seed: 1, epoch: 0, position: 37)))
        XCTAssertThrowsError(try BatchSampler(count: 37, state: .init(count: 37, seed: 1, epoch: -1, position: 0)))
        XCTAssertThrowsError(try BatchSampler.State(text: "count=3 seed=x epoch=0 position=0"))
        XCTAssertThrowsError(try BatchSampler.State(text: "garbage"))
    }
}
