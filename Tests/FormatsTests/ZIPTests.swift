import XCTest
@testable import Formats
#if canImport(Glibc)
import Glibc
#endif

final class ZIPTests: XCTestCase {
    private func roundTrip(_ items: [(String, [UInt8])], in dir: TempDir, name: String = "a.zip") throws -> ZIPArchive {
        let w = try ZIPWriter(path: dir.file(name))
        for (n, b) in items { try w.add(name: n, bytes: b) }
        try w.finish()
        return try ZIPArchive(path: dir.file(name))
    }

    func testRoundTripKeepsNamesBytesAndOrder() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let items: [(String, [UInt8])] = [("dataset.json", Array(#"{"labels": []}"#.utf8)), ("00000/img0.png", pseudoRandomBytes(5000, seed: 1)),
                                          ("empty", []), ("ünïcödé/名前.npy", pseudoRandomBytes(17, seed: 2))]
        let z = try roundTrip(items, in: dir)
        XCTAssertEqual(z.entries.map(\.name), items.map(\.0))
        for (n, b) in items { XCTAssertEqual(try z.read(named: n), b, n) }
        XCTAssertNil(z.entry(named: "missing"))
        assertFormatError(try z.read(named: "missing"), contains: ["no entry", "missing"])
        assertFormatError(try z.read(named: "00000/img0.png", limit: 100), contains: ["img0.png", "over the limit"])
        XCTAssertEqual(dir.entries(), ["a.zip"], "the partial file is renamed into place")
    }

    /// Archives written by Python's zipfile: the official dataset format and a torch.save training state (whose
    /// local headers carry padding extra fields that align the storages).
    func testReadsArchivesOfPythonAndPyTorch() throws {
        let fixtures = "/work/shared/fixtures"
        guard access(fixtures + "/images/dataset.zip", R_OK) == 0 else { throw XCTSkip("fixtures not present") }
        let d = try ZIPArchive(path: fixtures + "/images/dataset.zip")
        XCTAssertEqual(d.entries.count, 5)
        let json = try JSONValue.parse(String(decoding: try d.read(named: "dataset.json"), as: UTF8.self))
        XCTAssertEqual(json["labels"]?.array?.count, 4)
        let png = try d.read(named: "00000/img00000000.png")
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        let t = try ZIPArchive(path: fixtures + "/official/official_training_state_small.pt")
        XCTAssertEqual(t.entries.count, 267)
        XCTAssertEqual(try t.read(named: "official_training_state_small/byteorder"), Array("little".utf8))
        for e in t.entries { XCTAssertEqual(try t.read(e).count, e.size) }
    }

    /// More than 65535 entries need the ZIP64 end records.
    func testManyEntriesUseZIP64() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let n = 70_000
        let z = try roundTrip((0..<n).map { ("f\($0)", [UInt8(truncatingIfNeeded: $0)]) }, in: dir)
        XCTAssertEqual(z.entries.count, n)
        XCTAssertEqual(try z.read(named: "f69999"), [UInt8(truncatingIfNeeded: 69999)])
    }

    /// An entry whose central record defers its sizes to the ZIP64 extra field (as writers do for entries over
    /// 4 GiB; built by hand here, with a small entry).
    func testSizesFromTheZIP64ExtraField() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let data = Array("hello".utf8), crc = Checksum.crc32(data)
        var b: [UInt8] = []
        func u16(_ v: Int) { b += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func u32(_ v: UInt32) { u16(Int(v & 0xFFFF)); u16(Int(v >> 16)) }
        func u64(_ v: UInt64) { u32(UInt32(v & 0xFFFF_FFFF)); u32(UInt32(v >> 32)) }
        u32(0x0403_4B50); u16(45); u16(0); u16(0); u16(0); u16(0x21); u32(crc)
        u32(0xFFFF_FFFF); u32(0xFFFF_FFFF); u16(1); u16(20); b += Array("h".utf8)
        u16(1); u16(16); u64(5); u64(5)
        b += data
        let directory = b.count
        u32(0x0201_4B50); u16(45); u16(45); u16(0); u16(0); u16(0); u16(0x21); u32(crc)
        u32(0xFFFF_FFFF); u32(0xFFFF_FFFF); u16(1); u16(20); u16(0); u16(0); u16(0); u32(0); u32(0)
        b += Array("h".utf8)
        u16(1); u16(16); u64(5); u64(5)
        let size = b.count - directory
        u32(0x0605_4B50); u16(0); u16(0); u16(1); u16(1); u32(UInt32(size)); u32(UInt32(directory)); u16(0)
        try AtomicFile.write(path: dir.file("z64.zip"), bytes: b)
        let z = try ZIPArchive(path: dir.file("z64.zip"))
        XCTAssertEqual(z.entries.first?.size, 5)
        XCTAssertEqual(try z.read(named: "h"), data)
    }

    /// A killed writer leaves `NAME.partial`; resuming keeps the whole entries, cuts a torn one and continues.
    func testResumeAfterAKill() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("set.zip")
        do {
            let w = try ZIPWriter(path: path)
            for i in 0..<3 { try w.add(name: "e\(i)", bytes: pseudoRandomBytes(1000 + i, seed: UInt64(i))) }
        }  // released without finish(), as a killed run leaves it
        // A torn fourth entry: its header and part of its data.
        var torn: [UInt8] = [0x50, 0x4B, 0x03, 0x04, 20, 0, 0, 8, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]
        torn += [0xA0, 0x0F, 0, 0, 0xA0, 0x0F, 0, 0, 2, 0, 0, 0] + Array("e3".utf8)  // 4000 bytes claimed
        var partial = try AtomicFile.read(path: path + ".partial")
        partial += torn + pseudoRandomBytes(100, seed: 9)
        try AtomicFile.write(path: path + ".partial", bytes: partial)
        XCTAssertThrowsError(try ZIPArchive(path: path))

        let w = try ZIPWriter(path: path, resume: true)
        XCTAssertEqual(w.entries.map(\.name), ["e0", "e1", "e2"])
        try w.add(name: "e3", bytes: pseudoRandomBytes(4000, seed: 3))
        try w.finish()
        let z = try ZIPArchive(path: path)
        XCTAssertEqual(z.entries.map(\.name), ["e0", "e1", "e2", "e3"])
        for i in 0..<4 { XCTAssertEqual(try z.read(named: "e\(i)"), pseudoRandomBytes(i == 3 ? 4000 : 1000 + i, seed: UInt64(i))) }

        // A corrupt last entry (its bytes no longer match the CRC) is dropped on resume too.
        let v = try ZIPWriter(path: dir.file("b.zip"))
        try v.add(name: "a", bytes: [1, 2, 3])
        try v.add(name: "b", bytes: [4, 5, 6])
        var bytes = try AtomicFile.read(path: dir.file("b.zip.partial"))
        bytes[bytes.count - 1] ^= 0xFF
        try AtomicFile.write(path: dir.file("b.zip.partial"), bytes: bytes)
        XCTAssertEqual(try ZIPWriter(path: dir.file("b.zip"), resume: true).entries.map(\.name), ["a"])
    }

    func testRefusesWhatIsMalformed() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        _ = try roundTrip([("one", pseudoRandomBytes(300, seed: 5)), ("two", [7])], in: dir)
        var good = try AtomicFile.read(path: dir.file("a.zip"))

        try AtomicFile.write(path: dir.file("text.zip"), bytes: Array("not a zip at all, just text".utf8))
        assertFormatError(try ZIPArchive(path: dir.file("text.zip")), contains: ["text.zip", "not a ZIP archive"])
        try AtomicFile.write(path: dir.file("empty.zip"), bytes: [])
        assertFormatError(try ZIPArchive(path: dir.file("empty.zip")), contains: ["not a ZIP archive"])

        good[60] ^= 0xFF  // inside the data of "one"
        try AtomicFile.write(path: dir.file("crc.zip"), bytes: good)
        let z = try ZIPArchive(path: dir.file("crc.zip"))
        assertFormatError(try z.read(named: "one"), contains: ["crc.zip", "\"one\"", "CRC-32"])
        XCTAssertEqual(try z.read(named: "two"), [7])

        // Cut the central directory short: the count it claims no longer fits.
        let intact = try AtomicFile.read(path: dir.file("a.zip"))
        let end = intact.count - 22
        var claims = intact
        claims[end + 10] = 0xFF; claims[end + 8] = 0xFF
        try AtomicFile.write(path: dir.file("count.zip"), bytes: claims)
        assertFormatError(try ZIPArchive(path: dir.file("count.zip")), contains: ["count.zip", "claims"])

        // A directory offset beyond the file.
        var offset = intact
        offset[end + 19] = 0x7F
        try AtomicFile.write(path: dir.file("offset.zip"), bytes: offset)
        assertFormatError(try ZIPArchive(path: dir.file("offset.zip")), contains: ["offset.zip", "outside the file"])

        // A compressed entry is named, not misread.
        var deflated = intact
        let firstCentral = Int(UInt32(intact[end + 16]) | UInt32(intact[end + 17]) << 8)
        deflated[firstCentral + 10] = 8
        try AtomicFile.write(path: dir.file("deflated.zip"), bytes: deflated)
        assertFormatError(try ZIPArchive(path: dir.file("deflated.zip")).read(named: "one"),
                          contains: ["\"one\"", "compressed (method 8)"])

        let w = try ZIPWriter(path: dir.file("dup.zip"))
        try w.add(name: "x", bytes: [])
        assertFormatError(try w.add(name: "x", bytes: [1]), contains: ["\"x\"", "twice"])
    }
}
