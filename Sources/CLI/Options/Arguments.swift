import Formats

/// A user-facing failure: printed as one line, exit status 1 (2 for usage errors).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var usage = false
    init(_ message: String, usage: Bool = false) {
        description = message
        self.usage = usage
    }
}

/// The flags a command takes: `options` with a value, `switches` without.
struct OptionNames {
    var options: Set<String>
    var switches: Set<String> = []

    func union(_ other: OptionNames) -> OptionNames {
        OptionNames(options: options.union(other.options), switches: switches.union(other.switches))
    }
}

/// `--name value` and `--flag` arguments of one command, checked against what the command accepts. A switch
/// also takes `--flag=false` (and `=true`), so that the command line can turn off a switch a config file set.
///
/// It remembers every option it was asked about with the value it gave (the default when the option was not
/// given), so a command can write out the full set of options it ran with (`resolvedOptions`).
final class Arguments {
    let command: String
    private var values: [String: String] = [:]
    private var flags: Set<String> = []
    private(set) var positional: [String] = []
    /// The options asked for so far, in that order, with the values the accessors returned.
    private var resolved: [(name: String, value: JSONValue)] = []

    convenience init(command: String, _ args: [String], options: Set<String>, switches: Set<String> = []) throws {
        try self.init(command: command, args, OptionNames(options: options, switches: switches))
    }

    init(command: String, _ args: [String], _ names: OptionNames) throws {
        self.command = command
        let (options, switches) = (names.options, names.switches)
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
                    switch inline {
                    case nil, "true": flags.insert(name)
                    case "false": flags.remove(name)
                    default: throw CLIError("--\(name) is a switch: give it alone, or as --\(name)=true or --\(name)=false, not '\(a)'", usage: true)
                    }
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

    func has(_ flag: String) -> Bool {
        let on = flags.contains(flag)
        record(flag, .bool(on))
        return on
    }

    func string(_ name: String) -> String? {
        if let v = values[name] { record(name, .string(v)) }
        return values[name]
    }

    func string(_ name: String, default d: String) -> String {
        let v = values[name] ?? d
        record(name, .string(v))
        return v
    }

    func int(_ name: String, default d: Int, range: ClosedRange<Int> = 1...Int.max) throws -> Int {
        var v = d
        if let s = values[name] {
            guard let parsed = Int(s) else { throw CLIError("--\(name) must be a whole number, got '\(s)'", usage: true) }
            guard range.contains(parsed) else {
                throw CLIError("--\(name) must be in \(range.lowerBound)...\(range.upperBound), got \(parsed)", usage: true)
            }
            v = parsed
        }
        record(name, .number(Double(v)))
        return v
    }

    func double(_ name: String, default d: Double, range: ClosedRange<Double> = -Double.greatestFiniteMagnitude...Double.greatestFiniteMagnitude) throws -> Double {
        var v = d
        if let s = values[name] {
            guard let parsed = Double(s), parsed.isFinite else { throw CLIError("--\(name) must be a finite number, got '\(s)'", usage: true) }
            guard range.contains(parsed) else { throw CLIError("--\(name) must be in [\(range.lowerBound), \(range.upperBound)], got \(s)", usage: true) }
            v = parsed
        }
        record(name, .number(v))
        return v
    }

    func optionalDouble(_ name: String, range: ClosedRange<Double> = -Double.greatestFiniteMagnitude...Double.greatestFiniteMagnitude) throws -> Double? {
        values[name] == nil ? nil : try double(name, default: 0, range: range)
    }

    func intList(_ name: String, default d: [Int]) throws -> [Int] {
        var v = d
        if let s = values[name] {
            let parts = commaSeparated(s).map { Int($0) }
            guard !parts.isEmpty, parts.allSatisfy({ $0 != nil && $0! > 0 }) else {
                throw CLIError("--\(name) must be a comma-separated list of positive whole numbers, got '\(s)'", usage: true)
            }
            v = parts.map { $0! }
        }
        record(name, .string(v.map(String.init).joined(separator: ",")))
        return v
    }

    /// Every option the command asked for, with the value it ran with (given or default), then any given option
    /// it never asked for; leaving out `excluded`. Lists are comma-separated text, as on the command line, so
    /// that `tvm COMMAND --config FILE` with this object repeats the run.
    func resolvedOptions(leavingOut excluded: Set<String> = []) -> JSONValue {
        let asked = Set(resolved.map(\.name))
        let unasked = values.keys.filter { !asked.contains($0) }.sorted().map { ($0, JSONValue.string(values[$0]!)) }
        return .object((resolved + unasked).filter { !excluded.contains($0.0) })
    }

    /// Notes an option's value in the order options are first read. A later read gives the same value, typed
    /// as the command finally reads it (`string` as a presence check, then `int`): that one is kept.
    private func record(_ name: String, _ value: JSONValue) {
        if let i = resolved.firstIndex(where: { $0.name == name }) { resolved[i].value = value } else { resolved.append((name, value)) }
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
