/// Reads Python pickles (protocols 0 to 5) as data, never as a program.
///
/// Python's unpickler imports every GLOBAL it meets and calls every REDUCE, so loading a stranger's pickle runs
/// the stranger's code. This interpreter runs the same opcodes but only records them: a global is a name, a call
/// is a `PickleRecord` of what would have been called with what, BUILD's state is attached to that record, and a
/// persistent id is returned unresolved. What such records mean (a tensor, a numpy array, a module) is decided by
/// recognisers on top, which accept only the few names they know.
///
/// Hostile input costs at most time and memory linear in its length, within `PickleLimits`: every length field is
/// checked against the bytes actually present before anything is allocated, the memo is a dictionary (a PUT at
/// index 4 billion allocates nothing), and nesting is bounded. Every failure is a one-line `FormatError` naming the
/// file, the problem and its byte offset.
public enum PickleReader {
    /// Reads the one pickle that makes up `bytes`; bytes after its STOP are an error.
    public static func read(_ bytes: [UInt8], source: String, limits: PickleLimits = .default) throws -> PickleValue {
        let (value, end) = try read(prefixOf: bytes[...], source: source, limits: limits)
        guard end == bytes.endIndex else {
            throw FormatError("\(source): \(bytes.endIndex - end) bytes after the end of the pickle (byte \(end))")
        }
        return value
    }

    /// Reads one pickle from the start of `bytes` (several can follow each other, as in PyTorch's legacy format)
    /// and returns it with the index just after its STOP opcode.
    public static func read(prefixOf bytes: ArraySlice<UInt8>, source: String,
                            limits: PickleLimits = .default) throws -> (value: PickleValue, end: Int) {
        var machine = PickleMachine(bytes: bytes, document: PickleDocument(source: source, limits: limits))
        let root = try machine.run()
        return (machine.document.value(root), machine.position)
    }
}

/// The interpreter's state: Python's stack, its mark stack (here positions in the one stack) and memo.
struct PickleMachine {
    let bytes: ArraySlice<UInt8>
    let document: PickleDocument
    var position: Int
    /// Offset of the opcode being run, for error messages.
    var opcodeStart: Int
    var stack: [Int] = []
    var marks: [Int] = []
    var memo: [Int: Int] = [:]

    init(bytes: ArraySlice<UInt8>, document: PickleDocument) {
        self.bytes = bytes
        self.document = document
        position = bytes.startIndex
        opcodeStart = bytes.startIndex
    }

    func fail(_ what: String) -> FormatError {
        FormatError("\(document.source): pickle \(what) (byte \(opcodeStart - bytes.startIndex))")
    }

    // MARK: Input

    mutating func byte() throws -> UInt8 {
        guard position < bytes.endIndex else { throw fail("ends inside an opcode") }
        defer { position += 1 }
        return bytes[position]
    }

    /// The next `count` bytes, after checking that the input holds them (a claimed length is never trusted).
    mutating func take(_ count: UInt64) throws -> ArraySlice<UInt8> {
        let available = bytes.endIndex - position
        guard count <= UInt64(available) else {
            throw fail("claims \(count) bytes but only \(available) remain")
        }
        defer { position += Int(count) }
        return bytes[position..<(position + Int(count))]
    }

    /// An unsigned little-endian integer of `width` bytes.
    mutating func unsigned(_ width: Int) throws -> UInt64 {
        var v: UInt64 = 0
        for (k, b) in try take(UInt64(width)).enumerated() { v |= UInt64(b) << (8 * UInt64(k)) }
        return v
    }

    /// A protocol-0 text argument: the bytes up to the next newline (which is consumed).
    mutating func line() throws -> ArraySlice<UInt8> {
        guard let end = bytes[position...].firstIndex(of: 0x0A) else { throw fail("text argument has no end of line") }
        defer { position = end + 1 }
        return bytes[position..<end]
    }

    mutating func lineText(_ what: String) throws -> String {
        guard let s = String(validating: try line(), as: UTF8.self) else { throw fail("\(what) is not valid UTF-8") }
        return s
    }

    // MARK: Values and the stack

    mutating func make(_ node: PickleDocument.Node, children: [Int] = []) throws -> Int {
        guard document.nodes.count < document.limits.maxObjects else {
            throw fail("builds more than \(document.limits.maxObjects) objects")
        }
        var depth: Int32 = 0
        for c in children { depth = max(depth, document.depths[c] + 1) }
        if case .record = node { depth = max(depth, 1) }
        try checkDepth(Int(depth))
        document.nodes.append(node)
        document.depths.append(depth)
        return document.nodes.count - 1
    }

    func checkDepth(_ depth: Int) throws {
        guard depth <= document.limits.maxDepth else { throw fail("nests deeper than \(document.limits.maxDepth) levels") }
    }

    /// After `child` was put into `container`, the container is at least one level above it.
    mutating func deepen(_ container: Int, by child: Int) throws {
        let d = max(document.depths[container], document.depths[child] + 1)
        try checkDepth(Int(d))
        document.depths[container] = d
    }

    mutating func push(_ node: PickleDocument.Node, children: [Int] = []) throws {
        stack.append(try make(node, children: children))
    }

    mutating func pop() throws -> Int {
        guard stack.count > (marks.last ?? 0) else { throw fail("pops from an empty stack") }
        return stack.removeLast()
    }

    func top() throws -> Int {
        guard stack.count > (marks.last ?? 0) else { throw fail("reads the top of an empty stack") }
        return stack[stack.count - 1]
    }

    /// The items above the last MARK, removing them and the mark.
    mutating func popToMark() throws -> [Int] {
        guard let mark = marks.popLast() else { throw fail("has no MARK to pop to") }
        defer { stack.removeSubrange(mark...) }
        return Array(stack[mark...])
    }

    mutating func sequence(_ items: [Int]) -> Int {
        document.sequences.append(items)
        return document.sequences.count - 1
    }

    mutating func pushTuple(_ items: [Int]) throws {
        try push(.tuple(sequence(items)), children: items)
    }

    mutating func pushRecord(_ kind: PickleRecord.Kind, callee: Int, arguments: Int, keywords: Int? = nil) throws {
        guard case .tuple = document.nodes[arguments] else {
            throw fail("call arguments are \(document.value(arguments).summary), not a tuple")
        }
        document.records.append(.init(kind: kind, callee: callee, arguments: arguments, keywords: keywords))
        let children = [callee, arguments] + (keywords.map { [$0] } ?? [])
        try push(.record(document.records.count - 1), children: children)
    }

    mutating func remember(_ index: Int) throws {
        guard index >= 0 else { throw fail("memo index \(index) is negative") }
        guard memo[index] != nil || memo.count < document.limits.maxMemoEntries else {
            throw fail("memo grows beyond \(document.limits.maxMemoEntries) entries")
        }
        memo[index] = try top()
    }

    mutating func recall(_ index: Int) throws {
        guard let v = memo[index] else { throw fail("reads memo entry \(index), which was never stored") }
        stack.append(v)
    }

    // MARK: Containers filled after they are built

    mutating func setItems(_ pairs: [Int], into target: Int) throws {
        guard pairs.count % 2 == 0 else { throw fail("SETITEMS has an odd number of items") }
        let entries = stride(from: 0, to: pairs.count, by: 2).map { (key: pairs[$0], value: pairs[$0 + 1]) }
        switch document.nodes[target] {
        case .dict(let k): document.mappings[k] += entries
        case .record(let k): document.records[k].items += entries
        default: throw fail("sets items on \(document.value(target).summary)")
        }
        for c in pairs { try deepen(target, by: c) }
    }

    mutating func append(_ items: [Int], to target: Int, what: String) throws {
        switch document.nodes[target] {
        case .list(let k) where what == "APPEND": document.sequences[k] += items
        case .set(let k) where what == "ADDITEMS": document.sequences[k] += items
        case .record(let k): document.records[k].appended += items
        default: throw fail("\(what) to \(document.value(target).summary)")
        }
        for c in items { try deepen(target, by: c) }
    }

    mutating func build(state: Int, on target: Int) throws {
        guard case .record(let k) = document.nodes[target] else {
            throw fail("BUILD sets the state of \(document.value(target).summary)")
        }
        guard document.records[k].state == nil else { throw fail("BUILD sets the state of one object twice") }
        document.records[k].state = state
        try deepen(target, by: state)
    }

    // MARK: The loop

    /// Runs opcodes up to STOP and returns the value it pops.
    mutating func run() throws -> Int {
        while true {
            opcodeStart = position
            let op = try byte()
            switch op {
            case 0x2E:  // STOP
                return try pop()
            default:
                try execute(op)
            }
        }
    }
}
