// gzip: the container of the IDX data set files (and most downloads).
@testable import Data
import Formats

/// Output cap: DEFLATE expands at most about 1032:1, so an 8 KB input can reach it, and the over-the-cap
/// refusal gets exercised; every decode stays fast and small.
let cap = 1 << 20

func fuzz(_ bytes: [UInt8]) {
    check(bytes)
    // Random mutations almost never keep the CRC-32 right; recompute it so the trailer, member and
    // padding logic behind it are reached too.
    let repaired = withFirstCRCRepaired(bytes)
    if repaired != bytes { check(repaired) }
}

func check(_ bytes: [UInt8]) {
    var output: [UInt8]?
    requireOneLine(refusalMessage(DataError.self) { output = try Gzip.decompress(bytes, maxOutput: cap, source: "fuzz") })
    guard let data = output else { return }
    require(data.count <= cap, "\(data.count) bytes out, over the cap")
    // The prefix decoder (how IDX learns the size to expect) agrees with the full decoder.
    for count in [0, 1, 100, 1020] {
        let prefix = try! Gzip.decompressPrefix(bytes, count: count, source: "fuzz")
        require(prefix.count <= count && data.starts(with: prefix), "decompressPrefix(\(count)) disagrees with decompress")
    }
    // Compressing is far slower than decompressing; small outputs are enough to check the round trip.
    guard data.count <= 1 << 16 else { return }
    require(try! Gzip.decompress(try! Gzip.compress(data)) == data, "compress/decompress round trip changed the data")
}

/// `bytes` with the first member's CRC-32 recomputed from what its DEFLATE data decodes to.
func withFirstCRCRepaired(_ bytes: [UInt8]) -> [UInt8] {
    guard Gzip.isGzip(bytes),
          let start = try? Gzip.headerEnd(bytes, start: 0, fail: { _ in DataError("") }),
          let decoded = try? Zlib.inflate(bytes, start: start, format: .raw, maxOutput: cap),
          let end = decoded.end, bytes.count - end >= 8 else { return bytes }
    var out = bytes
    let crc = Checksum.crc32(decoded.output)
    for k in 0..<4 { out[end + k] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k))) }
    return out
}
