#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes lines to a file (from its start, or appended), flushed per line so that a killed run keeps its log
/// up to its last complete line. Logs grow a line at a time, so they are not written atomically as a whole.
public final class LineWriter {
    let file: UnsafeMutablePointer<FILE>
    public let path: String

    public init(path: String, append: Bool = false) throws {
        guard let f = fopen(path, append ? "a" : "w") else { throw FormatError("cannot write \(path): \(errnoString())") }
        file = f
        self.path = path
    }

    public func write(_ line: String) throws {
        if fputs(line + "\n", file) < 0 || fflush(file) != 0 { throw FormatError("cannot write \(path): \(errnoString())") }
    }

    deinit { fclose(file) }
}
