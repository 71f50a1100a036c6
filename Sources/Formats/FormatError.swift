/// The one error type every reader and writer in this module throws.
///
/// Messages are a single line (callers put them in logs and CLI output) and name the file, tensor or
/// field involved, so a user can find the bad byte without a debugger.
public struct FormatError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String

    public init(_ message: String) {
        // A name read from a hostile file could carry newlines and forge log lines; keep it one line.
        var clean = ""
        clean.reserveCapacity(message.utf8.count)
        for scalar in message.unicodeScalars {
            switch scalar {
            case "\n": clean += "\\n"
            case "\r": clean += "\\r"
            default: clean.unicodeScalars.append(scalar)
            }
        }
        self.message = clean
    }

    public var description: String { message }
}

/// Quotes a name taken from a file for an error message: escapes control characters and shortens very
/// long names so a malicious 100 MB key cannot produce a 100 MB message. Public for the loaders in other
/// modules that name what they found in a file.
public func quoted(_ s: String, limit: Int = 120) -> String {
    var out = "\""
    var n = 0
    for scalar in s.unicodeScalars {
        if n >= limit { out += "..."; break }
        n += 1
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// Element count of a shape, refusing negative dimensions and products that overflow `Int`.
func elementCount(of shape: [Int]) -> Int? {
    var count = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = count.multipliedReportingOverflow(by: d)
        guard !overflow else { return nil }
        count = p
    }
    return count
}

func shapeString(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}
