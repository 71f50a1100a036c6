import Formats

/// An unsigned-byte array read from an IDX file (the MNIST / Fashion-MNIST format), C order.
public struct IDXArray: Equatable, Sendable {
    public var shape: [Int]
    public var values: [UInt8]

    public init(shape: [Int], values: [UInt8]) {
        self.shape = shape
        self.values = values
    }
}

/// The IDX format (LeCun's MNIST distribution): a big-endian magic `00 00 TT DD` (TT the element type,
/// DD the number of dimensions), DD big-endian 32-bit dimension sizes, then the elements in C order.
/// Only unsigned bytes (TT = 0x08) are read, which covers every MNIST-style file: images have magic
/// 0x00000803 ([n, rows, cols]), labels 0x00000801 ([n]). Files may be gzipped (`.gz`) or not; the
/// content decides, not the name.
///
/// Errors are one line starting with the file path: wrong magic, a truncated header or data, extra
/// bytes after the data, dimension products that overflow, and sizes over `maxBytes`.
public enum IDX {
    /// Default cap on an IDX file's data, compressed or not (2 GiB).
    public static let defaultMaxBytes = 1 << 31

    /// Magic numbers of the two MNIST file kinds.
    public static let imagesMagic: UInt32 = 0x0000_0803
    public static let labelsMagic: UInt32 = 0x0000_0801

    static let typeNames: [UInt8: String] = [0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
                                              0x0D: "float32", 0x0E: "float64"]

    /// Reads an unsigned-byte IDX file of any rank (gzipped or not).
    public static func read(path: String, maxBytes: Int = defaultMaxBytes) throws -> IDXArray {
        try parse(contents(path: path, maxBytes: maxBytes), source: path, maxBytes: maxBytes)
    }

    /// Parses the (decompressed) bytes of an unsigned-byte IDX file; `source` names it in errors.
    public static func parse(_ bytes: [UInt8], source: String, maxBytes: Int = defaultMaxBytes) throws -> IDXArray {
        func fail(_ what: String) -> DataError { DataError(file: source, what) }
        guard let layout = try header(bytes, source: source, maxBytes: maxBytes) else {
            guard bytes.count >= 4 else {
                throw fail("truncated IDX file: \(bytes.count) bytes, too short for the 4-byte magic number")
            }
            let rank = Int(bytes[3])
            throw fail("truncated IDX header: \(rank) dimensions need \(4 + 4 * rank) bytes, file has \(bytes.count)")
        }
        let available = bytes.count - layout.headerBytes
        let shape = layout.shape, count = layout.count
        guard available >= count else {
            throw fail("truncated IDX data: dimensions \(shapeText(shape)) need \(count) bytes, file has \(available)")
        }
        guard available == count else {
            throw fail("\(available - count) unexpected bytes after the IDX data of dimensions \(shapeText(shape))")
        }
        return IDXArray(shape: shape, values: Array(bytes[layout.headerBytes...]))
    }

    /// The longest IDX header: the magic and 255 dimensions.
    static let maxHeaderBytes = 4 + 4 * 255

    /// The shape, header size and element count that the header at the start of `bytes` declares, checked
    /// (magic, element type, rank, overflow, `maxBytes`) as far as `bytes` goes; nil when `bytes` ends
    /// inside the header, so that a prefix of decompressed data can be asked before the rest exists.
    static func header(_ bytes: [UInt8], source: String, maxBytes: Int) throws -> (shape: [Int], headerBytes: Int, count: Int)? {
        func fail(_ what: String) -> DataError { DataError(file: source, what) }
        guard bytes.count >= 4 else { return nil }
        let magic = be32(bytes, 0)
        guard bytes[0] == 0, bytes[1] == 0 else {
            throw fail("not an IDX file (magic 0x\(hex(magic)) does not start with two zero bytes)")
        }
        guard bytes[2] == 0x08 else {
            let name = typeNames[bytes[2]].map { " (\($0))" } ?? ""
            throw fail("IDX element type 0x\(String(bytes[2], radix: 16))\(name) is not supported; only uint8 (0x08) is read")
        }
        let rank = Int(bytes[3])
        guard rank >= 1 else { throw fail("IDX file declares 0 dimensions (magic 0x\(hex(magic)))") }
        let headerBytes = 4 + 4 * rank
        guard bytes.count >= headerBytes else { return nil }
        let shape = (0..<rank).map { Int(be32(bytes, 4 + 4 * $0)) }
        var count = 1
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow else { throw fail("dimension product of \(shapeText(shape)) overflows") }
            count = p
        }
        guard count <= maxBytes else {
            throw fail("dimensions \(shapeText(shape)) declare \(count) bytes, over the \(maxBytes)-byte limit")
        }
        return (shape, headerBytes, count)
    }

    /// The IDX bytes of the file at `path` (see `contents(of:source:maxBytes:magic:)`).
    static func contents(path: String, maxBytes: Int, magic: UInt32? = nil) throws -> [UInt8] {
        let file: [UInt8]
        do {
            file = try AtomicFile.read(path: path)
        } catch let e as FormatError {
            throw DataError(sanitizing: e.message)
        }
        return try contents(of: file, source: path, maxBytes: maxBytes, magic: magic)
    }

    /// The IDX bytes in `file`: the file itself, or its decompressed contents when it is gzipped. The
    /// header is checked first (against `magic` too, when given), and a gzipped file is decompressed no
    /// further than the size its header declares: a few KB of DEFLATE could otherwise expand to `maxBytes`
    /// of data only to be refused afterwards. Size mismatches are left to `parse`, which names them.
    public static func contents(of file: [UInt8], source: String, maxBytes: Int = defaultMaxBytes,
                                magic: UInt32? = nil) throws -> [UInt8] {
        guard Gzip.isGzip(file) else {
            if let magic { try expectMagic(file, magic, source: source) }
            return file
        }
        let head = try Gzip.decompressPrefix(file, count: maxHeaderBytes, source: source)
        if let magic, head.count >= 4 { try expectMagic(head, magic, source: source) }
        guard let layout = try header(head, source: source, maxBytes: maxBytes) else {
            // The first gzip member ends inside the header (only possible with several members): the
            // declared size is not known yet, so the general cap (data plus the longest header) applies.
            let bytes = try Gzip.decompress(file, maxOutput: saturatingSum(maxBytes, maxHeaderBytes), source: source)
            if let magic { try expectMagic(bytes, magic, source: source) }
            return bytes
        }
        let declared = saturatingSum(layout.headerBytes, layout.count)
        return try Gzip.decompress(file, maxOutput: declared, source: source,
                                   limit: "the \(declared) bytes its IDX header declares")
    }

    /// Images: magic 0x00000803, [n, rows, cols]. Rows and columns must be 1 ... 16384 (an IDX image
    /// beyond that is a damaged header, not a data set).
    public static func readImages(path: String, maxBytes: Int = defaultMaxBytes) throws -> IDXArray {
        let a = try parse(contents(path: path, maxBytes: maxBytes, magic: imagesMagic), source: path, maxBytes: maxBytes)
        guard (1...16384).contains(a.shape[1]), (1...16384).contains(a.shape[2]) else {
            throw DataError(file: path, "absurd IDX image size \(a.shape[1])x\(a.shape[2]) (rows and columns must be 1 to 16384)")
        }
        return a
    }

    /// Labels: magic 0x00000801, [n].
    public static func readLabels(path: String, maxBytes: Int = defaultMaxBytes) throws -> IDXArray {
        try parse(contents(path: path, maxBytes: maxBytes, magic: labelsMagic), source: path, maxBytes: maxBytes)
    }

    static func expectMagic(_ bytes: [UInt8], _ expected: UInt32, source: String) throws {
        let what = expected == imagesMagic ? "an IDX image file" : "an IDX label file"
        guard bytes.count >= 4 else {
            throw DataError(file: source, "truncated IDX file: \(bytes.count) bytes, too short for the 4-byte magic number")
        }
        let magic = be32(bytes, 0)
        guard magic == expected else {
            var hint = ""
            if magic == imagesMagic { hint = " (this is an IDX image file)" }
            if magic == labelsMagic { hint = " (this is an IDX label file)" }
            throw DataError(file: source, "wrong magic 0x\(hex(magic)) for \(what), expected 0x\(hex(expected))\(hint)")
        }
    }

    /// The bytes of an unsigned-byte IDX file; `shape` must have 1 to 255 dimensions below 2^32 whose
    /// product is `values.count`.
    public static func encode(shape: [Int], values: [UInt8]) throws -> [UInt8] {
        guard (1...255).contains(shape.count), shape.allSatisfy({ $0 >= 0 && $0 <= Int(UInt32.max) }) else {
            throw DataError("IDX: invalid shape \(shapeText(shape))")
        }
        var count = 1
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow else { throw DataError("IDX: dimension product of \(shapeText(shape)) overflows") }
            count = p
        }
        guard count == values.count else {
            throw DataError("IDX: \(values.count) values do not match shape \(shapeText(shape))")
        }
        var out: [UInt8] = [0, 0, 0x08, UInt8(shape.count)]
        out.reserveCapacity(4 + 4 * shape.count + values.count)
        for d in shape {
            let v = UInt32(d)
            out += [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
        }
        out += values
        return out
    }

    /// Writes an unsigned-byte IDX file atomically, gzipped when `gzip` is true (e.g. to export
    /// generated samples in the MNIST layout).
    public static func write(path: String, shape: [Int], values: [UInt8], gzip: Bool = false) throws {
        var bytes = try encode(shape: shape, values: values)
        if gzip {
            let base = path.split(separator: "/").last.map(String.init) ?? path
            bytes = try Gzip.compress(bytes, name: base.hasSuffix(".gz") ? String(base.dropLast(3)) : base)
        }
        do {
            try AtomicFile.write(path: path, bytes: bytes)
        } catch let e as FormatError {
            throw DataError(sanitizing: e.message)
        }
    }

    /// a + b, or Int.max where that overflows (a cap of Int.max is no cap, which is what was asked for).
    static func saturatingSum(_ a: Int, _ b: Int) -> Int {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int.max : sum
    }

    static func be32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    static func hex(_ v: UInt32) -> String { Gzip.hex(v) }

    static func shapeText(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ", ") + "]" }
}
