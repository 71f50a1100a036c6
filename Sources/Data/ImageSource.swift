#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Formats

/// Labelled image files as ImageNet users keep them, listed once and decoded one at a time on demand: a source
/// of 1.28M images holds its names and labels (about 100 bytes an image) and never the images.
///
/// - `folder`: read as the official dataset tool reads a folder. The images are the files under it, at any depth,
///   whose extension is an image format's (`hasImageExtension`; names starting with "." are hidden files, and
///   macOS's `._` companions, and are skipped), in sorted order of their '/'-separated relative
///   paths (by UTF-8 bytes, as Python sorts strings). Their labels come from, in this order: a labels file the
///   caller names; `dataset.json` in the folder; the top-level folder names when there are two or more (the
///   ImageNet train layout `n01440764/*.JPEG`), numbered in sorted order among the folders holding images, or by
///   a class map; otherwise the set is unlabeled.
/// - `zip`: the official dataset format, an archive of stored image entries (in sorted name order) with
///   `dataset.json` holding `{"labels": [[name, label], ...]}` (or `null`, or no `dataset.json`: unlabeled).
///
/// Labels files and class maps: `LabelFiles` lists the forms read. Labels may be class indices or class names;
/// names are numbered by the class map when there is one, else in sorted order.
public struct ImageSource: Sendable {
    /// The folder or archive.
    public let path: String
    /// Image names relative to `path`, in the source's order.
    public let names: [String]
    /// The class of each image, or nil for an unlabeled set.
    public let labels: [Int]?
    /// Classes: the class map's size, the number of class names, or the largest label + 1; nil when unlabeled.
    public let classCount: Int?
    /// A name per class (folder or class-map names, or the names used as labels); nil when the labels are bare
    /// indices or absent.
    public let classNames: [String]?
    private let archive: ZIPArchive?
    /// For an archive, each image's index among its entries.
    private let entryIndices: [Int]

    public var count: Int { names.count }

    /// Why one image could not be had: its bytes could not be read, or they are not an image this reader decodes
    /// (empty, truncated, corrupt, another format). The message names the file.
    public struct ImageError: Error, CustomStringConvertible, Sendable {
        public enum Kind: Sendable { case unreadable, undecodable }
        public let kind: Kind
        public let message: String
        public var description: String { message }
    }

    /// Extensions (lowercased) of the files taken as images: JPEG and PNG, which are decoded, and other image
    /// formats, listed so that they are reported as undecodable rather than silently left out.
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "jpe", "jfif", "png", "bmp", "gif", "webp", "tif",
                                                      "tiff", "ppm", "pgm", "pbm", "pnm"]

    public static func hasImageExtension(_ name: String) -> Bool {
        guard let dot = name.lastIndex(of: "."), !name[dot...].contains("/") else { return false }
        return imageExtensions.contains(name[name.index(after: dot)...].lowercased())
    }

    /// A folder (`folder`) or an archive (`zip`), whichever `path` is.
    public static func open(_ path: String, labels labelsPath: String? = nil, classMap: String? = nil) throws -> ImageSource {
        if FileSystem.isDirectory(path) { return try folder(path, labels: labelsPath, classMap: classMap) }
        guard FileSystem.isRegularFile(path) else { throw DataError(file: path, "no such file or folder") }
        guard labelsPath == nil, classMap == nil else {
            throw DataError(file: path, "a ZIP data set carries its labels in its dataset.json; a labels file or class map applies to folders")
        }
        return try zip(path)
    }

    public static func folder(_ path: String, labels labelsPath: String? = nil, classMap: String? = nil) throws -> ImageSource {
        let names = try imageFiles(under: path)
        guard !names.isEmpty else {
            throw DataError(file: path, "no image files (.jpg, .jpeg, .png, ...) in the folder or its subfolders")
        }
        let map = try classMap.map { try LabelFiles.classMap(path: $0) }
        let metadata = path + "/dataset.json"
        if let file = labelsPath ?? (FileSystem.isRegularFile(metadata) ? metadata : nil) {
            return try labelled(path, names, try LabelFiles.labels(path: file), source: file, classMap: map, archive: nil,
                                entryIndices: [])
        }
        let folders = names.map { name in name.firstIndex(of: "/").map { String(name[..<$0]) } ?? "" }
        let classes = Array(Set(folders)).sorted(by: utf8Order)
        guard classes.count >= 2 else {
            guard map == nil else { throw DataError(file: classMap!, "a class map needs class folders, and \(path) has none") }
            return ImageSource(path: path, names: names, labels: nil, classCount: nil, classNames: nil, archive: nil, entryIndices: [])
        }
        if let loose = names.first(where: { !$0.contains("/") }) {
            throw DataError(file: path, "the image \(quoted(loose)) lies beside the class folders; move it into its class's folder")
        }
        let (index, classNames) = try numbering(classes, map: map, mapPath: classMap, what: "folder")
        return ImageSource(path: path, names: names, labels: folders.map { index[$0]! }, classCount: classNames.count,
                           classNames: classNames, archive: nil, entryIndices: [])
    }

    public static func zip(_ path: String) throws -> ImageSource {
        let archive: ZIPArchive
        do { archive = try ZIPArchive(path: path) } catch let e as FormatError { throw DataError(sanitizing: e.message) }
        let images = archive.entries.indices.filter { hasImageExtension(archive.entries[$0].name) }
            .sorted { utf8Order(archive.entries[$0].name, archive.entries[$1].name) }
        guard !images.isEmpty else { throw DataError(file: path, "the archive holds no image entries (.png, .jpg, ...)") }
        if let packed = images.first(where: { archive.entries[$0].method != 0 }) {
            throw DataError(file: path, "the entry \(quoted(archive.entries[packed].name)) is compressed (method "
                            + "\(archive.entries[packed].method)); the dataset format stores entries uncompressed (zip -0)")
        }
        let names = images.map { archive.entries[$0].name }
        guard archive.entry(named: "dataset.json") != nil else {
            return ImageSource(path: path, names: names, labels: nil, classCount: nil, classNames: nil, archive: archive,
                               entryIndices: images)
        }
        let source = "\(path): dataset.json"
        let bytes: [UInt8]
        do { bytes = try archive.read(named: "dataset.json", limit: 1 << 30) } catch let e as FormatError {
            throw DataError(sanitizing: e.message)
        }
        return try labelled(path, names, LabelFiles.labels(bytes, source: source), source: source, classMap: nil,
                            archive: archive, entryIndices: images)
    }

    /// The archive's record of image `i` (name, size, CRC-32); nil for a folder.
    public func archiveEntry(_ i: Int) -> ZIPEntry? {
        archive.map { $0.entries[entryIndices[i]] }
    }

    /// The file's bytes, read now.
    public func bytes(_ i: Int) throws -> [UInt8] {
        do {
            if let archive { return try archive.read(archive.entries[entryIndices[i]]) }
            return try AtomicFile.read(path: path + "/" + names[i])
        } catch let e as FormatError {
            throw ImageError(kind: .unreadable, message: e.message)
        }
    }

    /// Image `i` decoded and made RGB as PIL's `Image.open(f).convert('RGB')` makes it. A JPEG without the
    /// TurboJPEG library throws a `DataError` (a problem of the machine, not of the image).
    public func image(_ i: Int) throws -> Image {
        let data = try bytes(i)
        guard !JPEG.hasSignature(data) || JPEG.isAvailable else { throw DataError(JPEG.missingLibraryMessage) }
        do {
            return try Image.decode(data).rgb()
        } catch let e as FormatError {
            throw ImageError(kind: .undecodable, message: location(i) + ": " + e.message)
        }
    }

    /// Where image `i` is, for messages: the file's path, or the archive and the entry.
    public func location(_ i: Int) -> String {
        archive == nil ? path + "/" + names[i] : "\(path): entry \(quoted(names[i]))"
    }

    // MARK: - Building

    /// A source whose labels come from a labels file: every image must have one, every label must name an image.
    private static func labelled(_ path: String, _ names: [String], _ labelled: [String: LabelFiles.Label]?, source: String,
                                 classMap: [String: Int]?, archive: ZIPArchive?, entryIndices: [Int]) throws -> ImageSource {
        guard let labelled else {
            return ImageSource(path: path, names: names, labels: nil, classCount: nil, classNames: nil, archive: archive,
                               entryIndices: entryIndices)
        }
        let missing = names.filter { labelled[$0] == nil }
        if let first = missing.first {
            throw DataError(file: source, "\(missing.count) of the \(names.count) images have no label, the first \(quoted(first))")
        }
        if labelled.count > names.count {
            let present = Set(names)
            let extra = labelled.keys.filter { !present.contains($0) }.sorted(by: utf8Order)
            throw DataError(file: source, "\(extra.count) labelled names are not images of \(path), the first \(quoted(extra[0]))")
        }
        let values = names.map { labelled[$0]! }
        var indices: [Int] = [], classNames: [String]? = nil
        if values.allSatisfy({ if case .index = $0 { return true } else { return false } }) {
            indices = values.map { if case .index(let i) = $0 { return i } else { return 0 } }
            if let classMap { classNames = ImageSource.classNames(of: classMap) }
        } else {
            let used = values.compactMap { if case .name(let n) = $0 { return n } else { return nil } }
            guard used.count == values.count else {
                throw DataError(file: source, "labels mix class indices and class names; use one or the other")
            }
            let (index, allNames) = try numbering(Array(Set(used)).sorted(by: utf8Order), map: classMap, mapPath: nil, what: "class")
            indices = used.map { index[$0]! }
            classNames = allNames
        }
        let classCount = max(classNames?.count ?? 0, (indices.max() ?? 0) + 1)
        if let classNames, let bad = indices.firstIndex(where: { $0 >= classNames.count }) {
            throw DataError(file: source, "the label \(indices[bad]) of \(quoted(names[bad])) is beyond the \(classNames.count) classes of the class map")
        }
        return ImageSource(path: path, names: names, labels: indices, classCount: classCount, classNames: classNames,
                           archive: archive, entryIndices: entryIndices)
    }

    /// Class indices for `used` names (sorted): their positions, or the class map's numbers; and a name per class.
    private static func numbering(_ used: [String], map: [String: Int]?, mapPath: String?, what: String) throws
        -> (index: [String: Int], names: [String]) {
        guard let map else { return (Dictionary(uniqueKeysWithValues: used.enumerated().map { ($1, $0) }), used) }
        if let unknown = used.first(where: { map[$0] == nil }) {
            throw DataError(file: mapPath ?? "class map", "the \(what) \(quoted(unknown)) is not in the class map")
        }
        return (map, ImageSource.classNames(of: map))
    }

    /// Index -> name of a class map (indices it skips are named by their number).
    private static func classNames(of map: [String: Int]) -> [String] {
        var names = (0...(map.values.max() ?? 0)).map(String.init)
        for (name, index) in map { names[index] = name }
        return names
    }

    /// Relative paths of the image files under `root`, sorted. Symbolic links are followed (as Python's
    /// os.scandir does), each directory once, so a link cycle ends. The kind of each entry comes from the
    /// directory listing itself where the file system gives it, so an ImageNet-sized tree costs no stat per file.
    private static func imageFiles(under root: String) throws -> [String] {
        guard FileSystem.isDirectory(root) else { throw DataError(file: root, "not a folder") }
        var found: [String] = []
        var visited = Set<[UInt64]>()
        func walk(_ relative: String) throws {
            let dir = relative.isEmpty ? root : root + "/" + relative
            var st = stat()
            guard stat(dir, &st) == 0, visited.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted else { return }
            guard let handle = opendir(dir) else {
                throw DataError(file: dir, "cannot open directory: \(String(cString: strerror(errno)))")
            }
            var subfolders: [String] = []
            while let entry = readdir(handle) {
                let name = withUnsafePointer(to: &entry.pointee.d_name) {
                    String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
                }
                guard !name.hasPrefix(".") else { continue }
                let child = relative.isEmpty ? name : relative + "/" + name
                var kind = Int32(entry.pointee.d_type)
                if kind != Int32(DT_REG) && kind != Int32(DT_DIR) {
                    kind = FileSystem.isDirectory(root + "/" + child) ? Int32(DT_DIR)
                         : FileSystem.isRegularFile(root + "/" + child) ? Int32(DT_REG) : kind
                }
                if kind == Int32(DT_REG) && hasImageExtension(name) { found.append(child) }
                if kind == Int32(DT_DIR) { subfolders.append(child) }
            }
            closedir(handle)
            for folder in subfolders { try walk(folder) }
        }
        try walk("")
        return found.sorted(by: utf8Order)
    }
}

/// Python's order of strings: by code points, which is the order of their UTF-8 bytes.
func utf8Order(_ a: String, _ b: String) -> Bool {
    a.utf8.lexicographicallyPrecedes(b.utf8)
}
