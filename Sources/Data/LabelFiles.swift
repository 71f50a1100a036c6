import Formats

/// The label and class files people keep beside image folders.
///
/// Text files are read line by line (blank lines and lines starting with `#` skipped); a line's last field is
/// what follows its last comma, or else its last run of spaces or tabs, so file and class names may hold spaces.
enum LabelFiles {
    /// A label as written in a labels file: a class index, or a class name to be numbered.
    enum Label: Equatable {
        case index(Int)
        case name(String)
    }

    /// Class name -> index, from JSON `{"n01440764": 0, ...}`, Keras's `imagenet_class_index.json`
    /// (`{"0": ["n01440764", "tench"], ...}`), text lines `name,index` or `name index` (a first line without an
    /// index is a header), or one class per line numbered from 0 in line order, the name being the line's first
    /// word (`LOC_synset_mapping.txt`: `n01440764 tench, Tinca tinca`). Indices must be distinct.
    static func classMap(path: String) throws -> [String: Int] {
        let bytes = try read(path)
        var pairs: [(String, Int)] = []
        if let json = try parseJSON(bytes, path: path) {
            guard let members = json.object, !members.isEmpty else {
                throw DataError(file: path, "a JSON class map must be a non-empty object")
            }
            for (key, value) in members {
                if let index = value.int {
                    pairs.append((key, index))
                } else if let name = value.array?.first?.string, let index = Int(key) {
                    pairs.append((name, index))
                } else {
                    throw DataError(file: path, "class \(quoted(key)): expected a class index, or [name, description] under an index")
                }
            }
        } else {
            let lines = textLines(bytes)
            let indexed = lines.enumerated().filter { i, line in !(i == 0 && Int(lastField(line.text)) == nil) }
            if !indexed.isEmpty, indexed.allSatisfy({ Int(lastField($0.1.text)) != nil }) {
                for (_, line) in indexed { pairs.append((leadingFields(line.text), Int(lastField(line.text))!)) }
            } else {
                for (i, line) in lines.enumerated() {
                    pairs.append((String(line.text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "," })[0]), i))
                }
            }
        }
        guard !pairs.isEmpty else { throw DataError(file: path, "the class map names no classes") }
        var map: [String: Int] = [:], owner: [Int: String] = [:]
        for (name, index) in pairs {
            guard (0..<(1 << 24)).contains(index) else { throw DataError(file: path, "class \(quoted(name)) has index \(index), outside 0...\(1 << 24 - 1)") }
            guard map.updateValue(index, forKey: name) == nil else { throw DataError(file: path, "class \(quoted(name)) appears twice") }
            if let other = owner.updateValue(name, forKey: index) {
                throw DataError(file: path, "classes \(quoted(other)) and \(quoted(name)) have the same index \(index)")
            }
        }
        return map
    }

    /// File name -> label, from JSON `{"labels": [[name, label], ...]}` (the official `dataset.json`; `"labels":
    /// null` gives nil, an unlabeled set) or `{"name": label}`, or text lines `name,label` / `name label`, where a
    /// first line whose first field is not an image file name is a header. Labels are class indices or names.
    static func labels(path: String) throws -> [String: Label]? {
        try labels(read(path), source: path)
    }

    /// `labels(path:)` of a file held in memory; `source` names it in errors.
    static func labels(_ bytes: [UInt8], source path: String) throws -> [String: Label]? {
        var pairs: [(String, Label)] = []
        if let json = try parseJSON(bytes, path: path) {
            let list: [(String, JSONValue)]
            if let official = json["labels"] {
                if official.isNull { return nil }
                guard let rows = official.array else { throw DataError(file: path, "\"labels\" must be a list of [name, label] pairs or null") }
                list = try rows.map { row in
                    guard let pair = row.array, pair.count == 2, let name = pair[0].string else {
                        throw DataError(file: path, "\"labels\" holds \(row.serialized().prefix(80)), not a [name, label] pair")
                    }
                    return (name, pair[1])
                }
            } else if let members = json.object {
                list = members
            } else {
                throw DataError(file: path, "expected {\"labels\": [[name, label], ...]} or {name: label, ...}")
            }
            for (name, value) in list {
                if let index = value.int {
                    pairs.append((name, .index(index)))
                } else if let className = value.string {
                    pairs.append((name, .name(className)))
                } else {
                    throw DataError(file: path, "the label of \(quoted(name)) is \(value.serialized().prefix(40)), not a class index or name")
                }
            }
        } else {
            for (i, line) in textLines(bytes).enumerated() {
                let name = leadingFields(line.text), label = lastField(line.text)
                if i == 0 && !ImageSource.hasImageExtension(name) { continue }
                guard !name.isEmpty, !label.isEmpty else {
                    throw DataError(file: path, "line \(line.number) is not \"name,label\" or \"name label\"")
                }
                pairs.append((name, Int(label).map(Label.index) ?? .name(label)))
            }
        }
        var labels: [String: Label] = [:]
        for (name, label) in pairs {
            if case .index(let i) = label, !(0..<(1 << 24)).contains(i) {
                throw DataError(file: path, "the label of \(quoted(name)) is \(i), outside 0...\(1 << 24 - 1)")
            }
            guard labels.updateValue(label, forKey: name) == nil else { throw DataError(file: path, "\(quoted(name)) is labelled twice") }
        }
        guard !labels.isEmpty else { throw DataError(file: path, "holds no labels") }
        return labels
    }

    private static func read(_ path: String) throws -> [UInt8] {
        do { return try AtomicFile.read(path: path) } catch let e as FormatError { throw DataError(sanitizing: e.message) }
    }

    /// The parsed JSON when the file is JSON (its first non-blank byte is `{`), nil for a text file.
    private static func parseJSON(_ bytes: [UInt8], path: String) throws -> JSONValue? {
        guard bytes.first(where: { ![0x20, 0x09, 0x0A, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) }) == UInt8(ascii: "{") else { return nil }
        do { return try JSONValue.parse(bytes) } catch { throw DataError(file: path, "invalid JSON: \(error)") }
    }

    private static func textLines(_ bytes: [UInt8]) -> [(number: Int, text: String)] {
        String(decoding: bytes, as: UTF8.self).split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated()
            .map { (number: $0 + 1, text: $1.trimmingWhitespace()) }
            .filter { !$0.1.isEmpty && !$0.1.hasPrefix("#") }
    }

    private static func separator(_ line: String) -> String.Index? {
        line.lastIndex(of: ",") ?? line.lastIndex(where: { $0 == " " || $0 == "\t" })
    }

    static func lastField(_ line: String) -> String {
        guard let s = separator(line) else { return "" }
        return String(line[line.index(after: s)...]).trimmingWhitespace()
    }

    static func leadingFields(_ line: String) -> String {
        guard let s = separator(line) else { return line }
        return String(line[..<s]).trimmingWhitespace()
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs, carriage returns and a byte-order mark.
    func trimmingWhitespace() -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\u{FEFF}" }
        guard let start = firstIndex(where: { !blank($0) }), let end = lastIndex(where: { !blank($0) }) else { return "" }
        return String(self[start...end])
    }
}
