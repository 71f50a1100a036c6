import Formats

/// `--config FILE` and `--preset NAME`: option values from a JSON file or a named recipe (`trainingPresets`),
/// turned into command-line options placed before the command line's own, so that those override them.
///
/// The file is one JSON object whose keys are the command's option names without the dashes: `"lr": 2e-4`,
/// `"model": "S/2"`, `"flip": true` (a switch: true or false), `"nfe": [1, 2, 4]` or `"nfe": "1,2,4"`; null
/// leaves an option unset. `"preset": "NAME"` applies a preset below the file's other keys (a `--preset` on the
/// command line replaces it). A key the command has no option for is an error naming the file and the key.
/// This is what `tvm train` writes to RUN_DIR/config.json, so that file repeats the run.
///
/// A later source overrides an earlier one option by option, and also drops the earlier source's options that
/// exclude the one it gives (`--cfg-range` on the command line replaces a file's `"cfg"`).
enum ConfigFile {
    /// Config files are a few hundred bytes; anything near this is not one.
    static let maxBytes = 1 << 20

    /// Options of which a command takes at most one.
    static let exclusive: [Set<String>] = [["cfg", "cfg-range"]]

    /// The options of the process itself, which main takes before the command sees its arguments.
    static let processOptions: Set<String> = ["device", "gpus", "procs", "comm"]

    /// `args` with `--config FILE` and `--preset NAME` replaced by the options they set. `accepted` names the
    /// flags the command takes given the resulting arguments (the kind of `tvm train` depends on `--data`,
    /// which a file or a preset may set).
    static func expand(_ args: [String], command: String, accepted: ([String]) -> OptionNames) throws -> [String] {
        var rest = args
        let configPaths = try extractAll(&rest, "config"), presetNames = try extractAll(&rest, "preset")
        guard configPaths.count <= 1, presetNames.count <= 1 else {
            throw CLIError("give --\(configPaths.count > 1 ? "config" : "preset") once", usage: true)
        }
        guard !configPaths.isEmpty || !presetNames.isEmpty else { return args }

        var fileEntries: [(String, JSONValue)] = []
        var presetName = presetNames.first
        if let path = configPaths.first {
            for (key, value) in try read(path) {
                if key == "preset" {
                    guard let name = value.string else { throw CLIError("\(path): \"preset\" must be a preset's name (a string)") }
                    presetName = presetName ?? name
                } else {
                    fileEntries.append((key, value))
                }
            }
        }
        var sources: [(origin: String, entries: [(String, JSONValue)])] = []
        if let presetName {
            guard let preset = trainingPresets.first(where: { $0.name == presetName }) else {
                throw CLIError("unknown preset '\(presetName)'; known: \(trainingPresets.map(\.name).joined(separator: ", ")) "
                               + "(tvm models lists them)", usage: true)
            }
            sources.append(("preset \(presetName)", preset.options))
        }
        if let path = configPaths.first { sources.append((path, fileEntries)) }

        // The flags a key may become depend on the kind of run, which the keys themselves may choose (`--data`):
        // read the kind from the values as they are, then check every key against the flags of that kind.
        let asWritten = sources.flatMap { $0.entries.map { key, value in "--\(key)=\(value.string ?? value.serialized())" } }
        let names = accepted(asWritten + rest)
        var expanded: [String] = []
        for (k, (origin, entries)) in sources.enumerated() {
            // The options given by the sources above this one (later sources, then the command line).
            let above = Set(sources[(k + 1)...].flatMap { $0.entries.map(\.0) } + rest.compactMap(optionName))
            for (key, value) in entries where !exclusive.contains(where: { $0.contains(key) && !$0.subtracting([key]).isDisjoint(with: above) }) {
                expanded += try arguments(key: key, value: value, origin: origin, names: names, command: command)
            }
        }
        return expanded + rest
    }

    /// "lr" for "--lr" or "--lr=2e-4"; nil for anything else (a value).
    static func optionName(_ argument: String) -> String? {
        guard argument.hasPrefix("--") else { return nil }
        return String(argument.dropFirst(2).prefix { $0 != "=" })
    }

    /// The options of a config file, in file order; a duplicated key is an error (which one would win?).
    static func read(_ path: String) throws -> [(String, JSONValue)] {
        guard FileSystem.isRegularFile(path) else {
            throw CLIError(FileSystem.exists(path) ? "\(path): the config is not a regular file" : "\(path): no such config file")
        }
        if let size = FileSystem.size(path), size > maxBytes { throw CLIError("\(path): \(size) bytes is too large for a config file") }
        let bytes = try AtomicFile.read(path: path)
        let json: JSONValue
        do { json = try JSONValue.parse(bytes, maxDepth: 8) } catch let e as FormatError {
            throw CLIError("\(path): not valid JSON: \(e.message)")
        }
        guard let members = json.object else { throw CLIError("\(path): a config file must be one JSON object of options") }
        var seen = Set<String>()
        for (key, _) in members where !seen.insert(key).inserted {
            throw CLIError("\(path): the key \"\(key)\" appears twice")
        }
        return members
    }

    /// One key's command-line form: `--key=value`, a switch alone, or nothing (null, a false switch).
    static func arguments(key: String, value: JSONValue, origin: String, names: OptionNames, command: String) throws -> [String] {
        if value.isNull { return [] }
        if names.switches.contains(key) {
            guard let on = value.bool else { throw CLIError("\(origin): \"\(key)\" is a switch: true or false, got \(value.serialized())") }
            return on ? ["--\(key)"] : ["--\(key)=false"]
        }
        guard names.options.contains(key) || processOptions.contains(key) else {
            throw CLIError("\(origin): unknown key \"\(key)\": 'tvm \(command)' has no option --\(key) (see 'tvm help \(command)')")
        }
        let text: String
        switch value {
        case .string(let s): text = s
        case .number: text = value.serialized()
        case .array(let items):
            text = try items.map { item -> String in
                switch item {
                case .string(let s): return s
                case .number: return item.serialized()
                default: throw CLIError("\(origin): \"\(key)\" lists \(item.serialized()); list items are numbers or strings")
                }
            }.joined(separator: ",")
        default:
            throw CLIError("\(origin): \"\(key)\" must be a number, a string or a list, got \(value.serialized())")
        }
        guard !text.isEmpty else { throw CLIError("\(origin): \"\(key)\" is empty") }
        return ["--\(key)=\(text)"]
    }

    /// Removes every `--name VALUE` / `--name=VALUE` from `args` and returns the values in order.
    private static func extractAll(_ args: inout [String], _ name: String) throws -> [String] {
        var found: [String] = [], kept: [String] = []
        var i = 0
        while i < args.count {
            if args[i] == "--\(name)" {
                guard i + 1 < args.count else { throw CLIError("--\(name) needs a value", usage: true) }
                found.append(args[i + 1])
                i += 2
                continue
            }
            if args[i].hasPrefix("--\(name)=") { found.append(String(args[i].dropFirst(name.count + 3))) } else { kept.append(args[i]) }
            i += 1
        }
        args = kept
        return found
    }
}
