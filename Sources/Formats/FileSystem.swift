#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The few questions about paths and folders that the loaders and the commands ask, on top of the C library
/// (the one place that calls stat, opendir and mkdir). Failures are one-line `FormatError`s naming the path.
public enum FileSystem {
    /// The file type bits of `path` (following links), nil when nothing is there.
    static func type(_ path: String) -> mode_t? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return st.st_mode & S_IFMT
    }

    public static func exists(_ path: String) -> Bool { type(path) != nil }
    public static func isDirectory(_ path: String) -> Bool { type(path) == S_IFDIR }
    public static func isRegularFile(_ path: String) -> Bool { type(path) == S_IFREG }

    /// The size in bytes of the file at `path` (following links), nil when nothing is there.
    public static func size(_ path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int(st.st_size)
    }

    /// Entry names in `path`, sorted by UTF-8 bytes, without "." / ".." and other names starting with ".".
    public static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else {
            throw FormatError("\(path): cannot open directory: \(errnoString())")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Creates and removes a file in the folder `path`, so that a long job finds out at once that it could not
    /// write its results there (permissions, a read-only or special file system); an error names the folder.
    public static func checkWritable(directory path: String) throws {
        let probe = path + "/.tvm-write-check-\(getpid())"
        let fd = open(probe, O_CREAT | O_EXCL | O_WRONLY, 0o600)
        guard fd >= 0 else { throw FormatError("cannot write in \(path): \(errnoString())") }
        close(fd)
        unlink(probe)
    }

    /// Removes the file at `path`; an error names it.
    public static func removeFile(_ path: String) throws {
        guard unlink(path) == 0 else { throw FormatError("cannot remove \(path): \(errnoString())") }
    }

    /// Creates the folder `path` and any missing folders above it; folders already there are fine, anything
    /// else in the way is an error naming it.
    public static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        let parts = path.split(separator: "/")
        for (i, part) in parts.enumerated() {
            current += "/" + part
            if mkdir(current, 0o755) != 0 {
                let err = errno
                // A file in the way above the last folder makes the next mkdir fail (ENOTDIR), naming the path asked for.
                guard err == EEXIST, isDirectory(current) || i < parts.count - 1 else {
                    throw FormatError("cannot create directory \(current): \(String(cString: strerror(err)))")
                }
            }
        }
    }
}
