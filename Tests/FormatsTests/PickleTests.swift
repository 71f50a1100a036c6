import XCTest
@testable import Formats
#if canImport(Glibc)
import Glibc
#endif

/// The pickle interpreter: Python's own output in every protocol read as the same data, and the limits that keep
/// hostile input cheap.
final class PickleTests: XCTestCase {
    /// A Python-like rendering of what the reader built, to compare whole structures at once.
    func render(_ v: PickleValue) -> String {
        if v.isNone { return "None" }
        if let b = v.bool { return b ? "True" : "False" }
        if let i = v.int { return "\(i)" }
        if let d = v.double { return "\(d)" }
        if let s = v.string { return "'\(s)'" }
        if let b = v.bytes { return "b\(Array(b))" }
        if let t = v.tuple { return "(" + t.map(render).joined(separator: ", ") + (t.count == 1 ? ",)" : ")") }
        if let l = v.list { return "[" + l.map(render).joined(separator: ", ") + "]" }
        if let d = v.dictionary { return "{" + d.map { render($0.key) + ": " + render($0.value) }.joined(separator: ", ") + "}" }
        return v.summary
    }

    func testEveryProtocolReadsAsTheSameData() throws {
        let expected = "{'ints': [0, 1, -1, 255, 256, 65535, 65536, -129, 2147483648, -2147483649, 9223372036854775807, "
            + "-9223372036854775808], 'floats': (1.5, -0.0, 1e+300), 'text': ['', 'abc', 'café ☃'], "
            + "'flags': (None, True, False), 'nested': {'k': [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]}}"
        for (p, hex) in PickleTestData.everyProtocol.enumerated() {
            let value = try PickleReader.read(bytes(hex: hex), source: "protocol \(p)")
            XCTAssertEqual(render(value), expected, "protocol \(p)")
        }
    }

    func testIntegersBeyondSixtyFourBitsKeepTheirBytes() throws {
        let values = try PickleReader.read(bytes(hex: PickleTestData.bigIntegers), source: "big").list!
        XCTAssertTrue(values.allSatisfy { $0.int == nil })
        // 2**63, -2**63-1, 2**64, -2**70, 2**80+5 as minimal little-endian two's complement.
        XCTAssertEqual(values.map { $0.integerBytes! }, [
            [0, 0, 0, 0, 0, 0, 0, 0x80, 0], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0xFF],
            [0, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0xC0], [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ])
    }

    /// os.system, builtins.eval and subprocess.Popen pickles are read as records of the call, which never runs.
    func testCodeRunningGlobalsAreReadAsInertRecords() throws {
        unlink(PickleTestData.marker)
        let names = ["system": ["posix.system"], "eval": ["__builtin__.eval", "builtins.eval"],
                     "popen": ["commands.Popen", "subprocess.Popen"]]
        for (what, p, hex) in PickleTestData.codeRunning {
            let value = try PickleReader.read(bytes(hex: hex), source: "\(what) \(p)")
            let call = try XCTUnwrap(value.record, "\(what) protocol \(p)")
            XCTAssertEqual(call.kind, .call)
            XCTAssertTrue(names[what]!.contains(call.calleeName ?? ""), "\(what) \(p): \(call.calleeName ?? "-")")
            // The command is there as data: the first argument (a string, or Popen's list of strings).
            let argument = try XCTUnwrap(call.arguments.tuple?.first)
            let text = argument.string ?? argument.list?.compactMap(\.string).joined(separator: " ")
            XCTAssertTrue(text?.contains(PickleTestData.marker) == true, "\(what) \(p)")
            XCTAssertTrue(value.summary.hasPrefix("a call of \""), value.summary)
        }
        XCTAssertEqual(access(PickleTestData.marker, F_OK), -1, "nothing ran: the marker file was not created")
    }

    func testBytesAndProtocolTwoBytes() throws {
        var b = PickleBuilder(protocolVersion: 3)
        b.byteString([0, 0xFF, 0x61])
        b.stop()
        XCTAssertEqual(try PickleReader.read(b.bytes, source: "b").bytes.map(Array.init), [0, 0xFF, 0x61])
        // Protocol 2 cannot write bytes: Python writes _codecs.encode(text, 'latin1') for {'b': b'\x00\xffab'}.
        let p2 = try PickleReader.read(bytes(hex: "80027d71005801000000627101635f636f646563730a656e636f64650a7102580500"
                                                  + "000000c3bf6162710358060000006c6174696e317104867105527106732e"), source: "p2")
        let encoded = try XCTUnwrap(p2["b"])
        XCTAssertEqual(encoded.record?.calleeName, "_codecs.encode")
        XCTAssertEqual(Array(try NumPyPickle.arrayBytes(encoded, what: "b")), [0, 0xFF, 0x61, 0x62])
    }

    func testDuplicateDictionaryKeysKeepTheirFirstPlaceAndLastValue() throws {
        var b = PickleBuilder()
        b.emptyDict()
        b.mark()
        for (k, v) in [("a", 1), ("b", 2), ("a", 3)] {
            b.string(k)
            b.int(v)
        }
        b.setItems()
        b.stop()
        XCTAssertEqual(render(try PickleReader.read(b.bytes, source: "dup")), "{'a': 3, 'b': 2}")
    }

    func testOrderedDictFilledBySetItemsIsADictionary() throws {
        var b = PickleBuilder()
        b.call("collections", "OrderedDict") { _ in }
        b.mark()
        b.string("x")
        b.int(1)
        b.setItems()
        b.stop()
        let value = try PickleReader.read(b.bytes, source: "od")
        XCTAssertEqual(value["x"]?.int, 1)
        XCTAssertEqual(value.record?.calleeName, "collections.OrderedDict")
    }

    func testSharedAndSelfContainingValues() throws {
        // l = []; l.append(l): EMPTY_LIST, MEMOIZE, LONG_BINGET 0, APPEND.
        var b = PickleBuilder()
        b.emptyList()
        b.memoize()
        b.get(0)
        b.op(0x61)
        b.stop()
        let l = try PickleReader.read(b.bytes, source: "cycle")
        XCTAssertTrue(l.list![0].isIdentical(to: l))
    }

    // MARK: Hostile input

    func assertRefused(_ input: [UInt8], limits: PickleLimits = .default, _ fragments: [String],
                       file: StaticString = #filePath, line: UInt = #line) {
        assertFormatError(try PickleReader.read(input, source: "hostile.pkl", limits: limits),
                          contains: ["hostile.pkl: pickle"] + fragments, file: file, line: line)
    }

    func testClaimedLengthsAreCheckedAgainstTheBytesPresent() {
        let huge = PickleBuilder.le(1 << 62, 8)
        assertRefused([0x80, 4, 0x8D] + huge + [0x2E], ["claims 4611686018427387904 bytes but only 1 remain", "(byte 2)"])
        assertRefused([0x80, 4, 0x8E] + huge, ["claims 4611686018427387904 bytes"])  // BINBYTES8
        assertRefused([0x80, 5, 0x96] + PickleBuilder.le(.max, 8), ["claims 18446744073709551615 bytes"])  // BYTEARRAY8
        assertRefused([0x80, 3, 0x42, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E], ["claims 4294967295 bytes"])  // BINBYTES
        assertRefused([0x80, 2, 0x8B, 0xFF, 0xFF, 0xFF, 0x7F, 0x2E], ["claims 2147483647 bytes"])  // LONG4
        assertRefused([0x80, 2, 0x8B, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E], ["LONG4 has a negative length -1"])
        assertRefused([0x80, 2, 0x54, 0x00, 0x00, 0x00, 0x80, 0x2E], ["BINSTRING has a negative length"])
        assertRefused([0x80, 4, 0x95] + huge + [0x4E, 0x2E], ["frame of 4611686018427387904 bytes"])
    }

    func testDeepNestingIsRefused() {
        // None wrapped in 100,000 one-tuples: one byte per level.
        assertRefused([0x80, 4, 0x4E] + [UInt8](repeating: 0x85, count: 100_000) + [0x2E], ["nests deeper than 256 levels"])
        assertRefused([0x80, 4] + [UInt8](repeating: 0x28, count: 100_000), ["opens more than 256 MARKs"])
        // Each new list gets the previous one appended after both were built: the depth is tracked through
        // the mutation too.
        var c = PickleBuilder()
        c.emptyList()
        c.memoize()
        for i in 0..<300 {
            c.emptyList()
            c.memoize()
            c.get(UInt32(i))
            c.op(0x61)  // APPEND: new.append(previous)
        }
        c.stop()
        assertRefused(c.bytes, ["nests deeper than 256 levels"])
    }

    func testMemoAndObjectLimits() {
        // A PUT at index 4 billion costs one dictionary entry, not a 4-billion-slot table.
        XCTAssertNoThrow(try PickleReader.read([0x80, 4, 0x4E, 0x72, 0xFF, 0xFF, 0xFF, 0xFF, 0x2E], source: "put"))
        assertRefused([0x80, 4, 0x6A, 0x10, 0, 0, 0, 0x2E], ["reads memo entry 16, which was never stored"])
        assertRefused([0x80, 4, 0x4E] + [UInt8](repeating: 0x94, count: 101) + [0x2E], limits: PickleLimits(maxMemoEntries: 100),
                      ["memo grows beyond 100 entries"])
        assertRefused([0x80, 4] + [UInt8](repeating: 0x4E, count: 1001) + [0x2E], limits: PickleLimits(maxObjects: 1000),
                      ["builds more than 1000 objects"])
        assertRefused([0x80, 4, 0x70] + Array("0\n".utf8) + [0x2E], ["empty stack"])
        assertRefused([0x80, 4, 0x4E, 0x70] + Array("-1\n".utf8) + [0x2E], ["memo index -1 is negative"])
    }

    func testMalformedOpcodeSequences() {
        assertRefused([0x80, 6, 0x4E, 0x2E], ["protocol 6 is not supported"])
        assertRefused([0x80, 4, 0xFF], ["unknown opcode 0xff"])
        assertRefused([0x80, 4, 0x2E], ["pops from an empty stack"])
        assertRefused([0x80, 4, 0x4E], ["ends inside an opcode"])
        assertFormatError(try PickleReader.read([0x80, 4, 0x4E, 0x2E, 0x4E], source: "trailing.pkl"),
                          contains: ["trailing.pkl: 1 bytes after the end of the pickle"])
        assertRefused([0x80, 4, 0x4E, 0x4E, 0x62, 0x2E], ["BUILD sets the state of None"])
        assertRefused([0x80, 4, 0x4E, 0x4E, 0x52, 0x2E], ["call arguments are None, not a tuple"])
        assertRefused([0x80, 4, 0x29, 0x4E, 0x61, 0x2E], ["APPEND to a tuple of 0 items"])
        assertRefused([0x80, 4, 0x82, 0x01, 0x2E], ["extension code 1"])
        assertRefused([0x80, 5, 0x97, 0x2E], ["out-of-band buffer"])
        assertRefused([0x80, 4, 0x4E, 0x4E, 0x93, 0x2E], ["STACK_GLOBAL needs two strings"])
        assertRefused([0x80, 4, 0x8C, 0x02, 0xC3, 0x28, 0x2E], ["string is not valid UTF-8"])
        assertRefused(Array("I12x\n.".utf8), ["INT text is not a whole number"])
        assertRefused(Array("L99999999999999999999L\n.".utf8), ["LONG text is not a whole number that fits in 64 bits"])
        assertRefused(Array("S'abc\n.".utf8), ["STRING argument is not a quoted string"])
        assertRefused(Array("(I1\nd.".utf8), ["DICT has an odd number of items"])
    }

    /// Every proper prefix of a real pickle and thousands of corrupted copies are refused on one line or read.
    func testTruncatedAndCorruptedInputNeverCrashes() {
        let good = bytes(hex: PickleTestData.everyProtocol[4])
        for n in 0..<good.count {
            assertFormatError(try PickleReader.read(Array(good[0..<n]), source: "cut"), contains: ["cut: "])
        }
        var rng: UInt64 = 0x9E3779B97F4A7C15
        for _ in 0..<5000 {
            var input = good
            for _ in 0...(rng % 3) {
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                input[Int(rng >> 33) % input.count] = UInt8(truncatingIfNeeded: rng >> 17)
            }
            do { _ = try PickleReader.read(input, source: "flip") } catch let e as FormatError {
                XCTAssertFalse(e.message.contains("\n"))
            } catch {
                XCTFail("unexpected error \(error)")
            }
        }
    }
}
