/// A C-ordered array read from (or destined for) a NumPy `.npy` file.
///
/// Float32 and uint8 data are kept as `[Float]` (exact); float64, int32 and int64 data as `[Double]`
/// (exact for float64 and int32, and for int64 magnitudes up to 2^53).
public struct NPYArray: Equatable, Sendable {
    enum Storage: Equatable, Sendable {
        case float32([Float])
        case float64([Double])
    }

    public var shape: [Int]
    /// The dtype string as found in the file, e.g. "<f4".
    public var descr: String
    var storage: Storage

    public init(shape: [Int], floats: [Float]) {
        self.shape = shape
        descr = "<f4"
        storage = .float32(floats)
    }

    public init(shape: [Int], doubles: [Double]) {
        self.shape = shape
        descr = "<f8"
        storage = .float64(doubles)
    }

    public var count: Int {
        switch storage {
        case .float32(let v): return v.count
        case .float64(let v): return v.count
        }
    }

    public var floats: [Float] {
        switch storage {
        case .float32(let v): return v
        case .float64(let v): return v.map(Float.init)
        }
    }

    public var doubles: [Double] {
        switch storage {
        case .float32(let v): return v.map(Double.init)
        case .float64(let v): return v
        }
    }

    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // "\x93NUMPY"
    static let maxHeaderBytes = 100_000_000

    /// Reads a `.npy` file; float data goes from the file straight into the result array.
    public static func read(path: String) throws -> NPYArray {
        let file = try ReadableFile(path: path)
        let prefix = try file.bytes(at: 0, count: min(12, file.size))
        let headerLength = try validatedHeaderLength(prefix[...], fileSize: file.size, source: path)
        let layout = try parseHeader(file.bytes(at: 0, count: headerLength)[...], fileSize: file.size, source: path)
        let byteCount = layout.count * layout.itemSize
        #if _endian(little)
        // Native layouts need no conversion: read directly into the destination.
        if layout.descr == "<f4" || layout.descr == "<f8" {
            var array = NPYArray(shape: layout.shape, floats: [])
            array.descr = layout.descr
            if layout.descr == "<f4" {
                let values = try [Float](unsafeUninitializedCapacity: layout.count) { buffer, n in
                    try AtomicFile.read(fd: file.fd, path: path, at: layout.dataStart, into: UnsafeMutableRawBufferPointer(buffer))
                    n = layout.count
                }
                array.storage = Storage.float32(values)
            } else {
                let values = try [Double](unsafeUninitializedCapacity: layout.count) { buffer, n in
                    try AtomicFile.read(fd: file.fd, path: path, at: layout.dataStart, into: UnsafeMutableRawBufferPointer(buffer))
                    n = layout.count
                }
                array.storage = Storage.float64(values)
            }
            return array
        }
        #endif
        let data = try file.bytes(at: layout.dataStart, count: byteCount)
        return decode(data[...], layout: layout)
    }

    /// Parses a `.npy` file of version 1.0, 2.0 or 3.0; `source` names it in error messages.
    public static func parse(_ bytes: [UInt8], source: String) throws -> NPYArray {
        let headerLength = try validatedHeaderLength(bytes.prefix(12), fileSize: bytes.count, source: source)
        let layout = try parseHeader(bytes[0..<headerLength], fileSize: bytes.count, source: source)
        return decode(bytes[layout.dataStart...], layout: layout)
    }

    struct Layout {
        var shape: [Int]
        var descr: String
        var count: Int
        var itemSize: Int
        var dataStart: Int
    }

    /// Checks the magic and version and returns where the data starts (magic + length field + header).
    static func validatedHeaderLength(_ prefix: ArraySlice<UInt8>, fileSize: Int, source: String) throws -> Int {
        func fail(_ what: String) -> FormatError { FormatError("\(source): \(what)") }
        let prefix = Array(prefix)
        guard prefix.count >= 10, Array(prefix[0..<6]) == magic else {
            throw fail("not a .npy file (missing the \\x93NUMPY magic)")
        }
        let major = prefix[6], minor = prefix[7]
        guard (1...3).contains(major), minor == 0 else {
            throw fail("unsupported .npy version \(major).\(minor)")
        }
        let headerStart: Int
        let headerLength: Int
        if major == 1 {
            headerStart = 10
            headerLength = Int(prefix[8]) | Int(prefix[9]) << 8
        } else {
            guard prefix.count >= 12 else { throw fail("file ends inside the header length") }
            headerStart = 12
            headerLength = Int(prefix[8]) | Int(prefix[9]) << 8 | Int(prefix[10]) << 16 | Int(prefix[11]) << 24
        }
        guard headerLength <= maxHeaderBytes else {
            throw fail("header length \(headerLength) is over the \(maxHeaderBytes / 1_000_000) MB limit")
        }
        guard headerLength <= fileSize - headerStart else {
            throw fail("header length \(headerLength) goes beyond the end of the file (\(fileSize) bytes)")
        }
        return headerStart + headerLength
    }

    /// Parses the header (`bytes` is the file up to the data) and checks the data size against the file.
    static func parseHeader(_ bytes: ArraySlice<UInt8>, fileSize: Int, source: String) throws -> Layout {
        func fail(_ what: String) -> FormatError { FormatError("\(source): \(what)") }
        let headerStart = bytes[bytes.startIndex + 6] == 1 ? 10 : 12
        let dataStart = bytes.count

        var parser = PyLiteralParser(bytes: Array(bytes[(bytes.startIndex + headerStart)...]))
        let dict: [(String, PyLiteralParser.Value)]
        do {
            dict = try parser.parseHeader()
        } catch let e as FormatError {
            throw fail("invalid header: \(e.message)")
        }

        var descr: String?
        var fortranOrder: Bool?
        var shape: [Int]?
        for (key, value) in dict {
            switch key {
            case "descr":
                guard descr == nil else { throw fail("duplicate header key 'descr'") }
                guard case .string(let s) = value else {
                    throw fail("header 'descr' is not a simple dtype string (structured dtypes are not supported)")
                }
                descr = s
            case "fortran_order":
                guard fortranOrder == nil else { throw fail("duplicate header key 'fortran_order'") }
                guard case .bool(let b) = value else { throw fail("header 'fortran_order' is not True or False") }
                fortranOrder = b
            case "shape":
                guard shape == nil else { throw fail("duplicate header key 'shape'") }
                guard case .tuple(let dims) = value else { throw fail("header 'shape' is not a tuple of integers") }
                shape = dims
            default:
                throw fail("unexpected header key \(quoted(key))")
            }
        }
        guard let descr else { throw fail("header has no 'descr'") }
        guard let fortranOrder else { throw fail("header has no 'fortran_order'") }
        guard let shape else { throw fail("header has no 'shape'") }
        guard !fortranOrder else {
            throw fail("fortran_order True (column-major) arrays are not supported; save a C-ordered array (np.ascontiguousarray)")
        }
        guard let count = elementCount(of: shape) else {
            throw fail("element count of shape \(shapeString(shape)) overflows")
        }

        let itemSize: Int
        switch descr {
        case "<f4", "<i4": itemSize = 4
        case "<f8", "<i8": itemSize = 8
        case "|u1", "<u1": itemSize = 1
        default:
            if descr.hasPrefix(">") {
                throw fail("big-endian dtype \(quoted(descr)) is not supported")
            }
            throw fail("unsupported dtype \(quoted(descr)) (supported: <f4, <f8, <i4, <i8, |u1)")
        }
        let (byteCount, overflow) = count.multipliedReportingOverflow(by: itemSize)
        guard !overflow else { throw fail("byte size of shape \(shapeString(shape)) overflows") }
        let available = fileSize - dataStart
        guard available >= byteCount else {
            throw fail("data is truncated: shape \(shapeString(shape)) of \(descr) needs \(byteCount) bytes, file has \(available)")
        }
        guard available == byteCount else {
            throw fail("\(available - byteCount) unexpected bytes after the array data")
        }
        return Layout(shape: shape, descr: descr, count: count, itemSize: itemSize, dataStart: dataStart)
    }

    /// Converts validated data bytes (exactly `count * itemSize` of them) to an array.
    static func decode(_ bytes: ArraySlice<UInt8>, layout: Layout) -> NPYArray {
        let count = layout.count
        let storage: Storage = bytes.withUnsafeBytes { data in
            switch layout.descr {
            case "<f4":
                return .float32(RawLE.floats(data, count: count))
            case "<f8":
                return .float64(RawLE.doubles(data, count: count))
            case "<i4":
                return .float64((0..<count).map { Double(Int32(bitPattern: RawLE.u32(data, $0))) })
            case "<i8":
                return .float64((0..<count).map { Double(Int64(bitPattern: RawLE.u64(data, $0))) })
            default:
                return .float32(data.prefix(count).map { Float($0) })
            }
        }
        var array = NPYArray(shape: layout.shape, floats: [])
        array.descr = layout.descr
        array.storage = storage
        return array
    }

    /// The file bytes: `<f4` data when the array holds floats, `<f8` when it holds doubles, with a
    /// header laid out exactly as numpy 2 writes it.
    public func serialized() throws -> [UInt8] {
        let (header, data) = try parts()
        return header + data
    }

    /// Header and data separately, so writing does not concatenate a large array into a new buffer.
    func parts() throws -> (header: [UInt8], data: [UInt8]) {
        guard let expected = elementCount(of: shape) else {
            throw FormatError("invalid shape \(shapeString(shape))")
        }
        guard expected == count else {
            throw FormatError("\(count) values do not match shape \(shapeString(shape))")
        }
        switch storage {
        case .float32(let v):
            return (NPYArray.header(descr: "<f4", shape: shape), RawLE.bytes(ofFloats: v))
        case .float64(let v):
            return (NPYArray.header(descr: "<f8", shape: shape), RawLE.bytes(ofDoubles: v))
        }
    }

    /// Writes `floats` as a `<f4` array atomically.
    public static func write(path: String, shape: [Int], floats: [Float]) throws {
        try NPYArray(shape: shape, floats: floats).write(path: path)
    }

    /// Writes `doubles` as a `<f8` array atomically.
    public static func write(path: String, shape: [Int], doubles: [Double]) throws {
        try NPYArray(shape: shape, doubles: doubles).write(path: path)
    }

    /// Writes 8-bit values as a `|u1` array atomically (images as numpy's uint8, e.g. decoded samples).
    public static func write(path: String, shape: [Int], bytes: [UInt8]) throws {
        guard elementCount(of: shape) == bytes.count else {
            throw FormatError("\(path): \(bytes.count) values do not match shape \(shapeString(shape))")
        }
        try AtomicFile.write(path: path, chunks: [header(descr: "|u1", shape: shape), bytes])
    }

    public func write(path: String) throws {
        let file: (header: [UInt8], data: [UInt8])
        do {
            file = try parts()
        } catch let e as FormatError {
            throw FormatError("\(path): \(e.message)")
        }
        try AtomicFile.write(path: path, chunks: [file.header, file.data])
    }

    /// numpy's `_write_array_header`: the dict repr, spare spaces so the first axis can grow in place,
    /// then padding so the data starts on a 64-byte boundary, then a newline.
    static func header(descr: String, shape: [Int]) -> [UInt8] {
        let shapeRepr: String
        switch shape.count {
        case 0: shapeRepr = "()"
        case 1: shapeRepr = "(\(shape[0]),)"
        default: shapeRepr = "(" + shape.map(String.init).joined(separator: ", ") + ")"
        }
        var dict = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeRepr), }"
        if let first = shape.first {
            dict += String(repeating: " ", count: max(0, 21 - String(first).count))
        }
        var text = Array(dict.utf8)
        var version: UInt8 = 1
        var lengthFieldSize = 2
        // numpy's formula adds a full 64 bytes when already aligned; kept so headers match byte for byte.
        var pad = 64 - ((8 + lengthFieldSize + text.count + 1) % 64)
        if text.count + pad + 1 > 65535 {
            version = 2
            lengthFieldSize = 4
            pad = 64 - ((8 + lengthFieldSize + text.count + 1) % 64)
        }
        text += [UInt8](repeating: 0x20, count: pad)
        text.append(0x0A)
        var out = magic + [version, 0]
        let n = text.count
        for k in 0..<lengthFieldSize { out.append(UInt8(truncatingIfNeeded: n >> (8 * k))) }
        return out + text
    }
}

/// The subset of Python literal syntax that numpy writes in .npy headers: a dict of string keys whose
/// values are strings, True/False, integers or tuples of integers. Anything else is refused (numpy
/// itself uses `ast.literal_eval`, but nothing beyond this appears in a valid simple-dtype header).
struct PyLiteralParser {
    enum Value {
        case string(String)
        case bool(Bool)
        case int(Int)
        case tuple([Int])
    }

    let bytes: [UInt8]
    var pos = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func error(_ what: String) -> FormatError { FormatError("\(what) at header byte \(pos)") }

    mutating func skipSpace() {
        while pos < bytes.count, bytes[pos] == 0x20 || bytes[pos] == 0x09 || bytes[pos] == 0x0A || bytes[pos] == 0x0D {
            pos += 1
        }
    }

    mutating func expect(_ c: UInt8) throws {
        skipSpace()
        guard pos < bytes.count, bytes[pos] == c else {
            throw error("expected '\(Character(Unicode.Scalar(c)))'")
        }
        pos += 1
    }

    mutating func peek() -> UInt8? {
        skipSpace()
        return pos < bytes.count ? bytes[pos] : nil
    }

    mutating func parseHeader() throws -> [(String, Value)] {
        try expect(UInt8(ascii: "{"))
        var result: [(String, Value)] = []
        while true {
            if peek() == UInt8(ascii: "}") { pos += 1; break }
            let key = try parseString()
            try expect(UInt8(ascii: ":"))
            result.append((key, try parseValue()))
            guard let c = peek() else { throw error("unterminated dict") }
            if c == UInt8(ascii: ",") { pos += 1; continue }
            if c == UInt8(ascii: "}") { pos += 1; break }
            throw error("expected ',' or '}'")
        }
        skipSpace()
        guard pos == bytes.count else { throw error("unexpected text after the header dict") }
        return result
    }

    mutating func parseString() throws -> String {
        guard let quote = peek(), quote == UInt8(ascii: "'") || quote == UInt8(ascii: "\"") else {
            throw error("expected a quoted string")
        }
        pos += 1
        let start = pos
        while pos < bytes.count && bytes[pos] != quote {
            // Escapes never appear in numpy's own keys or simple dtypes; refusing them keeps this strict.
            guard bytes[pos] != UInt8(ascii: "\\"), bytes[pos] >= 0x20 else {
                throw error("unsupported character in string")
            }
            pos += 1
        }
        guard pos < bytes.count else { throw error("unterminated string") }
        guard let s = String(validating: bytes[start..<pos], as: UTF8.self) else {
            throw error("string is not valid UTF-8")
        }
        pos += 1
        return s
    }

    mutating func parseInt() throws -> Int {
        skipSpace()
        let start = pos
        var value = 0
        while pos < bytes.count, bytes[pos] >= UInt8(ascii: "0"), bytes[pos] <= UInt8(ascii: "9") {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(bytes[pos] - UInt8(ascii: "0")))
            guard !o1, !o2 else { throw error("integer too large") }
            value = a
            pos += 1
        }
        guard pos > start else { throw error("expected a non-negative integer") }
        // Python 2 era files write longs as "2000L".
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "L") { pos += 1 }
        return value
    }

    mutating func parseValue() throws -> Value {
        guard let c = peek() else { throw error("expected a value") }
        switch c {
        case UInt8(ascii: "'"), UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "T"), UInt8(ascii: "F"):
            for (word, value) in [("True", true), ("False", false)] {
                let w = Array(word.utf8)
                if bytes.count - pos >= w.count && Array(bytes[pos..<(pos + w.count)]) == w {
                    pos += w.count
                    return .bool(value)
                }
            }
            throw error("expected True or False")
        case UInt8(ascii: "("):
            pos += 1
            var dims: [Int] = []
            if peek() == UInt8(ascii: ")") { pos += 1; return .tuple(dims) }
            while true {
                dims.append(try parseInt())
                guard let next = peek() else { throw error("unterminated tuple") }
                if next == UInt8(ascii: ")") {
                    // "(5)" is the integer 5 in Python, not a tuple.
                    guard dims.count > 1 else { throw error("shape tuple of one element needs a trailing comma") }
                    pos += 1
                    return .tuple(dims)
                }
                guard next == UInt8(ascii: ",") else { throw error("expected ',' or ')' in tuple") }
                pos += 1
                if peek() == UInt8(ascii: ")") { pos += 1; return .tuple(dims) }
            }
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .int(try parseInt())
        case UInt8(ascii: "["), UInt8(ascii: "{"):
            throw error("structured dtypes are not supported")
        default:
            throw error("unexpected character")
        }
    }
}
