// PNG images: the image-folder data sets.
@testable import Formats

func fuzz(_ bytes: [UInt8]) {
    check(bytes)
    // Random mutations almost never keep the chunk CRCs right, which would stop every input at the first
    // CRC check; the same input with its CRCs recomputed reaches the chunk logic, inflate and unfiltering.
    let repaired = withChunkCRCsRepaired(bytes)
    if repaired != bytes { check(repaired) }
}

func check(_ bytes: [UInt8]) {
    var decoded: Image?
    requireOneLine(refusalMessage(FormatError.self) { decoded = try Image.decodePNG(bytes) })
    guard let image = decoded else { return }
    require((1...4).contains(image.channels) && image.pixels.count == image.width * image.height * image.channels,
            "\(image.pixels.count) pixel bytes for \(image.width)x\(image.height)x\(image.channels)")
    // Re-encoding is slow for large images (five filters per row, then DEFLATE); small ones suffice.
    guard image.pixels.count <= 1 << 16 else { return }
    let again = try! Image.decodePNG(try! image.pngBytes())
    require(again == image, "encode/decode round trip changed the image")
}

/// `bytes` with the CRC of every complete chunk recomputed.
func withChunkCRCsRepaired(_ bytes: [UInt8]) -> [UInt8] {
    var out = bytes
    var pos = 8
    while out.count - pos >= 12 {
        let length = Int(PNGChunks.readBE32(out, pos))
        guard out.count - pos - 12 >= length else { break }
        let crc = Checksum.crc32(out[(pos + 4)..<(pos + 8 + length)])
        for k in 0..<4 { out[pos + 8 + length + k] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(k))) }
        pos += 12 + length
    }
    return out
}
