/// The text NVRTC compiles for one `.cu` file: each `#include "header.cuh"` replaced by the header (once per
/// header), with `#line` directives so that compiler messages name the real file and line.
public enum TranslationUnit {
    /// - Parameters:
    ///   - path: the .cu file's path (includes resolve against its folder).
    ///   - read: the text of a file by path, nil when it is not one of the kernel files.
    ///   - display: how a path appears in `#line` directives.
    public static func assemble(path: String, read: (String) -> String?, display: (String) -> String) throws -> String {
        var included = Set<String>()
        func expand(_ path: String) throws -> String {
            guard let text = read(path) else { throw DeclarationError(file: path, line: 1, message: "cannot read \(path)") }
            var out: [String] = []
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = Scanner.trim(line)
                guard trimmed.hasPrefix("#include \""), trimmed.hasSuffix("\""), trimmed.count > 11 else {
                    out.append(String(line))
                    continue
                }
                let name = String(trimmed.dropFirst(10).dropLast())
                let header = normalize(directory(of: path) + name)
                guard read(header) != nil else {
                    throw DeclarationError(file: path, line: i + 1, message: "\(name) is not a kernel header of this target (\(header))")
                }
                if included.insert(header).inserted {
                    out.append("#line 1 \"\(display(header))\"")
                    out.append(try expand(header))
                }
                out.append("#line \(i + 2) \"\(display(path))\"")
            }
            return out.joined(separator: "\n")
        }
        return try expand(path)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[...slash])
    }

    /// `a/b/../c` to `a/c`.
    public static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for p in path.split(separator: "/", omittingEmptySubsequences: false) {
            if p == ".." && !parts.isEmpty && parts.last != ".." && parts.last != "" { parts.removeLast() }
            else if p != "." { parts.append(p) }
        }
        return parts.joined(separator: "/")
    }
}
