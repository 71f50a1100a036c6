import XCTest
@testable import Formats

final class NPYTests: XCTestCase {
    /// `np.save` of `np.arange(6, dtype='<f4').reshape(2, 3) * 0.5 - 1` with numpy 2.4.
    static let numpyFile: [UInt8] = {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        let header = Array(dict.utf8) + [UInt8](repeating: 0x20, count: 58) + [0x0A]
        let data: [UInt8] = [0, 0, 128, 191, 0, 0, 0, 191, 0, 0, 0, 0, 0, 0, 0, 63, 0, 0, 128, 63, 0, 0, 192, 63]
        return [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 118, 0] + header + data
    }()

    /// A version 1.0 file with a hand-written header (padded as numpy pads it) and raw data.
    func npy(_ dict: String, _ data: [UInt8], version: UInt8 = 1) -> [UInt8] {
        var header = Array(dict.utf8)
        let prefix = version == 1 ? 10 : 12
        while (prefix + header.count + 1) % 64 != 0 { header.append(0x20) }
        header.append(0x0A)
        var out: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, version, 0]
        let n = header.count
        out += version == 1 ? [UInt8(n & 0xFF), UInt8(n >> 8)] : [UInt8(n & 0xFF), UInt8(n >> 8), 0, 0]
        return out + header + data
    }

    func testParsesNumpyOutput() throws {
        XCTAssertEqual(Self.numpyFile.count, 152)
        let a = try NPYArray.parse(Self.numpyFile, source: "numpy.npy")
        XCTAssertEqual(a.shape, [2, 3])
        XCTAssertEqual(a.descr, "<f4")
        XCTAssertEqual(a.floats, [-1, -0.5, 0, 0.5, 1, 1.5])
    }

    func testWriterMatchesNumpyByteForByte() throws {
        let bytes = try NPYArray(shape: [2, 3], floats: [-1, -0.5, 0, 0.5, 1, 1.5]).serialized()
        XCTAssertEqual(bytes, Self.numpyFile)
        // Shapes numpy writes differently: 1-D needs a trailing comma, 0-D is an empty tuple.
        let oneD = try NPYArray(shape: [3], doubles: [0, 0, 0]).serialized()
        XCTAssertEqual(Array(oneD[0..<10]), [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 118, 0])
        XCTAssertTrue(String(decoding: oneD[10..<128], as: UTF8.self)
            .hasPrefix("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }    "))
        XCTAssertEqual(oneD.count, 128 + 24)
        let scalar = try NPYArray(shape: [], floats: [7]).serialized()
        XCTAssertTrue(String(decoding: scalar, as: UTF8.self).contains("'shape': (), }"))
        XCTAssertEqual(try NPYArray.parse(scalar, source: "s").floats, [7])
    }

    func testRoundTripFloatAndDouble() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let floats = (0..<4000).map { Float($0) * 0.37 - 100 }
        try NPYArray.write(path: dir.file("a.npy"), shape: [2000, 2], floats: floats)
        let a = try NPYArray.read(path: dir.file("a.npy"))
        XCTAssertEqual(a.shape, [2000, 2])
        XCTAssertEqual(a.descr, "<f4")
        XCTAssertEqual(a.floats, floats)
        XCTAssertEqual(a.doubles, floats.map(Double.init))

        let doubles = [Double.pi, -1e-300, 1e300, 0, 2.5]
        try NPYArray.write(path: dir.file("b.npy"), shape: [5, 1], doubles: doubles)
        let b = try NPYArray.read(path: dir.file("b.npy"))
        XCTAssertEqual(b.shape, [5, 1])
        XCTAssertEqual(b.descr, "<f8")
        XCTAssertEqual(b.doubles, doubles)
        XCTAssertEqual(b.floats, doubles.map(Float.init))
        XCTAssertEqual(dir.entries(), ["a.npy", "b.npy"])

        assertFormatError(try NPYArray.write(path: dir.file("c.npy"), shape: [3, 2], floats: [1, 2]),
                          contains: ["c.npy", "2 values do not match shape [3, 2]"])
    }

    func testPathReaderMatchesInMemoryParser() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("x.npy")
        try AtomicFile.write(path: path, bytes: Self.numpyFile)
        XCTAssertEqual(try NPYArray.read(path: path), try NPYArray.parse(Self.numpyFile, source: "m"))
        let u1 = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", [1, 2, 3])
        try AtomicFile.write(path: path, bytes: u1)
        XCTAssertEqual(try NPYArray.read(path: path).floats, [1, 2, 3])
        for n in [0, 9, 60, 128, Self.numpyFile.count - 1] {
            try AtomicFile.write(path: path, bytes: Array(Self.numpyFile[0..<n]))
            assertFormatError(try NPYArray.read(path: path), contains: [path])
        }
        try AtomicFile.write(path: path, bytes: Self.numpyFile + [0])
        assertFormatError(try NPYArray.read(path: path), contains: [path, "unexpected bytes"])
    }

    func testReadsIntegerAndByteTypes() throws {
        let i8: [UInt8] = [5, 0, 0, 0, 0, 0, 0, 0] + [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        XCTAssertEqual(try NPYArray.parse(npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", i8), source: "i8").doubles, [5, -2])
        let i4: [UInt8] = [0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0x80]
        XCTAssertEqual(try NPYArray.parse(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", i4), source: "i4").doubles,
                       [2147483647, -2147483648])
        for descr in ["|u1", "<u1"] {
            let u1 = try NPYArray.parse(npy("{'descr': '\(descr)', 'fortran_order': False, 'shape': (2, 2), }", [0, 1, 128, 255]), source: "u1")
            XCTAssertEqual(u1.floats, [0, 1, 128, 255])
            XCTAssertEqual(u1.shape, [2, 2])
        }
    }

    func testHeaderVariants() throws {
        let data: [UInt8] = [0, 0, 128, 63]
        // Keys in another order, double quotes, no trailing comma, Python 2 long suffix.
        let variants = [
            "{'shape': (1,), 'fortran_order': False, 'descr': '<f4'}",
            "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1,)}",
            "{'descr':'<f4','fortran_order':False,'shape':(1L,),}",
        ]
        for v in variants {
            XCTAssertEqual(try NPYArray.parse(npy(v, data), source: v).floats, [1], v)
        }
        for version: UInt8 in [2, 3] {
            let file = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data, version: version)
            XCTAssertEqual(try NPYArray.parse(file, source: "v\(version)").floats, [1])
        }
    }

    func testRejectsMalformedFiles() {
        let data: [UInt8] = [0, 0, 128, 63]
        func bad(_ dict: String, _ d: [UInt8] = [0, 0, 128, 63], _ fragments: [String]) {
            assertFormatError(try NPYArray.parse(npy(dict, d), source: "bad.npy"), contains: ["bad.npy"] + fragments)
        }
        bad("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", data, ["fortran_order True"])
        bad("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", data, ["big-endian", "'>f4'".replacingOccurrences(of: "'", with: "\"")])
        bad("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", data, ["unsupported dtype"])
        bad("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", data, ["structured"])
        bad("{'descr': '<f4', 'shape': (1,), }", data, ["no 'fortran_order'"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1, }", data, ["unexpected header key \"extra\""])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (1,), }", data, ["duplicate"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data, ["truncated", "needs 8 bytes"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data + [0], ["1 unexpected bytes"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1), }", data, ["trailing comma"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': 1, }", data, ["not a tuple"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", data, ["non-negative integer"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", data, ["too large"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data, ["overflows"])
        bad("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", data, ["True or False"])
        bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk", data, ["after the header"])
        bad("['descr']", data, ["expected '{'"])
        assertFormatError(try NPYArray.parse(Array("not numpy at all".utf8), source: "x.npy"), contains: ["x.npy", "magic"])
        var wrongVersion = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data)
        wrongVersion[6] = 4
        assertFormatError(try NPYArray.parse(wrongVersion, source: "x.npy"), contains: ["version 4.0"])
        var longHeader = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data)
        longHeader[8] = 0xFF
        longHeader[9] = 0xFF
        assertFormatError(try NPYArray.parse(longHeader, source: "x.npy"), contains: ["beyond the end of the file"])
        var hugeHeader = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", data, version: 2)
        hugeHeader.replaceSubrange(8..<12, with: [0xFF, 0xFF, 0xFF, 0x7F])
        assertFormatError(try NPYArray.parse(hugeHeader, source: "x.npy"), contains: ["100 MB"])
        for n in 0..<Self.numpyFile.count {
            XCTAssertThrowsError(try NPYArray.parse(Array(Self.numpyFile[0..<n]), source: "t"), "truncated to \(n)")
        }
    }
}

final class PointFileTests: XCTestCase {
    func write(_ dir: TempDir, _ name: String, _ text: String) throws -> String {
        let path = dir.file(name)
        try AtomicFile.write(path: path, bytes: Array(text.utf8))
        return path
    }

    func testCSVWithHeaderBlankLinesAndMixedSeparators() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = try write(dir, "p.csv", "x, y\n\n1.5,2\r\n  -3 ,\t4e-1  \n5 6\n\n")
        let (points, dim) = try PointFile.read(path: path)
        XCTAssertEqual(dim, 2)
        XCTAssertEqual(points, [1.5, 2, -3, 0.4, 5, 6])
        let noHeader = try write(dir, "q.csv", "1\n2\n3")
        XCTAssertEqual(try PointFile.read(path: noHeader).points, [1, 2, 3])
        XCTAssertEqual(try PointFile.read(path: noHeader).dim, 1)
    }

    func testCSVErrorsNameTheLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        assertFormatError(try PointFile.read(path: write(dir, "ragged.csv", "1,2\n3,4\n\n5\n")),
                          contains: ["ragged.csv", "line 4 has 1 values", "earlier lines have 2"])
        assertFormatError(try PointFile.read(path: write(dir, "nan.csv", "1,2\n3,nan\n")),
                          contains: ["nan.csv", "line 2", "non-finite"])
        assertFormatError(try PointFile.read(path: write(dir, "inf.csv", "x,y\n1,2\n-inf,4\n")),
                          contains: ["line 3", "non-finite"])
        assertFormatError(try PointFile.read(path: write(dir, "big.csv", "1,1e39\n")),
                          contains: ["line 1", "non-finite"])
        assertFormatError(try PointFile.read(path: write(dir, "word.csv", "1,2\n3,abc\n")),
                          contains: ["line 2", "\"abc\" is not a number"])
        assertFormatError(try PointFile.read(path: write(dir, "twoheaders.csv", "x,y\na,b\n1,2\n")),
                          contains: ["line 2", "not a number"])
        assertFormatError(try PointFile.read(path: write(dir, "empty.csv", "x,y\n\n")), contains: ["no points"])
        assertFormatError(try PointFile.read(path: write(dir, "gap.csv", "1,,2\n")), contains: ["line 1", "empty field"])
        assertFormatError(try PointFile.read(path: write(dir, "trail.csv", "1,2\n3,4,\n")), contains: ["line 2", "empty field"])
        assertFormatError(try PointFile.read(path: dir.file("missing.csv")), contains: ["missing.csv", "cannot open"])
    }

    func testNPYByExtensionAndByMagic() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try NPYArray.write(path: dir.file("pts.npy"), shape: [3, 2], floats: [1, 2, 3, 4, 5, 6])
        let (points, dim) = try PointFile.read(path: dir.file("pts.npy"))
        XCTAssertEqual(dim, 2)
        XCTAssertEqual(points, [1, 2, 3, 4, 5, 6])
        try NPYArray.write(path: dir.file("pts.dat"), shape: [4], doubles: [1, 2, 3, 4])
        let oneD = try PointFile.read(path: dir.file("pts.dat"))
        XCTAssertEqual(oneD.dim, 1)
        XCTAssertEqual(oneD.points, [1, 2, 3, 4])
        try NPYArray.write(path: dir.file("cube.npy"), shape: [1, 1, 2], floats: [1, 2])
        assertFormatError(try PointFile.read(path: dir.file("cube.npy")), contains: ["cube.npy", "1-D or 2-D"])
        try NPYArray.write(path: dir.file("nan.npy"), shape: [2, 2], floats: [1, 2, .nan, 4])
        assertFormatError(try PointFile.read(path: dir.file("nan.npy")), contains: ["point 1", "non-finite"])
        try NPYArray.write(path: dir.file("none.npy"), shape: [0, 2], floats: [])
        assertFormatError(try PointFile.read(path: dir.file("none.npy")), contains: ["no points"])
        try AtomicFile.write(path: dir.file("fake.npy"), bytes: Array("1,2\n".utf8))
        assertFormatError(try PointFile.read(path: dir.file("fake.npy")), contains: ["fake.npy", "magic"])
    }

    func testWriteCSVRoundTrip() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let points: [Float] = [0.1, -2, 3.4028235e38, 0x1p-149, 123456.79, -0.0]
        try PointFile.writeCSV(path: dir.file("out.csv"), points: points, dim: 3)
        let text = String(decoding: try AtomicFile.read(path: dir.file("out.csv")), as: UTF8.self)
        XCTAssertEqual(text.split(separator: "\n").count, 2)
        XCTAssertTrue(text.hasPrefix("0.1,-2.0,"))
        let back = try PointFile.read(path: dir.file("out.csv"))
        XCTAssertEqual(back.dim, 3)
        XCTAssertEqual(back.points.map(\.bitPattern), points.map(\.bitPattern), "CSV output round-trips exactly")
        assertFormatError(try PointFile.writeCSV(path: dir.file("bad.csv"), points: [1, 2, 3], dim: 2), contains: ["bad.csv"])
        XCTAssertEqual(dir.entries(), ["out.csv"])
    }
}
