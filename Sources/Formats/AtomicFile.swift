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
    /// For the kill tests only (the CLI sets it from `TVM_TEST_WRITE_PAUSE_MS`): every write sleeps this many
    /// seconds with half of its chunks in the temporary file, and again between the fsync and the rename, so
    /// that a SIGKILL can be aimed inside a write (and `ZIPWriter` between an entry's header and its data). Zero
    /// in normal use.
    public nonisolated(unsafe) static var testPause: Double = 0

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
            throw FormatError("\(path): cannot create temporary file \(tmp): \(reason(errno)); the file was not replaced")
        }
        var ok = false
        defer {
            if !ok { unlink(tmp) }
        }
        do {
            for (i, chunk) in chunks.enumerated() {
                if i == chunks.count / 2 { pauseForTests() }
                try chunk.withUnsafeBytes { raw in
                    try writeAll(fd: fd, raw, path: path)
                }
            }
            // Delayed allocation (ext4, XFS, NFS) can report a full disk only here or at close.
            guard fsync(fd) == 0 else {
                throw FormatError("\(path): fsync of \(tmp) failed: \(reason(errno)); the file was not replaced")
            }
        } catch {
            close(fd)
            throw error
        }
        guard close(fd) == 0 else {
            throw FormatError("\(path): closing \(tmp) failed: \(reason(errno)); the file was not replaced")
        }
        pauseForTests()
        guard rename(tmp, path) == 0 else {
            throw FormatError("\(path): cannot rename \(tmp) into place: \(errnoString())")
        }
        ok = true
        try syncDirectory(containing: path)
    }

    /// Flushes the directory entry of `path` after a rename into place: the rename lives in the directory, and
    /// without this fsync a power loss can undo it.
    static func syncDirectory(containing path: String) throws {
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
                throw FormatError("\(path): write failed: \(reason(errno)); the file was not replaced")
            }
            p += n
            left -= n
        }
    }

    /// strerror, plus what it usually means for a writer whose output no longer fits.
    static func reason(_ err: Int32) -> String {
        let text = String(cString: strerror(err))
        switch err {
        case ENOSPC: return text + " (the disk is full)"
        case EDQUOT: return text + " (the disk quota is used up)"
        case EFBIG: return text + " (the file-size limit, ulimit -f, was reached)"
        default: return text
        }
    }

    /// Sleeps `testPause` (the kill tests' window).
    static func pauseForTests() {
        guard testPause > 0 else { return }
        var left = timespec(tv_sec: Int(testPause), tv_nsec: Int((testPause - testPause.rounded(.down)) * 1e9))
        var rest = timespec()
        while nanosleep(&left, &rest) != 0 && errno == EINTR { left = rest }
    }

    /// Removes the temporary files (`NAME.tmp-PID`) that writers killed mid-write left in `directory`: those
    /// whose process no longer exists. A file of a live process (a concurrent writer) is left alone.
    /// Returns the names removed.
    @discardableResult
    public static func removeStaleTemporaries(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var removed: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let dash = name.lastIndex(of: "-"), name[..<dash].hasSuffix(".tmp"), name[..<dash].count > 4,
                  let pid = pid_t(name[name.index(after: dash)...]), pid > 0 else { continue }
            // kill(pid, 0) probes without signalling; only ESRCH proves the writer is gone.
            guard kill(pid, 0) != 0 && errno == ESRCH else { continue }
            if unlink(directory + "/" + name) == 0 { removed.append(name) }
        }
        return removed.sorted()
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
