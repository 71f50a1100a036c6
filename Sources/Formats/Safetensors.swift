/// Element types this module reads and writes in safetensors files.
public enum TensorDType: String, CaseIterable, Sendable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case f64 = "F64"
    /// Unsigned bytes: images (reference pixels of PIL, decoded samples).
    case u8 = "U8"
    /// Integers (class labels of reference files); read as Float, exact up to 2^24.
    case i64 = "I64"

    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .f64, .i64: return 8
        case .u8: return 1
        }
    }
}

/// One tensor: a name, a shape, an element type and its raw little-endian bytes.
public struct NamedArray: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var dtype: TensorDType
    public var bytes: [UInt8]

    public init(name: String, shape: [Int], dtype: TensorDType, bytes: [UInt8]) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.bytes = bytes
    }

    /// Encodes `floats` as `dtype`; F16 and BF16 round to nearest even, F64 widens exactly, U8 rounds to
    /// nearest and clamps to 0...255 (NaN becomes 0), I64 takes whole numbers only.
    /// Writing checks that the value count matches `shape`.
    public init(name: String, shape: [Int], floats: [Float], dtype: TensorDType = .f32) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        switch dtype {
        case .f32:
            bytes = RawLE.bytes(ofFloats: floats)
        case .f64:
            bytes = RawLE.bytes(ofDoubles: floats.map(Double.init))
        case .f16:
            bytes = NamedArray.encode16(floats, HalfConversion.floatToHalf)
        case .bf16:
            bytes = NamedArray.encode16(floats, HalfConversion.floatToBfloat16)
        case .u8:
            bytes = floats.map { $0.isNaN ? 0 : UInt8(max(0, min(255, $0.rounded()))) }
        case .i64:
            bytes = floats.flatMap { v -> [UInt8] in
                guard let i = Int64(exactly: v) else { preconditionFailure("I64 tensor \(name) given the non-integer \(v)") }
                return (0..<8).map { UInt8(truncatingIfNeeded: i >> (8 * $0)) }
            }
        }
    }

    /// Stores `doubles` as F64.
    public init(name: String, shape: [Int], doubles: [Double]) {
        self.name = name
        self.shape = shape
        self.dtype = .f64
        bytes = RawLE.bytes(ofDoubles: doubles)
    }

    /// Number of elements the byte buffer holds (equal to the shape's product in any valid tensor).
    public var count: Int { bytes.count / dtype.byteSize }

    /// The values widened or narrowed to Float (F64 rounds to nearest; the others are exact).
    public func floats() -> [Float] {
        let n = count
        guard n > 0 else { return [] }
        return bytes.withUnsafeBytes { raw -> [Float] in
            switch dtype {
            case .f32:
                return RawLE.floats(raw, count: n)
            case .f64:
                return [Float](unsafeUninitializedCapacity: n) { out, c in
                    for i in 0..<n { out[i] = Float(Double(bitPattern: RawLE.u64(raw, i))) }
                    c = n
                }
            case .f16:
                return [Float](unsafeUninitializedCapacity: n) { out, c in
                    for i in 0..<n { out[i] = HalfConversion.halfToFloat(RawLE.u16(raw, i)) }
                    c = n
                }
            case .bf16:
                return [Float](unsafeUninitializedCapacity: n) { out, c in
                    for i in 0..<n { out[i] = HalfConversion.bfloat16ToFloat(RawLE.u16(raw, i)) }
                    c = n
                }
            case .u8:
                return raw.map { Float($0) }
            case .i64:
                return (0..<n).map { Float(Int64(bitPattern: RawLE.u64(raw, $0))) }
            }
        }
    }

    /// The values as Double (exact for every dtype; I64 up to 2^53).
    public func doubles() -> [Double] {
        switch dtype {
        case .f64: return bytes.withUnsafeBytes { RawLE.doubles($0, count: count) }
        case .i64: return bytes.withUnsafeBytes { raw in (0..<count).map { Double(Int64(bitPattern: RawLE.u64(raw, $0))) } }
        default: return floats().map(Double.init)
        }
    }

    private static func encode16(_ values: [Float], _ convert: (Float) -> UInt16) -> [UInt8] {
        let n = values.count
        guard n > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: n * 2) { out, c in
            for i in 0..<n {
                let h = convert(values[i])
                out[2 * i] = UInt8(truncatingIfNeeded: h)
                out[2 * i + 1] = UInt8(truncatingIfNeeded: h >> 8)
            }
            c = n * 2
        }
    }
}

/// A safetensors file: an 8-byte little-endian header length N, N bytes of JSON header, then the
/// tensors' raw bytes, located by `data_offsets` relative to the end of the header.
public struct SafetensorsFile: Sendable {
    public var metadata: [(String, String)]
    public var tensors: [NamedArray]

    /// Headers are small (a few KB for large models); a bigger one signals a corrupt or hostile file.
    public static let maxHeaderBytes = 100_000_000

    public init(metadata: [(String, String)] = [], tensors: [NamedArray]) {
        self.metadata = metadata
        self.tensors = tensors
    }

    public subscript(name: String) -> NamedArray? {
        tensors.first { $0.name == name }
    }

    /// The value of a `__metadata__` entry.
    public func metadata(_ key: String) -> String? {
        metadata.first { $0.0 == key }?.1
    }

    /// Reads and validates a file. Each tensor is read from the file directly into its own buffer, so
    /// a large checkpoint is copied once and never held twice in memory.
    public static func read(path: String) throws -> SafetensorsFile {
        let file = try ReadableFile(path: path)
        let headerLength = try validatedHeaderLength(file.bytes(at: 0, count: min(8, file.size)),
                                                     fileSize: file.size, source: path)
        let header = try file.bytes(at: 8, count: headerLength)
        let dataStart = 8 + headerLength
        let (metadata, entries) = try parseHeader(header, dataSize: file.size - dataStart, source: path)
        var tensors: [NamedArray] = []
        tensors.reserveCapacity(entries.count)
        for e in entries {
            let bytes = try file.bytes(at: dataStart + e.begin, count: e.end - e.begin)
            tensors.append(NamedArray(name: e.name, shape: e.shape, dtype: e.dtype, bytes: bytes))
        }
        return SafetensorsFile(metadata: metadata, tensors: tensors)
    }

    /// Parses and fully validates a safetensors file held in memory; `source` names it in errors.
    public static func parse(_ bytes: [UInt8], source: String) throws -> SafetensorsFile {
        let headerLength = try validatedHeaderLength(bytes.prefix(8), fileSize: bytes.count, source: source)
        let dataStart = 8 + headerLength
        let (metadata, entries) = try parseHeader(bytes[8..<dataStart], dataSize: bytes.count - dataStart, source: source)
        let tensors = entries.map { e in
            NamedArray(name: e.name, shape: e.shape, dtype: e.dtype,
                       bytes: Array(bytes[(dataStart + e.begin)..<(dataStart + e.end)]))
        }
        return SafetensorsFile(metadata: metadata, tensors: tensors)
    }

    /// Where one tensor's bytes lie, relative to the start of the data section.
    struct Entry {
        var name: String
        var dtype: TensorDType
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    /// The header length from the first 8 bytes, checked against the limit and the file size.
    static func validatedHeaderLength(_ first: some Collection<UInt8>, fileSize: Int, source: String) throws -> Int {
        guard fileSize >= 8, first.count == 8 else {
            throw FormatError("\(source): file is \(fileSize) bytes, shorter than the 8-byte header length")
        }
        var headerLength: UInt64 = 0
        for (k, b) in first.enumerated() { headerLength |= UInt64(b) << UInt64(8 * k) }
        // A length past the limit or the file's end: another kind of file (a text file's first 8 characters read
        // as a length are in the quintillions), or a truncated one.
        guard headerLength <= UInt64(maxHeaderBytes) else {
            throw FormatError("\(source): not a safetensors file (its first 8 bytes give a header length of \(headerLength), "
                              + "over the \(maxHeaderBytes / 1_000_000) MB limit)")
        }
        guard headerLength <= UInt64(fileSize - 8) else {
            throw FormatError("\(source): not a safetensors file, or a truncated one (header length \(headerLength) goes beyond "
                              + "the end of the file, \(fileSize) bytes)")
        }
        return Int(headerLength)
    }

    /// Parses the JSON header and validates every entry against a data section of `dataSize` bytes.
    static func parseHeader(_ headerBytes: some Collection<UInt8>, dataSize: Int, source: String) throws
        -> (metadata: [(String, String)], entries: [Entry]) {
        func fail(_ what: String) -> FormatError { FormatError("\(source): \(what)") }

        let header: JSONValue
        do {
            header = try JSONValue.parse(headerBytes)
        } catch let e as FormatError {
            throw fail("header is not valid JSON: \(e.message)")
        }
        guard case .object(let members) = header else { throw fail("header is not a JSON object") }

        var metadata: [(String, String)] = []
        var sawMetadata = false
        var infos: [Entry] = []
        var names = Set<String>()
        infos.reserveCapacity(members.count)

        for (key, value) in members {
            if key == "__metadata__" {
                guard !sawMetadata else { throw fail("duplicate \"__metadata__\" entry") }
                sawMetadata = true
                guard case .object(let pairs) = value else { throw fail("\"__metadata__\" is not an object") }
                var keys = Set<String>()
                for (k, v) in pairs {
                    guard case .string(let s) = v else {
                        throw fail("\"__metadata__\" value for key \(quoted(k)) is not a string")
                    }
                    guard keys.insert(k).inserted else {
                        throw fail("duplicate \"__metadata__\" key \(quoted(k))")
                    }
                    metadata.append((k, s))
                }
                continue
            }
            let t = "tensor \(quoted(key))"
            guard names.insert(key).inserted else { throw fail("duplicate tensor name \(quoted(key))") }
            guard case .object = value else { throw fail("\(t): entry is not an object") }

            guard let dtypeValue = value["dtype"] else { throw fail("\(t): missing \"dtype\"") }
            guard let dtypeName = dtypeValue.string else { throw fail("\(t): \"dtype\" is not a string") }
            guard let dtype = TensorDType(rawValue: dtypeName) else {
                throw fail("\(t): unknown dtype \(quoted(dtypeName)) (supported: F32, F16, BF16, F64, U8, I64)")
            }

            guard let shapeValue = value["shape"] else { throw fail("\(t): missing \"shape\"") }
            guard let dims = shapeValue.array else {
                throw fail("\(t): shape is not a list of non-negative integers")
            }
            var shape: [Int] = []
            shape.reserveCapacity(dims.count)
            for d in dims {
                guard let n = nonNegativeInteger(d) else {
                    throw fail("\(t): shape is not a list of non-negative integers")
                }
                shape.append(n)
            }
            guard let count = elementCount(of: shape) else {
                throw fail("\(t): element count of shape \(shapeString(shape)) overflows")
            }
            let (byteCount, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
            guard !overflow else {
                throw fail("\(t): byte size of shape \(shapeString(shape)) overflows")
            }

            guard let offsetsValue = value["data_offsets"] else { throw fail("\(t): missing \"data_offsets\"") }
            guard let offsets = offsetsValue.array, offsets.count == 2,
                  let begin = nonNegativeInteger(offsets[0]), let end = nonNegativeInteger(offsets[1]) else {
                throw fail("\(t): data_offsets is not a list of two non-negative integers")
            }
            guard begin <= end else {
                throw fail("\(t): data_offsets begin \(begin) is after end \(end)")
            }
            guard end <= dataSize else {
                throw fail("\(t): data_offsets [\(begin), \(end)] out of range: the data section has \(dataSize) bytes")
            }
            guard end - begin == byteCount else {
                throw fail("\(t): data_offsets span \(end - begin) bytes but shape \(shapeString(shape)) of \(dtype.rawValue) needs \(byteCount)")
            }
            infos.append(Entry(name: key, dtype: dtype, shape: shape, begin: begin, end: end))
        }

        // Overlap check: sort by start, then every non-empty range must begin at or after the furthest
        // end seen so far. Empty tensors occupy no bytes and cannot overlap anything.
        let order = infos.indices.filter { infos[$0].end > infos[$0].begin }
            .sorted { infos[$0].begin < infos[$1].begin }
        var furthest = -1
        var furthestEnd = 0
        for i in order {
            let e = infos[i]
            if furthest >= 0 && e.begin < furthestEnd {
                throw fail("tensors \(quoted(infos[furthest].name)) and \(quoted(e.name)) have overlapping byte ranges")
            }
            if e.end > furthestEnd || furthest < 0 {
                furthest = i
                furthestEnd = e.end
            }
        }

        return (metadata, infos)
    }

    /// The complete file. Throws when a tensor's byte count does not match its shape, names repeat, or a
    /// tensor is called `__metadata__`: such a file would be refused by every reader.
    public func serialized() throws -> [UInt8] {
        var out = try headerBytes()
        let total = tensors.reduce(out.count) { $0 + $1.bytes.count }
        out.reserveCapacity(total)
        for t in tensors { out.append(contentsOf: t.bytes) }
        return out
    }

    /// Writes the file atomically (temporary file, fsync, rename, directory fsync).
    public func write(path: String) throws {
        let header: [UInt8]
        do {
            header = try headerBytes()
        } catch let e as FormatError {
            throw FormatError("\(path): \(e.message)")
        }
        try AtomicFile.write(path: path, chunks: [header] + tensors.map(\.bytes))
    }

    /// The 8-byte length plus the JSON header, padded with spaces to a multiple of 8 bytes so the data
    /// section starts aligned (as the reference implementation does).
    func headerBytes() throws -> [UInt8] {
        var members: [(String, JSONValue)] = []
        if !metadata.isEmpty {
            var keys = Set<String>()
            for (k, _) in metadata where !keys.insert(k).inserted {
                throw FormatError("duplicate __metadata__ key \(quoted(k))")
            }
            members.append(("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) })))
        }
        var names = Set<String>()
        var offset = 0
        for t in tensors {
            let name = quoted(t.name)
            guard t.name != "__metadata__" else { throw FormatError("a tensor cannot be named \"__metadata__\"") }
            guard names.insert(t.name).inserted else { throw FormatError("duplicate tensor name \(name)") }
            guard let count = elementCount(of: t.shape) else {
                throw FormatError("tensor \(name): invalid shape \(shapeString(t.shape))")
            }
            let (needed, overflow) = count.multipliedReportingOverflow(by: t.dtype.byteSize)
            guard !overflow, needed == t.bytes.count else {
                throw FormatError("tensor \(name): \(t.bytes.count) bytes do not match shape \(shapeString(t.shape)) of \(t.dtype.rawValue)")
            }
            let end = offset + needed
            members.append((t.name, .object([
                ("dtype", .string(t.dtype.rawValue)),
                ("shape", .array(t.shape.map { .number(Double($0)) })),
                ("data_offsets", .array([.number(Double(offset)), .number(Double(end))])),
            ])))
            offset = end
        }
        var json = Array(JSONValue.object(members).serialized().utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count)
        let n = UInt64(json.count)
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> UInt64(8 * k))) }
        out.append(contentsOf: json)
        return out
    }
}

/// A JSON number that is an exact non-negative integer no larger than 2^53 (beyond which doubles skip
/// integers, so a larger "integer" cannot be trusted).
func nonNegativeInteger(_ v: JSONValue) -> Int? {
    guard case .number(let d) = v, d >= 0, d <= 9007199254740992.0, d == d.rounded(.towardZero) else {
        return nil
    }
    return Int(d)
}
