/// What `PickleReader` builds from a pickle: plain data, and inert records of everything that Python would
/// have imported or called. Nothing here is ever imported, looked up or called.
///
/// Values live in one arena and refer to each other by index. Pickles build containers first and fill them
/// later (a list is memoized, then APPENDed to), a value may be shared, and a hostile file can even make a
/// list contain itself; indices keep all of that cheap, and freeing a million-deep chain does not recurse.
public final class PickleDocument {
    /// Where a value sits in the arena.
    enum Node {
        case none
        case bool(Bool)
        case int(Int)
        /// An integer outside Int's range: little-endian two's complement, as LONG1/LONG4 store it.
        case bigInt([UInt8])
        case float(Double)
        case string(String)
        /// A slice of the input buffer (or of decoded text), never copied.
        case bytes(ArraySlice<UInt8>)
        /// Index into `sequences`.
        case list(Int), tuple(Int), set(Int), frozenSet(Int)
        /// Index into `mappings`.
        case dict(Int)
        case global(module: String, name: String)
        /// Index into `records`.
        case record(Int)
        /// A persistent id (PERSID / BINPERSID), left for the caller to resolve.
        case persistentID(Int)
    }

    struct Record {
        var kind: PickleRecord.Kind
        var callee: Int
        var arguments: Int
        var keywords: Int?
        var state: Int?
        var items: [(key: Int, value: Int)] = []
        var appended: [Int] = []
    }

    /// Names the file in error messages.
    public let source: String
    public let limits: PickleLimits
    var nodes: [Node] = []
    /// Longest chain of containment below each node when it was built or last filled (see `PickleLimits.maxDepth`).
    var depths: [Int32] = []
    var sequences: [[Int]] = []
    var mappings: [[(key: Int, value: Int)]] = []
    var records: [Record] = []

    init(source: String, limits: PickleLimits) {
        self.source = source
        self.limits = limits
    }

    /// The value at arena index `id`.
    func value(_ id: Int) -> PickleValue { PickleValue(document: self, id: id) }
}

/// Bounds on what a pickle may make the reader build. Every quantity is also bounded by the input's length
/// (each opcode is at least one byte and makes at most one value); these limits keep a large hostile file from
/// turning that into gigabytes of bookkeeping, and keep every recursive walk over the result shallow.
public struct PickleLimits: Sendable {
    /// Containers nested deeper than this (and open MARKs deeper than this) are refused. Python itself cannot
    /// pickle much beyond 1000 levels; real checkpoints nest a few dozen. A container's depth is counted when it is
    /// built and raised when it is filled; one filled after being nested in others does not raise them, so code that
    /// walks the result bounds its own recursion too.
    public var maxDepth: Int
    /// Memo entries (MEMOIZE / PUT).
    public var maxMemoEntries: Int
    /// Values of any kind built in total.
    public var maxObjects: Int

    public init(maxDepth: Int = 256, maxMemoEntries: Int = 1 << 22, maxObjects: Int = 1 << 24) {
        self.maxDepth = maxDepth
        self.maxMemoEntries = maxMemoEntries
        self.maxObjects = maxObjects
    }

    public static let `default` = PickleLimits()
}

/// A call Python would have made while unpickling, kept as data: `callee(*arguments, **keywords)` (REDUCE,
/// INST, OBJ) or `callee.__new__(callee, *arguments)` (NEWOBJ, NEWOBJ_EX), then BUILD's `state`, and the
/// items SETITEM(S) and APPEND(S)/ADDITEMS put into the result.
public struct PickleRecord {
    public enum Kind: Sendable {
        /// REDUCE, INST or OBJ: the callee is called.
        case call
        /// NEWOBJ or NEWOBJ_EX: an instance of the callee (a class) is created without running its __init__.
        case newObject
    }

    public let kind: Kind
    public let callee: PickleValue
    /// A tuple.
    public let arguments: PickleValue
    public let keywords: PickleValue?
    public let state: PickleValue?
    public let items: [(key: PickleValue, value: PickleValue)]
    public let appended: [PickleValue]

    /// "module.name" when the callee is a global, as it is in every pickle Python writes.
    public var calleeName: String? { callee.globalName }
}

/// One value of a `PickleDocument`. Accessors return nil when the value is of another kind.
public struct PickleValue {
    public let document: PickleDocument
    /// The value's place in its document: two values with one id are one object, shared as in Python.
    public let id: Int

    var node: PickleDocument.Node { document.nodes[id] }

    public var isNone: Bool {
        if case .none = node { return true }
        return false
    }

    public var bool: Bool? {
        if case .bool(let b) = node { return b }
        return nil
    }

    /// An integer within Int's range (Python bools are not integers here).
    public var int: Int? {
        if case .int(let i) = node { return i }
        return nil
    }

    /// Any integer as little-endian two's complement bytes (minimal length), for values beyond Int.
    public var integerBytes: [UInt8]? {
        switch node {
        case .bigInt(let b): return b
        case .int(let i): return minimalTwosComplement(i)
        default: return nil
        }
    }

    /// A float, or an integer as a float.
    public var double: Double? {
        switch node {
        case .float(let d): return d
        case .int(let i): return Double(i)
        default: return nil
        }
    }

    public var string: String? {
        if case .string(let s) = node { return s }
        return nil
    }

    public var bytes: ArraySlice<UInt8>? {
        if case .bytes(let b) = node { return b }
        return nil
    }

    public var tuple: [PickleValue]? {
        if case .tuple(let k) = node { return document.sequences[k].map(document.value) }
        return nil
    }

    public var list: [PickleValue]? {
        if case .list(let k) = node { return document.sequences[k].map(document.value) }
        return nil
    }

    /// The items of a tuple or a list.
    public var elements: [PickleValue]? { tuple ?? list }

    /// The items of a set or frozenset.
    public var setElements: [PickleValue]? {
        switch node {
        case .set(let k), .frozenSet(let k): return document.sequences[k].map(document.value)
        default: return nil
        }
    }

    /// A dict's entries in insertion order; a key set twice keeps its first place and its last value, as in
    /// Python. Also the entries of `collections.OrderedDict()` filled by SETITEM(S), which is how PyTorch
    /// pickles its hook and metadata dicts.
    public var dictionary: [(key: PickleValue, value: PickleValue)]? {
        switch node {
        case .dict(let k):
            return resolved(document.mappings[k])
        case .record(let k):
            let r = document.records[k]
            guard r.kind == .call, document.value(r.callee).globalName == "collections.OrderedDict",
                  document.value(r.arguments).tuple?.isEmpty == true, r.state == nil, r.appended.isEmpty else { return nil }
            return resolved(r.items)
        default:
            return nil
        }
    }

    /// The value stored under the string key `key` in a dictionary.
    public subscript(key: String) -> PickleValue? {
        dictionary?.last { $0.key.string == key }?.value
    }

    /// GLOBAL / STACK_GLOBAL / INST: a name that Python would have imported. Never imported here.
    public var global: (module: String, name: String)? {
        if case .global(let m, let n) = node { return (m, n) }
        return nil
    }

    /// "module.name" of a global.
    public var globalName: String? { global.map { "\($0.module).\($0.name)" } }

    public var record: PickleRecord? {
        guard case .record(let k) = node else { return nil }
        let r = document.records[k]
        return PickleRecord(kind: r.kind, callee: document.value(r.callee), arguments: document.value(r.arguments),
                            keywords: r.keywords.map(document.value), state: r.state.map(document.value),
                            items: r.items.map { (document.value($0.key), document.value($0.value)) },
                            appended: r.appended.map(document.value))
    }

    /// The object a persistent id stands for is the caller's to supply; this is the id itself.
    public var persistentID: PickleValue? {
        if case .persistentID(let v) = node { return document.value(v) }
        return nil
    }

    /// True when both are the same value of the document (the pickle shares it, as Python would).
    public func isIdentical(to other: PickleValue) -> Bool { document === other.document && id == other.id }

    /// A short one-line description for error messages: "the string \"x\"", "a call of os.system", "a list of 3 items".
    public var summary: String {
        switch node {
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return "the integer \(i)"
        case .bigInt(let b): return "an integer of \(b.count) bytes"
        case .float(let d): return "the float \(d)"
        case .string(let s): return "the string \(quoted(s, limit: 60))"
        case .bytes(let b): return "\(b.count) bytes"
        case .list(let k): return "a list of \(document.sequences[k].count) items"
        case .tuple(let k): return "a tuple of \(document.sequences[k].count) items"
        case .set(let k), .frozenSet(let k): return "a set of \(document.sequences[k].count) items"
        case .dict(let k): return "a dict of \(document.mappings[k].count) entries"
        case .global: return "the global \(quoted(globalName!))"
        case .record(let k):
            let callee = document.value(document.records[k].callee)
            let name = callee.globalName.map { quoted($0) } ?? callee.summary
            return document.records[k].kind == .call ? "a call of \(name)" : "a new \(name) object"
        case .persistentID: return "a persistent id"
        }
    }

    /// Entries with repeated scalar keys folded into the first occurrence (Python's dict semantics).
    private func resolved(_ entries: [(key: Int, value: Int)]) -> [(key: PickleValue, value: PickleValue)] {
        var firstIndex: [ScalarKey: Int] = [:]
        var out: [(key: PickleValue, value: PickleValue)] = []
        out.reserveCapacity(entries.count)
        for (k, v) in entries {
            if let key = ScalarKey(document.nodes[k]) {
                if let i = firstIndex[key] {
                    out[i].value = document.value(v)
                    continue
                }
                firstIndex[key] = out.count
            }
            out.append((document.value(k), document.value(v)))
        }
        return out
    }
}

/// Dictionary keys that compare by value (unhashable or record keys are kept apart, each its own entry).
private enum ScalarKey: Hashable {
    case none, int(Int), float(Double), string(String), bytes([UInt8]), bigInt([UInt8])

    init?(_ node: PickleDocument.Node) {
        switch node {
        case .none: self = .none
        // Python's True == 1 and hash(True) == hash(1).
        case .bool(let b): self = .int(b ? 1 : 0)
        case .int(let i): self = .int(i)
        case .float(let d): self = d == d.rounded() && abs(d) < 9.2e18 ? .int(Int(d)) : .float(d)
        case .string(let s): self = .string(s)
        case .bytes(let b): self = .bytes(Array(b))
        case .bigInt(let b): self = .bigInt(b)
        default: return nil
        }
    }
}

/// `i` as the shortest little-endian two's complement bytes that hold it (empty for 0, as LONG1 writes 0).
func minimalTwosComplement(_ i: Int) -> [UInt8] {
    var bytes = (0..<8).map { UInt8(truncatingIfNeeded: i >> (8 * $0)) }
    while let last = bytes.last {
        let signBitOfPrevious = bytes.count >= 2 ? bytes[bytes.count - 2] & 0x80 : (i < 0 ? 0x80 : 0)
        let redundant = (last == 0 && signBitOfPrevious == 0) || (last == 0xFF && signBitOfPrevious != 0)
        guard redundant, bytes.count > 1 || last == 0 else { break }
        bytes.removeLast()
    }
    return bytes
}
