/// A user-facing failure: printed as one line, exit status 1 (2 for usage errors).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var usage = false
    init(_ message: String, usage: Bool = false) {
        description = message
        self.usage = usage
    }
}

/// `--name value` and `--flag` arguments of one command, checked against what the command accepts.
struct Arguments {
    let command: String
    private var values: [String: String] = [:]
    private var flags: Set<String> = []
    private(set) var positional: [String] = []

    /// `options` take a value, `switches` do not.
    init(command: String, _ args: [String], options: Set<String>, switches: Set<String> = []) throws {
        self.command = command
        var i = 0
        while i < args.count {
            let a = args[i]
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2)), inline: String?
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
                if switches.contains(name) {
                    guard inline == nil else { throw CLIError("--\(name) takes no value, got '\(a)'", usage: true) }
                    flags.insert(name)
                } else if options.contains(name) {
                    if let inline { values[name] = inline } else {
                        guard i + 1 < args.count else { throw CLIError("--\(name) needs a value", usage: true) }
                        i += 1
                        values[name] = args[i]
                    }
                    // No option means anything when empty; an empty --out would even write to "/".
                    guard values[name]?.isEmpty == false else { throw CLIError("--\(name) needs a value, got an empty one", usage: true) }
                } else {
                    throw CLIError("unknown flag --\(name) for 'tvm \(command)' (see 'tvm help \(command)')", usage: true)
                }
            } else {
                positional.append(a)
            }
            i += 1
        }
    }

    func has(_ flag: String) -> Bool { flags.contains(flag) }
    func string(_ name: String) -> String? { values[name] }
    func string(_ name: String, default d: String) -> String { values[name] ?? d }

    func int(_ name: String, default d: Int, range: ClosedRange<Int> = 1...Int.max) throws -> Int {
        guard let s = values[name] else { return d }
        guard let v = Int(s) else { throw CLIError("--\(name) must be a whole number, got '\(s)'", usage: true) }
        guard range.contains(v) else { throw CLIError("--\(name) must be in \(range.lowerBound)...\(range.upperBound), got \(v)", usage: true) }
        return v
    }

    func double(_ name: String, default d: Double, range: ClosedRange<Double> = -Double.greatestFiniteMagnitude...Double.greatestFiniteMagnitude) throws -> Double {
        guard let s = values[name] else { return d }
        guard let v = Double(s), v.isFinite else { throw CLIError("--\(name) must be a finite number, got '\(s)'", usage: true) }
        guard range.contains(v) else { throw CLIError("--\(name) must be in [\(range.lowerBound), \(range.upperBound)], got \(s)", usage: true) }
        return v
    }

    func optionalDouble(_ name: String, range: ClosedRange<Double> = -Double.greatestFiniteMagnitude...Double.greatestFiniteMagnitude) throws -> Double? {
        values[name] == nil ? nil : try double(name, default: 0, range: range)
    }

    func intList(_ name: String, default d: [Int]) throws -> [Int] {
        guard let s = values[name] else { return d }
        let parts = commaSeparated(s).map { Int($0) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0! > 0 }) else {
            throw CLIError("--\(name) must be a comma-separated list of positive whole numbers, got '\(s)'", usage: true)
        }
        return parts.map { $0! }
    }

    func expectPositional(_ n: Int, _ what: String) throws {
        guard positional.count == n else {
            throw CLIError("'tvm \(command)' takes \(what) (got \(positional.count) argument\(positional.count == 1 ? "" : "s"))", usage: true)
        }
    }
}

/// The items of "a,b,c", trimmed; empty items stay (as "") so that "1,,2" is refused, not read as "1,2".
func commaSeparated(_ s: String) -> [String] {
    s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: " ") }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
