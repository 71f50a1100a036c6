/// PyTorch's legacy (pre-1.6, non-ZIP) `torch.save` format, which is also what `torch.storage._load_from_bytes`
/// reads: every tensor storage in a pickled network (the EDM / TVM snapshots) is one such file in a bytes object.
///
/// Layout: five things back to back, the first four pickles: the magic number 0x1950a86a20f9469cfc6c, the
/// protocol version 1001, a system-info dict (`little_endian`, `type_sizes`), the object itself (its storages as
/// persistent ids `('storage', <type>, key, location, numel[, view])`), and the list of storage keys; then for
/// each key in that order an 8-byte element count and the storage's raw bytes.
enum TorchLegacyFormat {
    /// 0x1950a86a20f9469cfc6c as little-endian two's complement, as LONG1 stores it.
    static let magicNumber: [UInt8] = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]
    static let protocolVersion = 1001
    /// How a legacy file starts: PROTO 2, LONG1 of 10 bytes, then the magic number.
    static let signature: [UInt8] = [0x80, 0x02, 0x8A, 0x0A] + magicNumber

    /// The object and its storages (by key).
    static func read(_ bytes: ArraySlice<UInt8>, source: String,
                     limits: PickleLimits) throws -> (root: PickleValue, storages: [String: TorchStorage]) {
        func fail(_ what: String) -> FormatError { FormatError("\(source): legacy torch.save data: \(what)") }
        var position = bytes.startIndex
        func next() throws -> PickleValue {
            let (value, end) = try PickleReader.read(prefixOf: bytes[position...], source: source, limits: limits)
            position = end
            return value
        }
        guard try next().integerBytes == magicNumber else { throw fail("wrong magic number") }
        let version = try next()
        guard version.int == protocolVersion else { throw fail("protocol version \(version.summary) is not \(protocolVersion)") }
        let info = try next()
        guard info.dictionary != nil else { throw fail("system info is \(info.summary), not a dict") }
        if let little = info["little_endian"], little.bool != true {
            throw fail("big-endian data is not supported")
        }
        let root = try next()
        var defined: [String: StorageReference] = [:]
        for id in root.document.persistentIDs {
            let ref = try StorageReference(id, source: source)
            if let previous = defined[ref.key], previous.dtype != ref.dtype || previous.count != ref.count {
                throw fail("storage \(quoted(ref.key)) is declared twice, differently")
            }
            defined[ref.key] = ref
        }
        let keyList = try next()
        guard let keys = keyList.list?.map(\.string), keys.allSatisfy({ $0 != nil }) else {
            throw fail("storage key list is \(keyList.summary), not a list of strings")
        }
        var storages: [String: TorchStorage] = [:]
        for case let key? in keys {
            guard let ref = defined[key] else { throw fail("data for storage \(quoted(key)), which nothing uses") }
            guard storages[key] == nil else { throw fail("storage \(quoted(key)) is listed twice") }
            guard bytes.endIndex - position >= 8 else { throw fail("ends before the element count of storage \(quoted(key))") }
            var count: UInt64 = 0
            for k in 0..<8 { count |= UInt64(bytes[position + k]) << (8 * UInt64(k)) }
            position += 8
            guard count == UInt64(ref.count) else {
                throw fail("storage \(quoted(key)) holds \(count) elements but is declared with \(ref.count)")
            }
            // ref.count * byteSize cannot overflow: StorageReference bounds the count.
            let size = ref.count * ref.dtype.byteSize
            guard size <= bytes.endIndex - position else {
                throw fail("storage \(quoted(key)) needs \(size) bytes, only \(bytes.endIndex - position) remain")
            }
            storages[key] = TorchStorage(dtype: ref.dtype, count: ref.count, bytes: bytes[position..<(position + size)])
            position += size
        }
        if let missing = defined.keys.sorted().first(where: { storages[$0] == nil }) {
            throw fail("storage \(quoted(missing)) has no data")
        }
        guard position == bytes.endIndex else { throw fail("\(bytes.endIndex - position) bytes after the last storage") }
        return (root, storages)
    }
}

/// A storage's persistent id, `('storage', <storage class>, key, location, numel, ...)`, as both `torch.save`
/// formats write it. The location (`cpu`, `cuda:0`) does not matter: everything is read to the host.
struct StorageReference {
    let dtype: TorchDType
    let key: String
    let count: Int

    init(_ id: PickleValue, source: String) throws {
        func fail(_ what: String) -> FormatError { FormatError("\(source): persistent id \(what)") }
        guard let items = id.tuple, items.count >= 5, items[0].string == "storage" else {
            throw fail("is \(id.summary), not a ('storage', type, key, location, numel) tuple")
        }
        guard let type = items[1].global, type.module == "torch" || type.module == "torch.storage" else {
            throw fail("names \(items[1].summary) as a storage type, not a PyTorch storage class")
        }
        guard let dtype = TorchDType(storageClass: type.name) else {
            throw fail("names the unsupported storage type \(quoted("\(type.module).\(type.name)"))")
        }
        guard let key = items[2].string else { throw fail("has a key that is \(items[2].summary), not a string") }
        // Bounded so that count * 8 fits easily; real storages are far below it, and each one is checked
        // against the bytes the file actually holds before anything is read.
        guard let count = items[4].int, count >= 0, count <= 1 << 50 else {
            throw fail("for storage \(quoted(key)) has the element count \(items[4].summary)")
        }
        if items.count > 5, !items[5].isNone {
            throw fail("for storage \(quoted(key)) is a view of another storage, which torch.save no longer writes")
        }
        self.dtype = dtype
        self.key = key
        self.count = count
    }
}

extension PickleDocument {
    /// Every persistent id in the document, in the order the pickle made them.
    var persistentIDs: [PickleValue] {
        nodes.indices.compactMap { i in
            if case .persistentID(let v) = nodes[i] { return value(v) }
            return nil
        }
    }
}
