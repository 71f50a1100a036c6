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

    func testKnownCRC32CValues() {
        // The CRC catalogue's check value, and the test vectors of RFC 3720 (iSCSI), appendix B.4.
        XCTAssertEqual(Checksum.crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(Checksum.crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(Checksum.crc32c([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(Checksum.crc32c((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(Checksum.crc32c((0..<32).reversed().map { UInt8($0) }), 0x113F_DB5C)
        XCTAssertEqual(Checksum.crc32c([]), 0)
        let split = Checksum.crc32c(Array("6789".utf8), previous: Checksum.crc32c(Array("12345".utf8)))
        XCTAssertEqual(split, 0xE306_9283, "running CRC continues across pieces")
    }

    func testLongInputsEightBytesAtATime() {
        // Values from Python (zlib.crc32, and a table-driven CRC-32C) over the same bytes.
        let data = (0..<1_000_003).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 251) }
        XCTAssertEqual(Checksum.crc32(data), 0xC407_5DEF)
        XCTAssertEqual(Checksum.crc32c(data), 0x9DAE_6419)
        // Every split point and length mod 8, against the byte-at-a-time path a non-contiguous sequence takes.
        let short = Array(data.prefix(40))
        for cut in 0...short.count {
            let whole = Checksum.crc32(short[cut...], previous: Checksum.crc32(short[..<cut]))
            XCTAssertEqual(whole, Checksum.crc32(short.lazy.map { $0 }), "cut at \(cut)")
            let wholeC = Checksum.crc32c(short[cut...], previous: Checksum.crc32c(short[..<cut]))
            XCTAssertEqual(wholeC, Checksum.crc32c(short.lazy.map { $0 }), "cut at \(cut)")
        }
    }
}
