/// The little C preprocessor syntax the kernel generator reads: logical lines (backslash continuations joined,
/// comments removed, marker comments kept), balanced argument lists and `##` token pasting.
struct LogicalLine {
    /// 1-based line of the first physical line.
    let number: Int
    let text: String
}

/// Where a declaration went wrong: the build stops with `file:line: error: message`.
public struct DeclarationError: Error, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let message: String
    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }
    public var description: String { "\(file):\(line): error: \(message)" }
}

enum Scanner {
    /// The source as logical lines: `//` and `/* */` comments dropped, except lines starting with `//!`
    /// (generator markers), which stay whole.
    static func logicalLines(_ source: String) -> [LogicalLine] {
        var out: [LogicalLine] = []
        var pending = "", start = 0, inBlockComment = false
        for (i, raw) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = raw.drop { $0 == " " || $0 == "\t" }
            if pending.isEmpty && !inBlockComment && trimmed.hasPrefix("//!") {
                out.append(LogicalLine(number: i + 1, text: String(trimmed)))
                continue
            }
            var line = ""
            var chars = Array(raw)
            var k = 0
            while k < chars.count {
                if inBlockComment {
                    if chars[k] == "*" && k + 1 < chars.count && chars[k + 1] == "/" { inBlockComment = false; k += 2 } else { k += 1 }
                    continue
                }
                if chars[k] == "/" && k + 1 < chars.count && chars[k + 1] == "/" { break }
                if chars[k] == "/" && k + 1 < chars.count && chars[k + 1] == "*" { inBlockComment = true; k += 2; continue }
                line.append(chars[k])
                k += 1
            }
            chars = []
            if pending.isEmpty { start = i + 1 }
            if line.hasSuffix("\\") {
                pending += line.dropLast() + " "
                continue
            }
            pending += line
            // A call spread over several lines (a kernel's parameter list) is one logical line.
            if !pending.hasPrefix("#") && parenthesisDepth(pending) > 0 {
                pending += " "
                continue
            }
            out.append(LogicalLine(number: start, text: pending))
            pending = ""
        }
        if !pending.isEmpty { out.append(LogicalLine(number: start, text: pending)) }
        return out
    }

    static func parenthesisDepth(_ text: String) -> Int {
        text.reduce(0) { $0 + ($1 == "(" ? 1 : $1 == ")" ? -1 : 0) }
    }

    static func isIdentifierCharacter(_ c: Character) -> Bool { c == "_" || c.isLetter || c.isNumber }

    static func isIdentifier<S: StringProtocol>(_ s: S) -> Bool {
        guard let first = s.first, first == "_" || first.isLetter else { return false }
        return s.allSatisfy(isIdentifierCharacter)
    }

    /// Occurrences of `name(` as a whole identifier in `text`: the offset after the opening parenthesis.
    static func calls(of name: String, in text: String) -> [String.Index] {
        var result: [String.Index] = []
        var i = text.startIndex
        while let r = text[i...].firstRange(of: name) {
            let before = r.lowerBound == text.startIndex ? nil : text[text.index(before: r.lowerBound)]
            var after = r.upperBound
            while after < text.endIndex && text[after] == " " { after = text.index(after: after) }
            if (before.map { !isIdentifierCharacter($0) } ?? true) && after < text.endIndex && text[after] == "(" {
                result.append(text.index(after: after))
            }
            i = r.upperBound
        }
        return result
    }

    /// The arguments of a call whose opening parenthesis ends before `start`, split at top-level commas and
    /// trimmed, and the index after the closing parenthesis; nil when the parentheses do not balance.
    static func arguments(in text: String, from start: String.Index) -> (args: [String], end: String.Index)? {
        var depth = 1, current = "", args: [String] = []
        var i = start
        while i < text.endIndex {
            let c = text[i]
            if c == "(" { depth += 1 }
            if c == ")" {
                depth -= 1
                if depth == 0 {
                    args.append(trim(current))
                    return (args.count == 1 && args[0].isEmpty ? [] : args, text.index(after: i))
                }
            }
            if c == "," && depth == 1 { args.append(trim(current)); current = "" } else { current.append(c) }
            i = text.index(after: i)
        }
        return nil
    }

    static func trim<S: StringProtocol>(_ s: S) -> String {
        String(s.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }

    /// Macro argument substitution (whole identifiers only) followed by `##` pasting.
    static func substitute(_ text: String, _ values: [String: String]) -> String {
        var out = "", word = ""
        func flush() { out += values[word] ?? word; word = "" }
        for c in text {
            if isIdentifierCharacter(c) { word.append(c) } else { flush(); out.append(c) }
        }
        flush()
        return paste(out)
    }

    /// `a ## b` to `ab`.
    static func paste(_ text: String) -> String {
        var parts = text.split(separator: "##", omittingEmptySubsequences: false).map(String.init)
        guard parts.count > 1 else { return text }
        parts = parts.enumerated().map { i, p in
            var s = Substring(p)
            if i > 0 { s = s.drop { $0 == " " } }
            if i < parts.count - 1 { s = Substring(s.reversed().drop { $0 == " " }.reversed()) }
            return String(s)
        }
        return parts.joined()
    }
}
