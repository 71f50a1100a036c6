import Formats

/// gzip (RFC 1952) files: the container around Fashion-MNIST's IDX files and most data set downloads.
///
/// Reading checks everything the format lets us check: the header (magic, method 8, reserved flag bits
/// zero, the optional FEXTRA / FNAME / FCOMMENT fields and the FHCRC header checksum), the DEFLATE
/// data (decoded by zlib, `Formats.Zlib`) and each member's CRC-32 and ISIZE trailer. A file of several members (`cat a.gz b.gz`) decodes to the concatenation, as `gunzip`
/// does; zero bytes after the last member (tape padding) are ignored, anything else after it is an error.
/// The total output is capped, because a few KB of DEFLATE can claim gigabytes.
public enum Gzip {
    /// The two magic bytes every gzip member starts with.
    public static let magic: [UInt8] = [0x1F, 0x8B]

    /// Default cap on decompressed bytes (2 GiB): far above any data set this package loads whole.
    public static let defaultMaxOutput = 1 << 31

    /// True when `bytes` starts with the gzip magic 1f 8b.
    public static func isGzip(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == magic[0] && bytes[1] == magic[1]
    }

    /// Decodes every member of a gzip file and returns their concatenated contents.
    /// `source` names the data in error messages (usually the file path); `limit` says what `maxOutput`
    /// is when it comes from the contents (e.g. "the 784 bytes its IDX header declares").
    public static func decompress(_ bytes: [UInt8], maxOutput: Int = defaultMaxOutput, source: String = "gzip data",
                                  limit: String? = nil) throws -> [UInt8] {
        func fail(_ what: String) -> DataError { DataError(file: source, "gzip: " + what) }
        guard isGzip(bytes) else { throw fail("missing the gzip magic bytes 1f 8b") }
        let cap = max(maxOutput, 0)
        var output: [UInt8] = []
        var pos = 0
        var member = 0
        while pos < bytes.count {
            if member > 0 {
                // gunzip accepts trailing zeros (padding to a block size); anything else is a damaged file.
                if bytes[pos...].allSatisfy({ $0 == 0 }) { break }
                guard isGzip(Array(bytes[pos..<min(pos + 2, bytes.count)])) else {
                    throw fail("\(bytes.count - pos) unexpected bytes after member \(member) (at byte \(pos))")
                }
            }
            member += 1
            let start = pos
            let label = member == 1 ? "" : " of member \(member)"
            pos = try headerEnd(bytes, start: start, fail: { fail($0 + label) })
            let decoded: Zlib.Inflated
            do {
                decoded = try Zlib.inflate(bytes, start: pos, format: .raw, maxOutput: cap - output.count)
            } catch let e as FormatError {
                throw fail(e.message + label)
            }
            guard let end = decoded.end else {
                throw fail("decompressed data is over " + (limit ?? "the \(cap)-byte limit"))
            }
            pos = end
            guard bytes.count - pos >= 8 else {
                throw fail("file ends inside the CRC-32/ISIZE trailer" + label + " (truncated download?)")
            }
            let storedCRC = le32(bytes, pos), storedSize = le32(bytes, pos + 4)
            pos += 8
            let crc = Checksum.crc32(decoded.output)
            guard crc == storedCRC else {
                throw fail("CRC-32 mismatch" + label + ": stored 0x\(hex(storedCRC)), computed 0x\(hex(crc))")
            }
            let size = UInt32(truncatingIfNeeded: decoded.output.count)
            guard size == storedSize else {
                throw fail("ISIZE mismatch" + label + ": trailer says \(storedSize) bytes (mod 2^32), decoded \(size)")
            }
            if output.isEmpty { output = decoded.output } else { output += decoded.output }
        }
        return output
    }

    /// The first `count` decompressed bytes of the first member (fewer when it is shorter), decoding no
    /// further than that (and one symbol); the rest of the file is not checked. Lets a reader see the header of the contents,
    /// which says how large they are, before decompressing everything.
    public static func decompressPrefix(_ bytes: [UInt8], count: Int, source: String = "gzip data") throws -> [UInt8] {
        func fail(_ what: String) -> DataError { DataError(file: source, "gzip: " + what) }
        guard isGzip(bytes) else { throw fail("missing the gzip magic bytes 1f 8b") }
        let start = try headerEnd(bytes, start: 0, fail: fail)
        do {
            return try Zlib.inflate(bytes, start: start, format: .raw, maxOutput: count).output
        } catch let e as FormatError {
            throw fail(e.message)
        }
    }

    /// Reads a file, decompressing it when it starts with the gzip magic and returning it unchanged
    /// otherwise. A plain file larger than `maxOutput` is refused as well, so the cap bounds memory either way.
    public static func readFile(path: String, maxOutput: Int = defaultMaxOutput) throws -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = try AtomicFile.read(path: path)
        } catch let e as FormatError {
            throw DataError(sanitizing: e.message)
        }
        if isGzip(bytes) { return try decompress(bytes, maxOutput: maxOutput, source: path) }
        guard bytes.count <= maxOutput else {
            throw DataError(file: path, "file of \(bytes.count) bytes is over the \(maxOutput)-byte limit")
        }
        return bytes
    }

    /// A one-member gzip file of `data` (DEFLATE by zlib at its default level), with the original file
    /// name in FNAME when `name` is given; MTIME is 0 so equal inputs give equal files.
    public static func compress(_ data: [UInt8], name: String? = nil) throws -> [UInt8] {
        var flags: UInt8 = 0
        var nameBytes: [UInt8] = []
        if let name {
            // FNAME is zero-terminated ISO 8859-1: drop any NUL so the field cannot end early.
            nameBytes = Array(name.utf8).filter { $0 != 0 }
            flags |= 0x08
        }
        var out: [UInt8] = [0x1F, 0x8B, 8, flags, 0, 0, 0, 0, 0, 0xFF]  // XFL 0, OS 255 (unknown)
        if flags & 0x08 != 0 { out += nameBytes + [0] }
        do {
            out += try Zlib.deflate(data, format: .raw)
        } catch let e as FormatError {
            throw DataError(sanitizing: "gzip: " + e.message)
        }
        appendLE32(&out, Checksum.crc32(data))
        appendLE32(&out, UInt32(truncatingIfNeeded: data.count))
        return out
    }

    /// Parses a member header starting at `start` and returns the index of its first DEFLATE byte.
    static func headerEnd(_ b: [UInt8], start: Int, fail: (String) -> DataError) throws -> Int {
        guard b.count - start >= 10 else { throw fail("file ends inside the 10-byte header") }
        guard b[start] == 0x1F, b[start + 1] == 0x8B else { throw fail("missing the gzip magic bytes 1f 8b") }
        guard b[start + 2] == 8 else {
            throw fail("unknown compression method \(b[start + 2]) (only 8, DEFLATE, exists)")
        }
        let flags = b[start + 3]
        guard flags & 0xE0 == 0 else {
            throw fail("reserved header flag bits set (FLG 0x\(String(flags, radix: 16))); not a valid gzip file")
        }
        var pos = start + 10
        if flags & 0x04 != 0 {  // FEXTRA
            guard b.count - pos >= 2 else { throw fail("file ends inside the FEXTRA length") }
            let xlen = Int(b[pos]) | Int(b[pos + 1]) << 8
            pos += 2
            guard b.count - pos >= xlen else { throw fail("FEXTRA field of \(xlen) bytes runs past the end of the file") }
            pos += xlen
        }
        for (bit, field) in [(UInt8(0x08), "FNAME"), (UInt8(0x10), "FCOMMENT")] where flags & bit != 0 {
            guard let zero = b[pos...].firstIndex(of: 0) else {
                throw fail("file ends inside the zero-terminated \(field) field")
            }
            pos = zero + 1
        }
        if flags & 0x02 != 0 {  // FHCRC: low 16 bits of the CRC-32 of the header so far
            guard b.count - pos >= 2 else { throw fail("file ends inside the header CRC") }
            let stored = UInt16(b[pos]) | UInt16(b[pos + 1]) << 8
            let actual = UInt16(truncatingIfNeeded: Checksum.crc32(b[start..<pos]))
            guard stored == actual else {
                throw fail("header CRC mismatch: stored 0x\(String(stored, radix: 16)), computed 0x\(String(actual, radix: 16))")
            }
            pos += 2
        }
        return pos
    }

    static func le32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
    }

    static func appendLE32(_ out: inout [UInt8], _ v: UInt32) {
        out += [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8),
                UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24)]
    }

    static func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 8 - s.count)) + s
    }
}

extension DataError {
    /// A one-line error about a file: "path: what". Newlines (e.g. in a hostile file name) are escaped.
    init(file: String, _ what: String) {
        self.init(sanitizing: file + ": " + what)
    }

    /// Runs `body`, a `FormatError` of the file layer becoming a `DataError` with the same message.
    static func converting<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as FormatError { throw DataError(sanitizing: e.message) }
    }

    init(sanitizing message: String) {
        var clean = ""
        for scalar in message.unicodeScalars {
            switch scalar {
            case "\n": clean += "\\n"
            case "\r": clean += "\\r"
            default: clean.unicodeScalars.append(scalar)
            }
        }
        self.init(clean)
    }
}
