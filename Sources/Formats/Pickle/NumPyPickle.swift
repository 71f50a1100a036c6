/// NumPy arrays inside pickles, recognised by the functions numpy pickles them with, never by running them:
/// `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` followed by BUILD with
/// `(version, shape, dtype, fortran_order, data)` (protocols 0 to 4; the data is bytes, or a Latin-1 string
/// in old pickles, or `_codecs.encode(text, 'latin1')` in protocol 2), and `numpy.core.numeric._frombuffer(data,
/// dtype, shape, order)` (protocol 5). numpy 2 spells the modules `numpy._core`. A dtype is
/// `numpy.dtype(descr, False, True)` with BUILD state `(version, byte_order, ...)`.
///
/// This is what FID reference statistics are (`img256.pkl`: `{'mu': array [2048], 'sigma': array [2048, 2048]}`).
public enum NumPyPickle {
    /// The array `value` stands for, with `descr` set to what the pickle says ("<f8", ...); `what` names it in errors.
    public static func array(_ value: PickleValue, what: String) throws -> NPYArray {
        func fail(_ s: String) -> FormatError { FormatError("\(what): \(s)") }
        guard let call = value.record, call.kind == .call, let name = call.calleeName, let args = call.arguments.tuple else {
            throw fail("\(value.summary) is not a numpy array")
        }
        let shapeValue: PickleValue, dtypeValue: PickleValue, fortran: Bool, data: PickleValue
        switch name {
        case "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct":
            guard let cls = args.first?.global, cls.module == "numpy", cls.name == "ndarray" else {
                throw fail("\(name) of \(args.first?.summary ?? "nothing") (only numpy.ndarray is read)")
            }
            guard let state = call.state?.tuple, state.count == 5 || state.count == 4 else {
                throw fail("ndarray state is \(call.state?.summary ?? "missing"), not (version, shape, dtype, fortran, data)")
            }
            let s = state.suffix(4).map { $0 }
            guard let f = s[2].bool else { throw fail("fortran flag is \(s[2].summary)") }
            (shapeValue, dtypeValue, fortran, data) = (s[0], s[1], f, s[3])
        case "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer":
            guard args.count == 4, let order = args[3].string, order == "C" || order == "F" else {
                throw fail("_frombuffer needs (data, dtype, shape, 'C' or 'F')")
            }
            (data, dtypeValue, shapeValue, fortran) = (args[0], args[1], args[2], order == "F")
        default:
            throw fail("\(value.summary) is not a numpy array")
        }
        let (descr, itemSize) = try dtype(dtypeValue, what: what)
        guard let dims = shapeValue.tuple?.map(\.int), dims.allSatisfy({ ($0 ?? -1) >= 0 }) else {
            throw fail("shape is \(shapeValue.summary), not a tuple of non-negative integers")
        }
        let shape = dims.map { $0! }
        guard let count = elementCount(of: shape), case (let size, false) = count.multipliedReportingOverflow(by: itemSize) else {
            throw fail("element count of shape \(shapeString(shape)) overflows")
        }
        // Column-major data of more than one axis would need a transpose that no file here calls for.
        guard !fortran || shape.filter({ $0 > 1 }).count <= 1 else {
            throw fail("Fortran-ordered arrays are not supported")
        }
        let bytes = try arrayBytes(data, what: what)
        guard bytes.count == size else {
            throw fail("shape \(shapeString(shape)) of \(descr) needs \(size) bytes, the pickle holds \(bytes.count)")
        }
        return bytes.withUnsafeBytes { raw in
            var array: NPYArray
            switch descr.dropFirst() {
            case "f8": array = NPYArray(shape: shape, doubles: RawLE.doubles(raw, count: count))
            case "f4": array = NPYArray(shape: shape, floats: RawLE.floats(raw, count: count))
            case "f2": array = NPYArray(shape: shape, floats: (0..<count).map { HalfConversion.halfToFloat(RawLE.u16(raw, $0)) })
            case "i8": array = NPYArray(shape: shape, doubles: (0..<count).map { Double(Int64(bitPattern: RawLE.u64(raw, $0))) })
            case "i4": array = NPYArray(shape: shape, doubles: (0..<count).map { Double(Int32(bitPattern: RawLE.u32(raw, $0))) })
            default: array = NPYArray(shape: shape, floats: raw.prefix(count).map { Float($0) })  // u1
            }
            array.descr = descr
            return array
        }
    }

    /// The little-endian NPY descr ("<f8", "|u1") and item size of a pickled `numpy.dtype`.
    static func dtype(_ value: PickleValue, what: String) throws -> (descr: String, itemSize: Int) {
        func fail(_ s: String) -> FormatError { FormatError("\(what): \(s)") }
        guard let call = value.record, call.kind == .call, call.calleeName == "numpy.dtype",
              let args = call.arguments.tuple, let name = args.first?.string else {
            throw fail("dtype is \(value.summary), not numpy.dtype")
        }
        let sizes = ["f8": 8, "f4": 4, "f2": 2, "i8": 8, "i4": 4, "u1": 1]
        guard let itemSize = sizes[name] else {
            throw fail("dtype \(quoted(name)) is not supported (f8, f4, f2, i8, i4, u1 are)")
        }
        // state (version, byte order, ...): '<' little, '|' not applicable (one byte), '=' native; '>' big.
        let order = call.state?.tuple.flatMap { $0.count > 1 ? $0[1].string : nil } ?? "="
        guard order != ">" else { throw fail("big-endian dtype \(quoted(">" + name)) is not supported") }
        return ((itemSize == 1 ? "|" : "<") + name, itemSize)
    }

    /// An array's raw bytes as pickled: bytes, a Latin-1 string (Python 2 `str`), or `_codecs.encode(text, 'latin1')`
    /// (how protocol 2 stores Python 3 bytes).
    static func arrayBytes(_ value: PickleValue, what: String) throws -> ArraySlice<UInt8> {
        if let b = value.bytes { return b }
        var text = value.string
        if let call = value.record, call.kind == .call, call.calleeName == "_codecs.encode",
           let args = call.arguments.tuple, args.count == 2, args[1].string == "latin1" {
            text = args[0].string
        }
        guard let text else { throw FormatError("\(what): array data is \(value.summary), not bytes") }
        var out: [UInt8] = []
        out.reserveCapacity(text.unicodeScalars.count)
        for u in text.unicodeScalars {
            guard u.value < 256 else { throw FormatError("\(what): array data text has a character beyond Latin-1") }
            out.append(UInt8(u.value))
        }
        return out[...]
    }
}
