/// The `torch.save` format since PyTorch 1.6 (what the official training loop writes for `training-state-*.pt`):
/// a ZIP of stored entries under one folder, `<name>/data.pkl` (the object, protocol 2, its storages as
/// persistent ids `('storage', <type>, key, location, numel)`), `<name>/data/<key>` (each storage's raw bytes),
/// `<name>/byteorder` (`little`; absent in old files, which are little-endian), and version records.
///
/// Only stored entries are read (`ZIPArchive`), so no entry expands beyond the bytes the file holds: a
/// compressed "ZIP bomb" is refused by name before anything is inflated.
enum TorchArchive {
    static func read(path: String, limits: PickleLimits) throws -> TorchPickle {
        let archive = try ZIPArchive(path: path)
        let size = try ReadableFile(path: path).size
        func fail(_ what: String) -> FormatError { FormatError("\(path): torch.save archive: \(what)") }
        // torch.save puts every entry under one folder named after the file it first wrote.
        let pickles = archive.entries.filter { e in
            let parts = e.name.split(separator: "/", omittingEmptySubsequences: false)
            return parts.count == 2 && parts[1] == "data.pkl"
        }
        guard pickles.count == 1, let pickle = pickles.first else {
            throw fail(pickles.isEmpty ? "no <name>/data.pkl entry" : "\(pickles.count) <name>/data.pkl entries")
        }
        let folder = String(pickle.name.dropLast("data.pkl".count))
        if let order = archive.entry(named: folder + "byteorder") {
            let text = try archive.read(order, limit: 16)
            guard text == Array("little".utf8) else {
                throw fail("byte order \(quoted(String(decoding: text, as: UTF8.self))) is not supported (only little-endian)")
            }
        }
        let root = try PickleReader.read(try archive.read(pickle), source: "\(path): \(pickle.name)", limits: limits)
        let storages = StorageFiles(archive: archive, folder: folder, path: path)
        return TorchPickle(source: path, root: root, inputSize: size, limits: limits, persistentStorage: storages.storage)
    }

    /// Reads each storage's entry once, at its first use.
    final class StorageFiles {
        let archive: ZIPArchive
        let folder: String
        let path: String
        var read: [String: TorchStorage] = [:]

        init(archive: ZIPArchive, folder: String, path: String) {
            self.archive = archive
            self.folder = folder
            self.path = path
        }

        func storage(_ id: PickleValue) throws -> TorchStorage {
            let ref = try StorageReference(id, source: path)
            if let s = read[ref.key] {
                guard s.dtype == ref.dtype, s.count == ref.count else {
                    throw FormatError("\(path): storage \(quoted(ref.key)) is used as two different storages")
                }
                return s
            }
            let name = folder + "data/" + ref.key
            guard let entry = archive.entry(named: name) else { throw FormatError("\(path): no entry \(quoted(name)) for a storage") }
            let size = ref.count * ref.dtype.byteSize
            guard entry.size == size else {
                throw FormatError("\(path): the entry \(quoted(name)) holds \(entry.size) bytes, but its storage of \(ref.count) "
                                  + "\(ref.dtype) elements needs \(size)")
            }
            let storage = TorchStorage(dtype: ref.dtype, count: ref.count, bytes: try archive.read(entry, limit: size)[...])
            read[ref.key] = storage
            return storage
        }
    }
}

extension ZIPArchive {
    /// Whether the file at `path` starts like a ZIP archive (a local file header), so callers can tell `.npz` and
    /// `torch.save` archives from pickles by content rather than by name.
    public static func isArchive(path: String) throws -> Bool {
        let file = try ReadableFile(path: path)
        return try file.bytes(at: 0, count: min(4, file.size)) == [0x50, 0x4B, 0x03, 0x04]
    }
}
