import XCTest
import Eval
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// Published FID reference statistics, read without running anything: an EDM-style pickle of numpy arrays and
/// ADM's `.npz`.
final class ReferenceStatisticsTests: XCTestCase {
    /// Written by numpy 2.4.6 / Python 3.11.7 for mu = [0.5, -1.0], sigma = [[2, 0.5], [0.5, 1]]:
    /// `pickle.dumps({'mu': mu, 'sigma': sigma}, protocol=4)` (as `img256.pkl` is written).
    static let pickle = """
        800495ea000000000000007d94288c026d75948c166e756d70792e5f636f72652e6d756c74696172726179948c0c5f726563
        6f6e7374727563749493948c056e756d7079948c076e6461727261799493944b0085944301629487945294284b014b028594
        68058c0564747970659493948c02663894898887945294284b038c013c944e4e4e4affffffff4affffffff4b007494628943
        10000000000000e03f000000000000f0bf947494628c057369676d6194680468074b008594680987945294284b014b024b02
        869468118943200000000000000040000000000000e03f000000000000e03f000000000000f03f94749462752e
        """

    /// `np.savez(f, mu=mu, sigma=sigma, arr_0=np.zeros((1, 2, 2, 3), np.uint8))` (ADM's reference batches hold the
    /// images as arr_0).
    static let npz = """
        504b03042d000000000000002100bcd4baa1ffffffffffffffff060014006d752e6e70790100100090000000000000009000
        000000000000934e554d5059010076007b276465736372273a20273c6638272c2027666f727472616e5f6f72646572273a20
        46616c73652c20277368617065273a2028322c292c207d202020202020202020202020202020202020202020202020202020
        2020202020202020202020202020202020202020202020202020202020202020200a000000000000e03f000000000000f0bf
        504b03042d0000000000000021002fe12115ffffffffffffffff090014007369676d612e6e707901001000a0000000000000
        00a000000000000000934e554d5059010076007b276465736372273a20273c6638272c2027666f727472616e5f6f72646572
        273a2046616c73652c20277368617065273a2028322c2032292c207d20202020202020202020202020202020202020202020
        2020202020202020202020202020202020202020202020202020202020202020202020200a00000000000000400000000000
        00e03f000000000000e03f000000000000f03f504b03042d0000000000000021006559d939ffffffffffffffff0900140061
        72725f302e6e7079010010008c000000000000008c00000000000000934e554d5059010076007b276465736372273a20277c
        7531272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028312c20322c20322c203329
        2c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020
        20202020200a000000000000000000000000504b01022d032d000000000000002100bcd4baa1900000009000000006000000
        00000000000000008001000000006d752e6e7079504b01022d032d0000000000000021002fe12115a0000000a00000000900
        000000000000000000008001c80000007369676d612e6e7079504b01022d032d0000000000000021006559d9398c0000008c
        0000000900000000000000000000008001a30100006172725f302e6e7079504b05060000000003000300a20000006a020000
        0000
        """

    /// `np.savez_compressed(f, mu=mu, sigma=sigma)`: deflated entries.
    static let compressedNPZ = """
        504b03042d000000080000002100bcd4baa1ffffffffffffffff060014006d752e6e70790100100090000000000000004d00
        0000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a06e9366a1aea3a09e965f54529498179f5f94920a12774b
        cc294e058a17672416a402f91a463a9a3a0ab50a14002e063078600fa13fec0700504b03042d0000000800000021002fe121
        15ffffffffffffffff090014007369676d612e6e707901001000a00000000000000051000000000000009bec17ea1b10c9c8
        50c650ad9e925a9c5ca46ea5a06e9366a1aea3a09e965f54529498179f5f94920a12774bcc294e058a17672416a402f91a46
        3a0a469a3a0ab50a64032e06087080500fec51e90ff600504b01022d032d000000080000002100bcd4baa14d000000900000
        000600000000000000000000008001000000006d752e6e7079504b01022d032d0000000800000021002fe1211551000000a0
        0000000900000000000000000000008001850000007369676d612e6e7079504b050600000000020002006b00000011010000
        0000
        """

    func write(_ hex: String, _ name: String) throws -> String {
        let path = NSTemporaryDirectory() + "reference-statistics-\(getpid())-\(name)"
        let digits = hex.utf8.compactMap { c -> UInt8? in (0x30...0x39).contains(c) ? c - 0x30 : (0x61...0x66).contains(c) ? c - 0x61 + 10 : nil }
        try AtomicFile.write(path: path, bytes: stride(from: 0, to: digits.count - 1, by: 2).map { digits[$0] << 4 | digits[$0 + 1] })
        addTeardownBlock { unlink(path) }
        return path
    }

    func testPickleAndNPZGiveTheSameStatistics() throws {
        for (hex, name) in [(Self.pickle, "img.pkl"), (Self.npz, "ref.npz")] {
            let stats = try ReferenceStatistics.read(path: try write(hex, name))
            XCTAssertEqual(stats.dimension, 2, name)
            XCTAssertEqual(stats.mean, [0.5, -1.0], name)
            XCTAssertEqual(stats.covariance, [2, 0.5, 0.5, 1], name)
        }
    }

    /// FID against published statistics is the same number as against equal statistics computed here.
    func testDistanceToReferenceStatistics() throws {
        let reference = try ReferenceStatistics.read(path: try write(Self.pickle, "img.pkl"))
        let generated = try FeatureStatistics(count: 10, mean: [0, 0], covariance: [1, 0, 0, 1])
        let same = try FeatureStatistics(count: 10, mean: reference.mean, covariance: reference.covariance)
        XCTAssertEqual(try FID.distance(generated, reference), try FID.distance(generated, same))
        XCTAssertEqual(try FID.distance(same, reference), 0, accuracy: 1e-12)
    }

    func testRefusals() throws {
        XCTAssertThrowsError(try ReferenceStatistics.read(path: try write(Self.compressedNPZ, "c.npz"))) {
            XCTAssertTrue("\($0)".contains("is compressed"), "\($0)")
        }
        // A pickle of something else, and one that would run a command.
        for (hex, fragment) in [("80044b012e", "not reference statistics (a dict with 'mu' and 'sigma'), but the integer 1"),
                                ("8004951f000000000000008c05706f736978948c0673797374656d9493948c047472756594859452942e",
                                 "a call of \"posix.system\"")] {
            XCTAssertThrowsError(try ReferenceStatistics.read(path: try write(hex, "x.pkl"))) {
                XCTAssertTrue("\($0)".contains(fragment), "\($0)")
                XCTAssertFalse("\($0)".contains("\n"))
            }
        }
    }
}
