/// Point clouds for the 2-D toy experiments: CSV text or a NumPy array of shape [n, d] (or [n]).
public enum PointFile {
    /// Reads points as a flat row-major array of `dim`-dimensional points. NPY is recognised by the
    /// `.npy` extension or by its magic bytes; anything else is parsed as CSV.
    public static func read(path: String) throws -> (points: [Float], dim: Int) {
        let bytes = try AtomicFile.read(path: path)
        let isNPY = path.lowercased().hasSuffix(".npy")
            || (bytes.count >= 6 && Array(bytes[0..<6]) == NPYArray.magic)
        return isNPY ? try parseNPY(bytes, source: path) : try parseCSV(bytes, source: path)
    }

    public static func parseNPY(_ bytes: [UInt8], source: String) throws -> (points: [Float], dim: Int) {
        let array = try NPYArray.parse(bytes, source: source)
        let n: Int, dim: Int
        switch array.shape.count {
        case 1: (n, dim) = (array.shape[0], 1)
        case 2: (n, dim) = (array.shape[0], array.shape[1])
        default:
            throw FormatError("\(source): expected a 1-D or 2-D array of points, got shape \(shapeString(array.shape))")
        }
        guard n > 0, dim > 0 else { throw FormatError("\(source): array of shape \(shapeString(array.shape)) has no points") }
        let points = array.floats
        if let bad = points.firstIndex(where: { !$0.isFinite }) {
            throw FormatError("\(source): point \(bad / dim) has a non-finite value (or one beyond Float range)")
        }
        return (points, dim)
    }

    /// CSV: one point per line, values separated by a comma and/or whitespace. A first line with no
    /// number in it is a header and skipped; blank lines are ignored. Works on bytes rather than
    /// `String` lines because Swift treats "\r\n" as one character and would not split on it.
    public static func parseCSV(_ bytes: [UInt8], source: String) throws -> (points: [Float], dim: Int) {
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw FormatError("\(source): not UTF-8 text (and not a .npy file)")
        }
        var points: [Float] = []
        var dim = 0
        var sawContent = false
        var lineNumber = 0
        var lineStart = 0
        while lineStart < bytes.count {
            lineNumber += 1
            var lineEnd = lineStart
            while lineEnd < bytes.count && bytes[lineEnd] != 0x0A { lineEnd += 1 }
            let line = bytes[lineStart..<lineEnd]
            lineStart = lineEnd + 1
            let fields = try splitFields(line, source: source, line: lineNumber)
            if fields.isEmpty { continue }
            let isFirst = !sawContent
            sawContent = true
            let values = fields.map { Float(String(decoding: $0, as: UTF8.self)) }
            if isFirst && values.allSatisfy({ $0 == nil }) { continue }
            var row: [Float] = []
            row.reserveCapacity(fields.count)
            for (field, value) in zip(fields, values) {
                let text = String(decoding: field, as: UTF8.self)
                guard let v = value else {
                    throw FormatError("\(source): line \(lineNumber): \(quoted(text, limit: 40)) is not a number")
                }
                guard v.isFinite else {
                    throw FormatError("\(source): line \(lineNumber): non-finite value \(quoted(text, limit: 40))")
                }
                row.append(v)
            }
            if dim == 0 {
                dim = row.count
            } else if row.count != dim {
                throw FormatError("\(source): line \(lineNumber) has \(row.count) values, earlier lines have \(dim)")
            }
            points.append(contentsOf: row)
        }
        guard dim > 0 else { throw FormatError("\(source): no points in file") }
        return (points, dim)
    }

    /// Writes one point per line, values separated by commas, each printed in its shortest round-trip form.
    public static func writeCSV(path: String, points: [Float], dim: Int) throws {
        guard dim > 0, points.count % dim == 0 else {
            throw FormatError("\(path): \(points.count) values cannot be split into points of dimension \(dim)")
        }
        var text = ""
        text.reserveCapacity(points.count * 12)
        for start in stride(from: 0, to: points.count, by: dim) {
            for j in 0..<dim {
                if j > 0 { text += "," }
                text += points[start + j].description
            }
            text += "\n"
        }
        try AtomicFile.write(path: path, bytes: Array(text.utf8))
    }

    /// Splits on runs of whitespace that contain at most one comma; two commas in a row mean an empty
    /// field, which is refused rather than silently dropped (it would shift every later column).
    static func splitFields(_ line: ArraySlice<UInt8>, source: String, line number: Int) throws -> [ArraySlice<UInt8>] {
        var fields: [ArraySlice<UInt8>] = []
        var start: Int? = nil
        var commas = 0
        func emptyField() -> FormatError {
            FormatError("\(source): line \(number): empty field between separators")
        }
        for index in line.indices {
            let c = line[index]
            if c == UInt8(ascii: ",") || c == 0x20 || c == 0x09 || c == 0x0D {
                if let s = start {
                    fields.append(line[s..<index])
                    start = nil
                    commas = 0
                }
                if c == UInt8(ascii: ",") {
                    commas += 1
                    if commas > 1 || fields.isEmpty { throw emptyField() }
                }
            } else if start == nil {
                start = index
            }
        }
        if let s = start {
            fields.append(line[s...])
        } else if commas > 0 {
            throw emptyField()
        }
        return fields
    }
}
