#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One member of a ZIP archive, as its central directory describes it.
public struct ZIPEntry: Sendable, Equatable {
    public let name: String
    /// 0: stored; anything else is compressed (see `ZIPArchive.read`).
    public let method: UInt16
    public let crc32: UInt32
    public let compressedSize: Int
    public let size: Int
    /// Where the entry's local header starts.
    public let headerOffset: Int
}

/// Reads ZIP archives of stored entries: the official dataset format (PNGs or NPYs with `dataset.json`),
/// `torch.save` files and numpy's `.npz`. ZIP64 is read, since an ImageNet-sized set has more than 65535
/// entries and more than 4 GiB. Entries are read on demand with positioned reads, so a 100 GB archive costs its
/// central directory in memory and nothing more, and several threads may read entries at once.
///
/// The archive comes from a stranger: every size and offset is checked against the file before it is used,
/// and each error is one line naming the archive and, where there is one, the entry.
public final class ZIPArchive: @unchecked Sendable {
    public let path: String
    public let entries: [ZIPEntry]
    private let file: ReadableFile
    private let index: [String: Int]

    /// Opens `path` and reads its central directory.
    public init(path: String) throws {
        self.path = path
        file = try ReadableFile(path: path)
        entries = try ZIPArchive.centralDirectory(file)
        var index = [String: Int](minimumCapacity: entries.count)
        for (i, e) in entries.enumerated() {
            guard index.updateValue(i, forKey: e.name) == nil else {
                throw FormatError("\(path): the entry \(quoted(e.name)) appears twice")
            }
        }
        self.index = index
    }

    public func entry(named name: String) -> ZIPEntry? { index[name].map { entries[$0] } }

    /// The bytes of `entry`, checked against its CRC-32. `limit` bounds the size a caller accepts (the
    /// archive's own claim is checked against the file already).
    public func read(_ entry: ZIPEntry, limit: Int = Int.max) throws -> [UInt8] {
        let name = quoted(entry.name)
        guard entry.method == 0 else {
            throw FormatError("\(path): the entry \(name) is compressed (method \(entry.method)); only stored entries are read")
        }
        guard entry.size <= limit else {
            throw FormatError("\(path): the entry \(name) holds \(entry.size) bytes, over the limit of \(limit)")
        }
        let header = try file.bytes(at: entry.headerOffset, count: 30, entry: name, archive: path)
        guard le32(header, 0) == ZIPArchive.localSignature else {
            throw FormatError("\(path): the entry \(name) has no local header where the directory says")
        }
        let start = entry.headerOffset + 30 + Int(le16(header, 26)) + Int(le16(header, 28))
        guard start + entry.size <= file.size else {
            throw FormatError("\(path): the entry \(name) runs past the end of the file")
        }
        let bytes = try file.bytes(at: start, count: entry.size)
        guard Checksum.crc32(bytes) == entry.crc32 else {
            throw FormatError("\(path): the entry \(name) is corrupt (CRC-32 mismatch)")
        }
        return bytes
    }

    /// The bytes of the entry called `name`.
    public func read(named name: String, limit: Int = Int.max) throws -> [UInt8] {
        guard let e = entry(named: name) else { throw FormatError("\(path): no entry \(quoted(name))") }
        return try read(e, limit: limit)
    }

    static let localSignature: UInt32 = 0x0403_4B50
    static let centralSignature: UInt32 = 0x0201_4B50
    static let endSignature: UInt32 = 0x0605_4B50
    static let end64Signature: UInt32 = 0x0606_4B50
    static let locator64Signature: UInt32 = 0x0706_4B50

    private static func centralDirectory(_ file: ReadableFile) throws -> [ZIPEntry] {
        let path = file.path
        // The end record is 22 bytes plus a comment of at most 65535: search that tail backwards.
        let tailCount = min(file.size, 22 + 65535)
        let tail = try file.bytes(at: file.size - tailCount, count: tailCount)
        var at = tailCount - 22
        while at >= 0 && le32(tail, at) != endSignature { at -= 1 }
        guard at >= 0 else { throw FormatError("\(path): not a ZIP archive (no end-of-central-directory record)") }
        let endOffset = file.size - tailCount + at
        guard le16(tail, at + 4) == 0, le16(tail, at + 6) == 0 else {
            throw FormatError("\(path): a multi-volume ZIP archive is not supported")
        }
        var count = Int(le16(tail, at + 10)), size = Int(le32(tail, at + 12)), offset = Int(le32(tail, at + 16))
        if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
            // ZIP64: a locator just before the end record points at the 64-bit end record.
            guard endOffset >= 20 else { throw FormatError("\(path): truncated ZIP64 archive") }
            let locator = try file.bytes(at: endOffset - 20, count: 20)
            guard le32(locator, 0) == locator64Signature else {
                throw FormatError("\(path): the ZIP64 locator is missing")
            }
            let end64 = try checkedInt(le64(locator, 8), path, "ZIP64 end record offset")
            guard end64 <= endOffset - 20 - 56 else { throw FormatError("\(path): the ZIP64 end record is out of range") }
            let record = try file.bytes(at: end64, count: 56)
            guard le32(record, 0) == end64Signature else { throw FormatError("\(path): the ZIP64 end record is missing") }
            count = try checkedInt(le64(record, 32), path, "entry count")
            size = try checkedInt(le64(record, 40), path, "central directory size")
            offset = try checkedInt(le64(record, 48), path, "central directory offset")
        }
        guard offset <= endOffset, size <= endOffset - offset else {
            throw FormatError("\(path): the central directory lies outside the file")
        }
        // Every directory record is at least 46 bytes, so the claimed count is bounded by the bytes present.
        guard count <= size / 46 else {
            throw FormatError("\(path): the central directory claims \(count) entries in \(size) bytes")
        }
        let dir = try file.bytes(at: offset, count: size)
        var entries: [ZIPEntry] = []
        entries.reserveCapacity(count)
        var p = 0
        for i in 0..<count {
            guard p + 46 <= dir.count, le32(dir, p) == centralSignature else {
                throw FormatError("\(path): central directory record \(i) is malformed")
            }
            let flags = le16(dir, p + 8), method = le16(dir, p + 10)
            let nameLength = Int(le16(dir, p + 28)), extraLength = Int(le16(dir, p + 30)), commentLength = Int(le16(dir, p + 32))
            guard p + 46 + nameLength + extraLength + commentLength <= dir.count else {
                throw FormatError("\(path): central directory record \(i) runs past the directory")
            }
            let name = String(decoding: dir[(p + 46)..<(p + 46 + nameLength)], as: UTF8.self)
            guard flags & 1 == 0 else { throw FormatError("\(path): the entry \(quoted(name)) is encrypted") }
            var compressed = UInt64(le32(dir, p + 20)), plain = UInt64(le32(dir, p + 24)), header = UInt64(le32(dir, p + 42))
            if compressed == 0xFFFF_FFFF || plain == 0xFFFF_FFFF || header == 0xFFFF_FFFF {
                // The ZIP64 extra field holds, in this order, exactly the fields saturated above.
                guard let extra = zip64Extra(dir, from: p + 46 + nameLength, count: extraLength) else {
                    throw FormatError("\(path): the entry \(quoted(name)) lacks its ZIP64 sizes")
                }
                var q = extra.lowerBound
                func next() throws -> UInt64 {
                    guard q + 8 <= extra.upperBound else {
                        throw FormatError("\(path): the entry \(quoted(name)) has a short ZIP64 field")
                    }
                    defer { q += 8 }
                    return le64(dir, q)
                }
                if plain == 0xFFFF_FFFF { plain = try next() }
                if compressed == 0xFFFF_FFFF { compressed = try next() }
                if header == 0xFFFF_FFFF { header = try next() }
            }
            let entry = ZIPEntry(name: name, method: method, crc32: le32(dir, p + 16),
                                 compressedSize: try checkedInt(compressed, path, "size of \(quoted(name))"),
                                 size: try checkedInt(plain, path, "size of \(quoted(name))"),
                                 headerOffset: try checkedInt(header, path, "offset of \(quoted(name))"))
            guard entry.headerOffset <= offset, entry.compressedSize <= offset - entry.headerOffset,
                  method != 0 || entry.compressedSize == entry.size else {
                throw FormatError("\(path): the entry \(quoted(name)) claims data outside the archive")
            }
            entries.append(entry)
            p += 46 + nameLength + extraLength + commentLength
        }
        return entries
    }

    /// The data range of the ZIP64 extra field (id 1) among the extra fields at `from`.
    private static func zip64Extra(_ b: [UInt8], from: Int, count: Int) -> Range<Int>? {
        var q = from
        while q + 4 <= from + count {
            let id = le16(b, q), length = Int(le16(b, q + 2))
            guard q + 4 + length <= from + count else { return nil }
            if id == 1 { return (q + 4)..<(q + 4 + length) }
            q += 4 + length
        }
        return nil
    }

    private static func checkedInt(_ v: UInt64, _ path: String, _ what: String) throws -> Int {
        guard v <= UInt64(Int.max) else { throw FormatError("\(path): the \(what) is out of range") }
        return Int(v)
    }
}

/// Writes a ZIP archive of stored entries, entry by entry, without holding them in memory: what the official
/// dataset tool writes (and Python's `zipfile` and numpy read), ZIP64 where sizes or counts need it.
///
/// The archive grows in `path.partial` and is renamed to `path` by `finish()`, so `path` is either absent or
/// complete. A run that was killed leaves `path.partial`; a writer opened with `resume: true` reads back the
/// entries that are whole, cuts the file after the last of them and continues, so a long job picks up where
/// it stopped (`entries` says which names are done).
public final class ZIPWriter {
    public let path: String
    /// The entries written so far, in order (after a resume: those recovered, then the new ones).
    public private(set) var entries: [ZIPEntry] = []
    private var fd: Int32
    private var end: Int
    private var names: Set<String> = []

    public var partialPath: String { path + ".partial" }

    public init(path: String, resume: Bool = false) throws {
        self.path = path
        let partial = path + ".partial"
        let flags = resume ? O_RDWR | O_CREAT | O_CLOEXEC : O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC
        fd = open(partial, flags, 0o644)
        guard fd >= 0 else { throw FormatError("\(partial): cannot create: \(AtomicFile.reason(errno))") }
        end = 0
        if resume {
            do { try recover() } catch { close(fd); throw error }
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Appends one stored entry. Names must be unique.
    public func add(name: String, bytes: [UInt8]) throws {
        guard fd >= 0 else { throw FormatError("\(path): the archive is already finished") }
        guard names.insert(name).inserted else { throw FormatError("\(path): the entry \(quoted(name)) is added twice") }
        let nameBytes = Array(name.utf8)
        guard nameBytes.count <= 0xFFFF else { throw FormatError("\(path): the entry name \(quoted(name)) is too long") }
        let crc = Checksum.crc32(bytes)
        let big = bytes.count >= 0xFFFF_FFFF
        var h: [UInt8] = []
        h.reserveCapacity(30 + nameBytes.count + 20)
        put32(&h, ZIPArchive.localSignature)
        put16(&h, big ? 45 : 20)        // version needed: 4.5 for ZIP64, else 2.0
        put16(&h, 0x0800)                // names are UTF-8
        put16(&h, 0)                     // stored
        put16(&h, 0); put16(&h, 0x21)    // 1980-01-01 00:00, so that the same input gives the same bytes
        put32(&h, crc)
        put32(&h, big ? 0xFFFF_FFFF : UInt32(bytes.count))
        put32(&h, big ? 0xFFFF_FFFF : UInt32(bytes.count))
        put16(&h, UInt16(nameBytes.count))
        put16(&h, big ? 20 : 0)
        h += nameBytes
        if big { put16(&h, 1); put16(&h, 16); put64(&h, UInt64(bytes.count)); put64(&h, UInt64(bytes.count)) }
        let headerOffset = end
        try append(h)
        // The kill tests' window: an entry whose header is written and whose data is not.
        AtomicFile.pauseForTests()
        try append(bytes)
        entries.append(ZIPEntry(name: name, method: 0, crc32: crc, compressedSize: bytes.count, size: bytes.count,
                                headerOffset: headerOffset))
    }

    /// Writes the central directory, flushes the file to disk and renames it to `path`.
    public func finish() throws {
        guard fd >= 0 else { throw FormatError("\(path): the archive is already finished") }
        let directoryOffset = end
        var d: [UInt8] = []
        for e in entries {
            let nameBytes = Array(e.name.utf8)
            let bigSize = e.size >= 0xFFFF_FFFF, bigOffset = e.headerOffset >= 0xFFFF_FFFF
            var extra: [UInt8] = []
            if bigSize { put64(&extra, UInt64(e.size)); put64(&extra, UInt64(e.size)) }
            if bigOffset { put64(&extra, UInt64(e.headerOffset)) }
            let zip64 = bigSize || bigOffset
            put32(&d, ZIPArchive.centralSignature)
            put16(&d, zip64 ? 45 : 20)   // made by: MS-DOS attributes, version as needed
            put16(&d, zip64 ? 45 : 20)
            put16(&d, 0x0800)
            put16(&d, 0)
            put16(&d, 0); put16(&d, 0x21)
            put32(&d, e.crc32)
            put32(&d, bigSize ? 0xFFFF_FFFF : UInt32(e.size))
            put32(&d, bigSize ? 0xFFFF_FFFF : UInt32(e.size))
            put16(&d, UInt16(nameBytes.count))
            put16(&d, UInt16(extra.isEmpty ? 0 : extra.count + 4))
            put16(&d, 0); put16(&d, 0); put16(&d, 0)   // comment length, disk, internal attributes
            put32(&d, 0)                               // external attributes
            put32(&d, bigOffset ? 0xFFFF_FFFF : UInt32(e.headerOffset))
            d += nameBytes
            if !extra.isEmpty { put16(&d, 1); put16(&d, UInt16(extra.count)); d += extra }
        }
        let count = entries.count, size = d.count
        if count >= 0xFFFF || size >= 0xFFFF_FFFF || directoryOffset >= 0xFFFF_FFFF {
            let end64 = directoryOffset + size
            put32(&d, ZIPArchive.end64Signature)
            put64(&d, 44)                              // size of the rest of this record
            put16(&d, 45); put16(&d, 45)
            put32(&d, 0); put32(&d, 0)
            put64(&d, UInt64(count)); put64(&d, UInt64(count))
            put64(&d, UInt64(size)); put64(&d, UInt64(directoryOffset))
            put32(&d, ZIPArchive.locator64Signature)
            put32(&d, 0); put64(&d, UInt64(end64)); put32(&d, 1)
        }
        put32(&d, ZIPArchive.endSignature)
        put16(&d, 0); put16(&d, 0)
        put16(&d, UInt16(min(count, 0xFFFF))); put16(&d, UInt16(min(count, 0xFFFF)))
        put32(&d, UInt32(min(size, 0xFFFF_FFFF))); put32(&d, UInt32(min(directoryOffset, 0xFFFF_FFFF)))
        put16(&d, 0)
        try append(d)
        guard ftruncate(fd, off_t(end)) == 0, fsync(fd) == 0 else {
            throw FormatError("\(partialPath): flushing failed: \(AtomicFile.reason(errno)); \(path) was not written")
        }
        close(fd)
        fd = -1
        guard rename(partialPath, path) == 0 else {
            throw FormatError("\(path): cannot rename \(partialPath) into place: \(errnoString())")
        }
        try AtomicFile.syncDirectory(containing: path)
    }

    /// Reads the local headers of a partial archive from the start and keeps the entries that are whole; the
    /// last few are checked against their CRC (a kill loses the tail of the file; earlier entries were whole
    /// before the next one began), and the file is cut after the last good one.
    private func recover() throws {
        let partial = partialPath
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FormatError("\(partial): cannot stat: \(errnoString())") }
        let size = Int(st.st_size)
        var found: [(entry: ZIPEntry, data: Int)] = []
        var at = 0
        while at + 30 <= size {
            let h = try pread(at, 30)
            guard le32(h, 0) == ZIPArchive.localSignature, le16(h, 8) == 0 else { break }
            let nameLength = Int(le16(h, 26)), extraLength = Int(le16(h, 28))
            guard at + 30 + nameLength + extraLength <= size else { break }
            let tail = try pread(at + 30, nameLength + extraLength)
            var count = Int(le32(h, 22))
            if count == 0xFFFF_FFFF {
                guard extraLength >= 20, le16(tail, nameLength) == 1 else { break }
                count = Int(truncatingIfNeeded: le64(tail, nameLength + 4))
            }
            let data = at + 30 + nameLength + extraLength
            guard count >= 0, count <= size - data else { break }
            let name = String(decoding: tail[0..<nameLength], as: UTF8.self)
            guard !names.contains(name) else { break }
            names.insert(name)
            found.append((ZIPEntry(name: name, method: 0, crc32: le32(h, 14), compressedSize: count, size: count,
                                   headerOffset: at), data))
            at = data + count
        }
        // Verify the newest entries' data; drop from the first bad one on.
        var keep = found.count
        for i in max(0, found.count - 16)..<found.count {
            let (e, data) = found[i]
            if Checksum.crc32(try pread(data, e.size)) != e.crc32 { keep = i; break }
        }
        for dropped in found[keep...] { names.remove(dropped.entry.name) }
        entries = found[..<keep].map(\.entry)
        end = keep == found.count ? at : found[keep].entry.headerOffset
        guard ftruncate(fd, off_t(end)) == 0 else { throw FormatError("\(partial): cannot truncate: \(errnoString())") }
    }

    private func pread(_ offset: Int, _ count: Int) throws -> [UInt8] {
        guard count > 0 else { return [] }
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try AtomicFile.read(fd: fd, path: partialPath, at: offset, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    /// Writes `bytes` at the end of the archive so far.
    private func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = pwrite(fd, raw.baseAddress! + done, raw.count - done, off_t(end + done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FormatError("\(partialPath): write failed: \(AtomicFile.reason(errno))")
                }
                done += n
            }
        }
        end += bytes.count
    }
}

extension ReadableFile {
    /// `bytes(at:count:)` that names the entry when the file is too short for it.
    fileprivate func bytes(at offset: Int, count: Int, entry: String, archive: String) throws -> [UInt8] {
        guard offset >= 0, count <= size - offset else {
            throw FormatError("\(archive): the entry \(entry) runs past the end of the file")
        }
        return try bytes(at: offset, count: count)
    }
}

@inline(__always) private func le16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
@inline(__always) private func le32(_ b: [UInt8], _ i: Int) -> UInt32 {
    UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
}
@inline(__always) private func le64(_ b: [UInt8], _ i: Int) -> UInt64 { UInt64(le32(b, i)) | UInt64(le32(b, i + 4)) << 32 }
private func put16(_ b: inout [UInt8], _ v: UInt16) { b.append(UInt8(v & 0xFF)); b.append(UInt8(v >> 8)) }
private func put32(_ b: inout [UInt8], _ v: UInt32) { put16(&b, UInt16(v & 0xFFFF)); put16(&b, UInt16(v >> 16)) }
private func put64(_ b: inout [UInt8], _ v: UInt64) { put32(&b, UInt32(v & 0xFFFF_FFFF)); put32(&b, UInt32(v >> 32)) }
