/// The checksums PNG and zlib need.
public enum Checksum {
    private static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO-HDLC, as used by PNG, zip and gzip). `previous` continues a running checksum.
    public static func crc32(_ bytes: some Sequence<UInt8>, previous: UInt32 = 0) -> UInt32 {
        var c = ~previous
        crcTable.withUnsafeBufferPointer { table in
            let done: Void? = bytes.withContiguousStorageIfAvailable { buf in
                for b in buf { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            }
            if done == nil {
                for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            }
        }
        return ~c
    }

    /// Adler-32 (zlib's trailer). `previous` continues a running checksum (start value 1).
    public static func adler32(_ bytes: some Sequence<UInt8>, previous: UInt32 = 1) -> UInt32 {
        var a = previous & 0xFFFF, b = previous >> 16
        // 5552 is the largest run after which the sums still fit in 32 bits before the modulo.
        var pending = 0
        for byte in bytes {
            a += UInt32(byte)
            b += a
            pending += 1
            if pending == 5552 {
                a %= 65521
                b %= 65521
                pending = 0
            }
        }
        return (b % 65521) << 16 | (a % 65521)
    }
}
