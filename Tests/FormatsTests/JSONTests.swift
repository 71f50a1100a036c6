import XCTest
@testable import Formats

final class JSONTests: XCTestCase {
    func testParsesAllValueKinds() throws {
        let v = try JSONValue.parse(#" { "a" : [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}, "e": {} , "f": [] } "#)
        XCTAssertEqual(v["a"], .array([.number(1), .number(-2.5), .number(300), .bool(true), .bool(false), .null]))
        XCTAssertEqual(v["b"]?["c"]?.string, "d")
        XCTAssertEqual(v["e"], .object([]))
        XCTAssertEqual(v["f"]?.array?.count, 0)
        XCTAssertNil(v["missing"])
        XCTAssertEqual(v["a"]?.array?[0].int, 1)
        XCTAssertNil(v["a"]?.array?[1].int, "-2.5 is not an integer")
        XCTAssertEqual(v["a"]?.array?[1].double, -2.5)
        XCTAssertEqual(v["a"]?.array?[3].bool, true)
        XCTAssertTrue(v["a"]?.array?[5].isNull ?? false)
    }

    func testObjectKeepsKeyOrderAndDuplicates() throws {
        let v = try JSONValue.parse(#"{"z": 1, "a": 2, "z": 3}"#)
        XCTAssertEqual(v.object?.map(\.0), ["z", "a", "z"])
        XCTAssertEqual(v["z"]?.int, 1, "subscript returns the first occurrence")
        XCTAssertEqual(v.serialized(), #"{"z":1,"a":2,"z":3}"#)
    }

    func testRoundTrip() throws {
        let doc: JSONValue = .object([
            ("name", .string("tvm \"small\"\n\t\\ é 😀 \u{01}")),
            ("numbers", .array([.number(0), .number(-0.0), .number(1), .number(-17), .number(0.1), .number(1e-7),
                                .number(123456.789), .number(1e300), .number(-2.5e-300), .number(9007199254740993.0),
                                .number(4503599627370496.5)])),
            ("nested", .object([("deep", .array([.array([.object([("x", .null)])])]))])),
            ("flags", .array([.bool(true), .bool(false)])),
        ])
        for pretty in [false, true] {
            let text = doc.serialized(pretty: pretty)
            XCTAssertEqual(try JSONValue.parse(text), doc, "pretty: \(pretty)")
        }
    }

    func testNumberFormatting() {
        XCTAssertEqual(JSONValue.number(3).serialized(), "3")
        XCTAssertEqual(JSONValue.number(-42).serialized(), "-42")
        XCTAssertEqual(JSONValue.number(0.5).serialized(), "0.5")
        XCTAssertEqual(JSONValue.number(0.1).serialized(), "0.1")
        XCTAssertEqual(JSONValue.number(9007199254740991).serialized(), "9007199254740991")
        XCTAssertEqual(JSONValue.number(.nan).serialized(), "null")
        XCTAssertEqual(JSONValue.number(.infinity).serialized(), "null")
        XCTAssertEqual(JSONValue.array([.number(-.infinity)]).serialized(), "[null]")
        // Beyond 2^53 integers are no longer exact, so they use the shortest round-trip form.
        let big = JSONValue.number(9007199254740992).serialized()
        XCTAssertFalse(big.hasSuffix("992"), big)
        XCTAssertEqual(Double(big), 9007199254740992)
        XCTAssertEqual(JSONValue.number(1e300).serialized(), "1e+300")
    }

    func testPrettyLayout() {
        let v: JSONValue = .object([("a", .array([.number(1), .number(2)])), ("b", .object([])), ("c", .string("x"))])
        XCTAssertEqual(v.serialized(pretty: true), "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": \"x\"\n}")
    }

    func testStringEscapes() throws {
        let v = try JSONValue.parse(#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00""#)
        XCTAssertEqual(v.string, "a\"b\\c/d\u{08}\u{0C}\n\r\tAé€😀")
        XCTAssertEqual(JSONValue.string("\u{01}\u{1F}\"\\").serialized(), #""\u0001\u001f\"\\""#)
        XCTAssertEqual(JSONValue.string("é😀/").serialized(), "\"é😀/\"", "non-ASCII is written as UTF-8")
    }

    func testRejectsBadStrings() {
        assertFormatError(try JSONValue.parse(#""\ud83d""#), contains: ["surrogate"])
        assertFormatError(try JSONValue.parse(#""\ude00""#), contains: ["unpaired low surrogate"])
        assertFormatError(try JSONValue.parse(#""\ud83d\u0041""#), contains: ["low surrogate"])
        assertFormatError(try JSONValue.parse(#""\x""#), contains: ["invalid escape"])
        assertFormatError(try JSONValue.parse(#""\u12G4""#), contains: ["hex digit"])
        assertFormatError(try JSONValue.parse("\"a\nb\""), contains: ["control character"])
        assertFormatError(try JSONValue.parse(#""abc"#), contains: ["unterminated"])
        assertFormatError(try JSONValue.parse([0x22, 0xFF, 0xFE, 0x22]), contains: ["UTF-8"])
        assertFormatError(try JSONValue.parse([0x22, 0x5C, 0x6E, 0xC3, 0x22]), contains: ["UTF-8"])
    }

    func testRejectsBadNumbers() {
        for bad in ["01", "1.", ".5", "-", "+1", "1e", "1e+", "-01", "0x10", "NaN", "Infinity", "1.5.2", "1e400"] {
            XCTAssertThrowsError(try JSONValue.parse(bad), bad)
        }
        XCTAssertEqual(try JSONValue.parse("-0.0e-0").double, 0)
        XCTAssertEqual(try JSONValue.parse("1E+2").double, 100)
    }

    func testRejectsTrailingGarbageAndStructuralErrors() {
        assertFormatError(try JSONValue.parse("1 2"), contains: ["trailing", "byte 2"])
        assertFormatError(try JSONValue.parse("{}x"), contains: ["trailing"])
        assertFormatError(try JSONValue.parse("[1,]"), contains: ["expected a value"])
        assertFormatError(try JSONValue.parse(#"{"a":1,}"#), contains: ["string key"])
        assertFormatError(try JSONValue.parse(#"{"a" 1}"#), contains: ["':'"])
        assertFormatError(try JSONValue.parse("[1 2]"), contains: ["',' or ']'"])
        assertFormatError(try JSONValue.parse(""), contains: ["end of input"])
        assertFormatError(try JSONValue.parse("   "), contains: ["end of input"])
        assertFormatError(try JSONValue.parse("tru"), contains: ["literal"])
        assertFormatError(try JSONValue.parse("nulll"), contains: ["trailing"])
        assertFormatError(try JSONValue.parse("{'a': 1}"), contains: ["string key"])
        assertFormatError(try JSONValue.parse("[1] // comment"), contains: ["trailing"])
    }

    func testDepthLimit() throws {
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        XCTAssertNoThrow(try JSONValue.parse(ok))
        let tooDeep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        assertFormatError(try JSONValue.parse(tooDeep), contains: ["nesting deeper than 64"])
        XCTAssertNoThrow(try JSONValue.parse(tooDeep, maxDepth: 65))
        let objects = String(repeating: #"{"a":"#, count: 10) + "1" + String(repeating: "}", count: 10)
        assertFormatError(try JSONValue.parse(objects, maxDepth: 9), contains: ["nesting"])
        // A hostile input a million levels deep must fail cleanly, not overflow the stack.
        let hostile = [UInt8](repeating: UInt8(ascii: "["), count: 1_000_000)
        assertFormatError(try JSONValue.parse(hostile, maxDepth: 100_000), contains: ["nesting deeper than 1000"])
    }

    func testParsesFromSlicesAndNonContiguousCollections() throws {
        let bytes = Array("xx[1,2]yy".utf8)
        XCTAssertEqual(try JSONValue.parse(bytes[2..<7]), .array([.number(1), .number(2)]))
        XCTAssertEqual(try JSONValue.parse("[true]".utf8.reversed().reversed()), .array([.bool(true)]))
    }
}
