#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whole-file reads and crash-safe writes shared by every reader and writer in this module.
///
/// Writers never open the final path: they fill `path.tmp-<pid>`, fsync it, rename it over `path` and
/// fsync the directory, so after a crash or power loss `path` holds either the old complete file or the
/// new complete file, never a truncated one (checkpoints are overwritten in place during training).
public enum AtomicFile {
    /// Writes `bytes` to `path` atomically.
    public static func write(path: String, bytes: [UInt8]) throws {
        try write(path: path, chunks: [bytes])
    }

    /// Writes the concatenation of `chunks` to `path` atomically; taking chunks lets large writers
    /// (safetensors) stream their tensors without first concatenating them into one buffer.
    public static func write(path: String, chunks: [[UInt8]]) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw FormatError("\(path): cannot create temporary file \(tmp): \(errnoString())")
        }
        var ok = false
        defer {
            if !ok { unlink(tmp) }
        }
        do {
            for chunk in chunks {
                try chunk.withUnsafeBytes { raw in
                    try writeAll(fd: fd, raw, path: tmp)
                }
            }
            guard fsync(fd) == 0 else {
                throw FormatError("\(path): fsync of \(tmp) failed: \(errnoString())")
            }
        } catch {
            close(fd)
            throw error
        }
        guard close(fd) == 0 else {
            throw FormatError("\(path): closing \(tmp) failed: \(errnoString())")
        }
        guard rename(tmp, path) == 0 else {
            throw FormatError("\(path): cannot rename \(tmp) into place: \(errnoString())")
        }
        ok = true
        // The rename itself lives in the directory; without this fsync a power loss can undo it.
        let dirFD = open(directoryName(of: path), O_RDONLY | O_CLOEXEC)
        if dirFD >= 0 {
            let rc = fsync(dirFD)
            let err = errno
            close(dirFD)
            // Some file systems refuse fsync on directories (EINVAL); the data itself is already safe.
            if rc != 0 && err != EINVAL && err != EBADF {
                throw FormatError("\(path): fsync of the containing directory failed: \(String(cString: strerror(err)))")
            }
        }
    }

    /// Reads a whole regular file with one allocation; readers parse from this buffer so parsing cost
    /// is bounded by memory bandwidth instead of by many small reads.
    public static func read(path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FormatError("\(path): cannot open: \(errnoString())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FormatError("\(path): cannot stat: \(errnoString())") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw FormatError("\(path): not a regular file")
        }
        let size = Int(st.st_size)
        guard size > 0 else { return [] }
        return try [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            initialized = 0
            guard let base = buffer.baseAddress else { return }
            while initialized < size {
                let n = sysRead(fd, base + initialized, size - initialized)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FormatError("\(path): read failed: \(errnoString())")
                }
                // The file shrank while we read it; return what exists rather than garbage.
                if n == 0 { break }
                initialized += n
            }
        }
    }

    /// Reads the byte range `offset..<offset+count` of an open file straight into `buffer`, so large
    /// tensors go from the page cache to their final array in one copy.
    static func read(fd: Int32, path: String, at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard var p = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, p, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw FormatError("\(path): read failed: \(errnoString())")
            }
            if n == 0 { throw FormatError("\(path): file ended early (it changed while being read)") }
            done += n
            p += n
        }
    }

    private static func writeAll(fd: Int32, _ raw: UnsafeRawBufferPointer, path: String) throws {
        guard var p = raw.baseAddress else { return }
        var left = raw.count
        while left > 0 {
            let n = sysWrite(fd, p, left)
            if n < 0 {
                if errno == EINTR { continue }
                throw FormatError("\(path): write failed: \(errnoString())")
            }
            p += n
            left -= n
        }
    }

    static func directoryName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = path[..<slash]
        return dir.isEmpty ? "/" : String(dir)
    }
}

// `read`/`write` are shadowed by the static methods above inside `AtomicFile`.
@inline(__always)
private func sysRead(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ n: Int) -> Int {
    read(fd, buf, n)
}

@inline(__always)
private func sysWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ n: Int) -> Int {
    write(fd, buf, n)
}

func errnoString() -> String {
    String(cString: strerror(errno))
}

/// An open regular file for positioned reads; closed when released.
final class ReadableFile {
    let fd: Int32
    let path: String
    let size: Int

    init(path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FormatError("\(path): cannot open: \(errnoString())") }
        self.path = path
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let message = errnoString()
            close(fd)
            throw FormatError("\(path): cannot stat: \(message)")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw FormatError("\(path): not a regular file")
        }
        size = Int(st.st_size)
    }

    deinit { close(fd) }

    func bytes(at offset: Int, count: Int) throws -> [UInt8] {
        guard count > 0 else { return [] }
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try AtomicFile.read(fd: fd, path: path, at: offset, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }
}
