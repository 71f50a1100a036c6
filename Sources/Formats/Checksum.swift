/// The CRC-32 checksums of the formats read and written here (zlib checks DEFLATE's own Adler-32).
public enum Checksum {
    /// CRC-32 (ISO-HDLC, as used by PNG, zip and gzip). `previous` continues a running checksum.
    public static func crc32(_ bytes: some Sequence<UInt8>, previous: UInt32 = 0) -> UInt32 {
        update(previous, bytes, tables: crc32Tables)
    }

    /// CRC-32C (Castagnoli), the checksum of TFRecord files (TensorBoard's event files). `previous`
    /// continues a running checksum.
    public static func crc32c(_ bytes: some Sequence<UInt8>, previous: UInt32 = 0) -> UInt32 {
        update(previous, bytes, tables: crc32cTables)
    }

    /// Both are reflected CRCs that start from and end with all ones; only the polynomial differs.
    private static let crc32Tables = tables(reflectedPolynomial: 0xEDB8_8320)
    private static let crc32cTables = tables(reflectedPolynomial: 0x82F6_3B78)

    /// Eight 256-entry tables, one after the other, for "slicing by 8": table k gives the CRC of a byte
    /// followed by k zero bytes, so eight lookups advance the CRC by eight bytes at once (about six times
    /// faster than a byte at a time, which matters for the tens of megabytes of a gzipped data set).
    private static func tables(reflectedPolynomial: UInt32) -> [UInt32] {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for n in 0..<256 {
            var c = UInt32(n)
            for _ in 0..<8 { c = (c & 1) != 0 ? reflectedPolynomial ^ (c >> 1) : c >> 1 }
            t[n] = c
        }
        for k in 1..<8 {
            for n in 0..<256 {
                let previous = t[(k - 1) * 256 + n]
                t[k * 256 + n] = (previous >> 8) ^ t[Int(previous & 0xFF)]
            }
        }
        return t
    }

    private static func update(_ previous: UInt32, _ bytes: some Sequence<UInt8>, tables: [UInt32]) -> UInt32 {
        var c = ~previous
        tables.withUnsafeBufferPointer { t in
            @inline(__always) func byte(_ b: UInt8) { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            let done: Void? = bytes.withContiguousStorageIfAvailable { buf in
                var i = 0
                while buf.count - i >= 8 {
                    let low = c ^ (UInt32(buf[i]) | UInt32(buf[i + 1]) << 8 | UInt32(buf[i + 2]) << 16 | UInt32(buf[i + 3]) << 24)
                    let high = UInt32(buf[i + 4]) | UInt32(buf[i + 5]) << 8 | UInt32(buf[i + 6]) << 16 | UInt32(buf[i + 7]) << 24
                    c = t[7 * 256 + Int(low & 0xFF)] ^ t[6 * 256 + Int((low >> 8) & 0xFF)]
                        ^ t[5 * 256 + Int((low >> 16) & 0xFF)] ^ t[4 * 256 + Int(low >> 24)]
                        ^ t[3 * 256 + Int(high & 0xFF)] ^ t[2 * 256 + Int((high >> 8) & 0xFF)]
                        ^ t[256 + Int((high >> 16) & 0xFF)] ^ t[Int(high >> 24)]
                    i += 8
                }
                while i < buf.count {
                    byte(buf[i])
                    i += 1
                }
            }
            if done == nil {
                for b in bytes { byte(b) }
            }
        }
        return ~c
    }
}
