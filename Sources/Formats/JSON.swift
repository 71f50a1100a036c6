/// A JSON document. Objects keep their keys in file order (and keep duplicates, so that format
/// readers such as safetensors can refuse them instead of silently losing one).
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            guard x.count == y.count else { return false }
            for (p, q) in zip(x, y) where p.0 != q.0 || p.1 != q.1 { return false }
            return true
        default: return false
        }
    }

    /// The first value stored under `key` when this is an object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for (k, v) in members where k == key { return v }
        return nil
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var double: Double? {
        if case .number(let d) = self { return d }
        return nil
    }

    /// The number as an `Int` when it is exactly integral; 1.5 or 1e300 give nil rather than a
    /// silently truncated value.
    public var int: Int? {
        if case .number(let d) = self { return Int(exactly: d) }
        return nil
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var object: [(String, JSONValue)]? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// Parses strict RFC 8259 JSON. Nesting deeper than `maxDepth` is an error (the parser recurses, and
    /// a file of a million `[` must not overflow the stack); `maxDepth` is capped at 1000 for that reason.
    public static func parse(_ bytes: some Collection<UInt8>, maxDepth: Int = 64) throws -> JSONValue {
        let depth = min(max(maxDepth, 0), 1000)
        if let result = try bytes.withContiguousStorageIfAvailable({ try parseBuffer($0, maxDepth: depth) }) {
            return result
        }
        let copy = Array(bytes)
        return try copy.withUnsafeBufferPointer { try parseBuffer($0, maxDepth: depth) }
    }

    /// Parses a JSON text given as a Swift string.
    public static func parse(_ text: String, maxDepth: Int = 64) throws -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    private static func parseBuffer(_ buffer: UnsafeBufferPointer<UInt8>, maxDepth: Int) throws -> JSONValue {
        var parser = JSONParser(input: buffer, maxDepth: maxDepth)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.pos == buffer.count else {
            throw parser.error("unexpected trailing data after the JSON value")
        }
        return value
    }

    /// Serializes to JSON text. Integral numbers below 2^53 print without a fraction ("3", not "3.0");
    /// other numbers use Swift's shortest round-trip form; NaN and infinities (which JSON cannot express)
    /// become `null`.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(to out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let d): out += JSONValue.formatNumber(d)
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if pretty { newline(&out, indent + 1) }
                item.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { newline(&out, indent) }
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                if pretty { newline(&out, indent + 1) }
                JSONValue.writeString(key, to: &out)
                out += pretty ? ": " : ":"
                value.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { newline(&out, indent) }
            out += "}"
        }
    }

    private func newline(_ out: inout String, _ indent: Int) {
        out += "\n"
        out += String(repeating: "  ", count: indent)
    }

    static func formatNumber(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        if d == 0 { return d.sign == .minus ? "-0" : "0" }
        if d == d.rounded(.towardZero) && abs(d) < 9007199254740992.0 {
            return String(Int64(d))
        }
        // Swift's description is the shortest string that round-trips, and its forms ("1e-07",
        // "1e+20", "0.1") are all valid JSON numbers.
        return d.description
    }

    static func writeString(_ s: String, to out: inout String) {
        out += "\""
        var run = Substring.UnicodeScalarView()
        for scalar in s.unicodeScalars {
            let escape: String?
            switch scalar {
            case "\"": escape = "\\\""
            case "\\": escape = "\\\\"
            case "\n": escape = "\\n"
            case "\r": escape = "\\r"
            case "\t": escape = "\\t"
            case "\u{08}": escape = "\\b"
            case "\u{0C}": escape = "\\f"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    escape = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    escape = nil
                }
            }
            if let escape {
                out.unicodeScalars.append(contentsOf: run)
                run.removeAll(keepingCapacity: true)
                out += escape
            } else {
                run.append(scalar)
            }
        }
        out.unicodeScalars.append(contentsOf: run)
        out += "\""
    }
}

private struct JSONParser {
    let input: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var pos = 0

    init(input: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.input = input
        self.maxDepth = maxDepth
    }

    func error(_ what: String, at position: Int? = nil) -> FormatError {
        FormatError("JSON error at byte \(position ?? pos): \(what)")
    }

    mutating func skipWhitespace() {
        while pos < input.count {
            switch input[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    func describe(_ byte: UInt8) -> String {
        if byte >= 0x21 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
        return "byte 0x" + String(byte, radix: 16)
    }

    mutating func parseValue(depth: Int) throws -> JSONValue {
        guard pos < input.count else { throw error("unexpected end of input, expected a value") }
        let c = input[pos]
        switch c {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected \(describe(c)), expected a value")
        }
    }

    mutating func expectLiteral(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard input.count - pos >= n else { throw error("invalid literal") }
        let expected = UnsafeBufferPointer(start: word.utf8Start, count: n)
        for i in 0..<n where input[pos + i] != expected[i] {
            throw error("invalid literal")
        }
        pos += n
    }

    mutating func parseArray(depth: Int) throws -> JSONValue {
        guard depth <= maxDepth else { throw error("nesting deeper than \(maxDepth) levels") }
        pos += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if pos < input.count && input[pos] == UInt8(ascii: "]") {
            pos += 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth))
            skipWhitespace()
            guard pos < input.count else { throw error("unexpected end of input inside an array") }
            let c = input[pos]
            pos += 1
            if c == UInt8(ascii: "]") { return .array(items) }
            guard c == UInt8(ascii: ",") else {
                throw error("unexpected \(describe(c)) in array, expected ',' or ']'", at: pos - 1)
            }
        }
    }

    mutating func parseObject(depth: Int) throws -> JSONValue {
        guard depth <= maxDepth else { throw error("nesting deeper than \(maxDepth) levels") }
        pos += 1
        var members: [(String, JSONValue)] = []
        skipWhitespace()
        if pos < input.count && input[pos] == UInt8(ascii: "}") {
            pos += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard pos < input.count else { throw error("unexpected end of input inside an object") }
            guard input[pos] == UInt8(ascii: "\"") else {
                throw error("unexpected \(describe(input[pos])), expected a string key")
            }
            let key = try parseString()
            skipWhitespace()
            guard pos < input.count, input[pos] == UInt8(ascii: ":") else {
                throw error("expected ':' after object key")
            }
            pos += 1
            skipWhitespace()
            let value = try parseValue(depth: depth)
            members.append((key, value))
            skipWhitespace()
            guard pos < input.count else { throw error("unexpected end of input inside an object") }
            let c = input[pos]
            pos += 1
            if c == UInt8(ascii: "}") { return .object(members) }
            guard c == UInt8(ascii: ",") else {
                throw error("unexpected \(describe(c)) in object, expected ',' or '}'", at: pos - 1)
            }
        }
    }

    mutating func parseNumber() throws -> Double {
        let start = pos
        func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        if input[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < input.count, isDigit(input[pos]) else { throw error("invalid number: expected a digit") }
        if input[pos] == UInt8(ascii: "0") {
            pos += 1
            if pos < input.count && isDigit(input[pos]) {
                throw error("invalid number: leading zero", at: start)
            }
        } else {
            while pos < input.count && isDigit(input[pos]) { pos += 1 }
        }
        if pos < input.count && input[pos] == UInt8(ascii: ".") {
            pos += 1
            guard pos < input.count, isDigit(input[pos]) else {
                throw error("invalid number: expected a digit after '.'")
            }
            while pos < input.count && isDigit(input[pos]) { pos += 1 }
        }
        if pos < input.count && (input[pos] == UInt8(ascii: "e") || input[pos] == UInt8(ascii: "E")) {
            pos += 1
            if pos < input.count && (input[pos] == UInt8(ascii: "+") || input[pos] == UInt8(ascii: "-")) {
                pos += 1
            }
            guard pos < input.count, isDigit(input[pos]) else {
                throw error("invalid number: expected a digit in the exponent")
            }
            while pos < input.count && isDigit(input[pos]) { pos += 1 }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: input[start..<pos]), as: UTF8.self)
        guard let value = Double(text) else { throw error("invalid number", at: start) }
        guard value.isFinite else { throw error("number \(text) is out of the range of a double", at: start) }
        return value
    }

    mutating func parseHex4() throws -> UInt32 {
        guard input.count - pos >= 4 else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = input[pos]
            let digit: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit \(describe(c)) in \\u escape")
            }
            v = v << 4 | digit
            pos += 1
        }
        return v
    }

    mutating func parseString() throws -> String {
        let open = pos
        pos += 1
        let start = pos
        // Most strings (all keys in practice) have no escapes: decode them straight from the input.
        while pos < input.count {
            let c = input[pos]
            if c == UInt8(ascii: "\"") {
                let slice = UnsafeBufferPointer(rebasing: input[start..<pos])
                guard let s = String(validating: slice, as: UTF8.self) else {
                    throw error("string is not valid UTF-8", at: open)
                }
                pos += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            guard c >= 0x20 else { throw error("unescaped control character in string") }
            pos += 1
        }
        var bytes = Array(UnsafeBufferPointer(rebasing: input[start..<pos]))
        while true {
            guard pos < input.count else { throw error("unterminated string", at: open) }
            let c = input[pos]
            if c == UInt8(ascii: "\"") {
                pos += 1
                guard let s = String(validating: bytes, as: UTF8.self) else {
                    throw error("string is not valid UTF-8", at: open)
                }
                return s
            }
            if c < 0x20 { throw error("unescaped control character in string") }
            if c != UInt8(ascii: "\\") {
                bytes.append(c)
                pos += 1
                continue
            }
            pos += 1
            guard pos < input.count else { throw error("unterminated escape") }
            let e = input[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): bytes.append(0x22)
            case UInt8(ascii: "\\"): bytes.append(0x5C)
            case UInt8(ascii: "/"): bytes.append(0x2F)
            case UInt8(ascii: "b"): bytes.append(0x08)
            case UInt8(ascii: "f"): bytes.append(0x0C)
            case UInt8(ascii: "n"): bytes.append(0x0A)
            case UInt8(ascii: "r"): bytes.append(0x0D)
            case UInt8(ascii: "t"): bytes.append(0x09)
            case UInt8(ascii: "u"):
                let escapeStart = pos - 2
                var code = try parseHex4()
                if code >= 0xD800 && code < 0xDC00 {
                    guard input.count - pos >= 2, input[pos] == UInt8(ascii: "\\"),
                          input[pos + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired high surrogate in \\u escape", at: escapeStart)
                    }
                    pos += 2
                    let low = try parseHex4()
                    guard low >= 0xDC00 && low < 0xE000 else {
                        throw error("high surrogate not followed by a low surrogate", at: escapeStart)
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if code >= 0xDC00 && code < 0xE000 {
                    throw error("unpaired low surrogate in \\u escape", at: escapeStart)
                }
                guard let scalar = Unicode.Scalar(code) else {
                    throw error("invalid code point in \\u escape", at: escapeStart)
                }
                bytes.append(contentsOf: String(Character(scalar)).utf8)
            default:
                throw error("invalid escape \\ followed by \(describe(e))", at: pos - 2)
            }
        }
    }
}
