/// Writes pickles opcode by opcode, for inputs that Python would never write (hostile ones) and for PyTorch's
/// formats without PyTorch. Names are the opcodes' names in Python's pickletools.
struct PickleBuilder {
    var bytes: [UInt8]

    init(protocolVersion: UInt8 = 4) { bytes = [0x80, protocolVersion] }

    static func le(_ v: UInt64, _ width: Int) -> [UInt8] {
        (0..<width).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }
    }

    mutating func op(_ code: UInt8, _ args: [UInt8] = []) { bytes += [code] + args }
    mutating func mark() { op(0x28) }
    mutating func none() { op(0x4E) }
    mutating func bool(_ b: Bool) { op(b ? 0x88 : 0x89) }
    /// BININT, or LONG1 of 8 bytes beyond 32 bits.
    mutating func int(_ v: Int) {
        if let small = Int32(exactly: v) { op(0x4A, Self.le(UInt64(UInt32(bitPattern: small)), 4)) } else {
            op(0x8A, [8] + Self.le(UInt64(bitPattern: Int64(v)), 8))
        }
    }
    mutating func string(_ s: String) { op(0x58, Self.le(UInt64(s.utf8.count), 4) + Array(s.utf8)) }  // BINUNICODE
    mutating func byteString(_ b: [UInt8]) { op(0x42, Self.le(UInt64(b.count), 4) + b) }  // BINBYTES
    mutating func global(_ module: String, _ name: String) { op(0x63, Array("\(module)\n\(name)\n".utf8)) }
    mutating func tuple() { op(0x74) }  // TUPLE from the mark
    mutating func emptyTuple() { op(0x29) }
    mutating func emptyDict() { op(0x7D) }
    mutating func emptyList() { op(0x5D) }
    mutating func setItems() { op(0x75) }
    mutating func setItem() { op(0x73) }
    mutating func appends() { op(0x65) }
    mutating func reduce() { op(0x52) }
    mutating func build() { op(0x62) }
    mutating func newObject() { op(0x81) }
    mutating func binPersID() { op(0x51) }
    mutating func memoize() { op(0x94) }
    mutating func get(_ i: UInt32) { op(0x6A, Self.le(UInt64(i), 4)) }  // LONG_BINGET
    mutating func stop() { op(0x2E) }

    /// A tuple of ints (for sizes and strides).
    mutating func intTuple(_ values: [Int]) {
        mark()
        for v in values { int(v) }
        tuple()
    }

    /// A call `module.name(*args)` where `args` pushes the arguments.
    mutating func call(_ module: String, _ name: String, _ args: (inout PickleBuilder) -> Void) {
        global(module, name)
        mark()
        args(&self)
        tuple()
        reduce()
    }

    /// A dict of string keys, each value pushed by its closure.
    mutating func dict(_ entries: [(String, (inout PickleBuilder) -> Void)]) {
        emptyDict()
        mark()
        for (key, value) in entries {
            string(key)
            value(&self)
        }
        setItems()
    }
}

/// Storages and tensors as PyTorch pickles them, written without PyTorch.
enum TorchBytes {
    /// One storage in the legacy `torch.save` format (what `torch.storage._load_from_bytes` reads): the magic
    /// number, protocol version and system info pickles, the persistent id, the key list, the count and the bytes.
    static func legacyStorage(type: String, count: Int, data: [UInt8], key: String = "94823231724032",
                              declaredCount: Int? = nil, trailing: [UInt8] = []) -> [UInt8] {
        var out: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]
        var version = PickleBuilder(protocolVersion: 2)
        version.int(1001)
        version.stop()
        var info = PickleBuilder(protocolVersion: 2)
        info.dict([("protocol_version", { $0.int(1001) }), ("little_endian", { $0.bool(true) })])
        info.stop()
        var id = PickleBuilder(protocolVersion: 2)
        id.mark()
        id.string("storage")
        id.global("torch", type)
        id.string(key)
        id.string("cpu")
        id.int(declaredCount ?? count)
        id.none()
        id.tuple()
        id.binPersID()
        id.stop()
        var keys = PickleBuilder(protocolVersion: 2)
        keys.emptyList()
        keys.mark()
        keys.string(key)
        keys.appends()
        keys.stop()
        out += version.bytes + info.bytes + id.bytes + keys.bytes
        return out + PickleBuilder.le(UInt64(count), 8) + data + trailing
    }

    /// `torch._utils._rebuild_tensor_v2(_load_from_bytes(storage), offset, size, stride, False, OrderedDict())`.
    static func tensor(_ b: inout PickleBuilder, storage: [UInt8], offset: Int = 0, size: [Int], stride: [Int]) {
        b.call("torch._utils", "_rebuild_tensor_v2") { b in
            b.call("torch.storage", "_load_from_bytes") { $0.byteString(storage) }
            b.int(offset)
            b.intTuple(size)
            b.intTuple(stride)
            b.bool(false)
            b.call("collections", "OrderedDict") { _ in }
        }
    }

    /// Contiguous strides of `shape`.
    static func strides(_ shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        for i in stride(from: shape.count - 2, through: 0, by: -1) { s[i] = s[i + 1] * shape[i + 1] }
        return s
    }
}
