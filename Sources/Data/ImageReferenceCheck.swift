import Formats

/// Parity of image preparation (decoding and the ADM center crop) with reference outputs of PIL.
///
/// A reference folder holds image files and `reference.safetensors`, whose tensors are named after the files:
/// `NAME.pixels` is PIL's `Image.open(NAME).convert('RGB')`, `NAME.crop<size>` the ADM center crop at that size
/// (`Image.centerCropDhariwal`); a tensor named just `NAME.crop` takes its size from the metadata entry `size`.
/// Tensors are [H, W, 3], U8 or any float type holding 0...255. Every tensor of the file is checked; one that
/// names no file or no known operation is an error, so nothing is skipped silently.
public enum ImageReferenceCheck {
    public static let referenceFileName = "reference.safetensors"
    /// The largest accepted difference of any sample, in gray levels.
    public static let tolerance = 1.0

    public enum Operation: Hashable, Sendable {
        case decode
        case centerCrop(size: Int)
    }

    /// One tensor compared: how many samples agree exactly, differ by one gray level, or differ by more.
    public struct Comparison: Equatable, Sendable {
        public let tensor: String
        public let file: String
        public let operation: Operation
        public let exact: Int
        public let offByOne: Int
        public let worse: Int
        /// The largest absolute difference (infinite where the reference holds a non-finite value).
        public let maxDifference: Double

        public var samples: Int { exact + offByOne + worse }
        public var withinTolerance: Bool { maxDifference <= ImageReferenceCheck.tolerance }
    }

    /// Whether `folder` holds a reference file whose tensor names all have the form this check reads and name
    /// files of the folder (so a caller can tell an image-preparation reference from other reference folders).
    public static func isReferenceFolder(_ folder: String) -> Bool {
        guard let file = try? SafetensorsFile.read(path: folder + "/" + referenceFileName), !file.tensors.isEmpty else {
            return false
        }
        return file.tensors.allSatisfy { tensor in
            guard let target = try? parse(name: tensor.name, metadataSize: file.metadata("size"), source: "") else { return false }
            return FileSystem.isRegularFile(folder + "/" + target.file)
        }
    }

    /// Decodes and crops every image the reference file names and compares each result with its tensor, in the
    /// file's order. Throws (one line naming the file) when the reference file is malformed, names an image that
    /// is missing or cannot be decoded, or a tensor's shape differs from the result's.
    public static func run(folder: String) throws -> [Comparison] {
        let path = folder + "/" + referenceFileName
        let reference: SafetensorsFile
        do { reference = try SafetensorsFile.read(path: path) } catch let e as FormatError {
            throw DataError(sanitizing: e.message)
        }
        guard !reference.tensors.isEmpty else { throw DataError(file: path, "holds no tensors") }
        let checks = try reference.tensors.map { t in
            (tensor: t, target: try parse(name: t.name, metadataSize: reference.metadata("size"), source: path))
        }
        // Each image is decoded once, for all of its tensors, and only one is held at a time.
        var order: [String] = []
        var byFile: [String: [Int]] = [:]
        for (i, c) in checks.enumerated() {
            if byFile[c.target.file] == nil { order.append(c.target.file) }
            byFile[c.target.file, default: []].append(i)
        }
        var results = [Comparison?](repeating: nil, count: checks.count)
        for file in order {
            let decoded: Image
            do { decoded = try Image.read(path: folder + "/" + file).rgb() } catch let e as FormatError {
                throw DataError(sanitizing: e.message)
            }
            for i in byFile[file]! {
                let (tensor, target) = checks[i]
                let produced: Image
                switch target.operation {
                case .decode: produced = decoded
                case .centerCrop(let size): produced = decoded.centerCropDhariwal(size: size)
                }
                results[i] = try compare(produced, tensor, target: target, source: path)
            }
        }
        return results.map { $0! }
    }

    static func compare(_ image: Image, _ tensor: NamedArray, target: (file: String, operation: Operation),
                        source: String) throws -> Comparison {
        let resultShape = [image.height, image.width, image.channels]
        guard tensor.shape == resultShape else {
            throw DataError(file: source, "tensor \(quoted(tensor.name)) has shape \(shapeText(tensor.shape)), but this "
                            + "implementation's result for \(quoted(target.file)) has shape \(shapeText(resultShape))")
        }
        let expected = tensor.floats()
        var exact = 0, offByOne = 0, worse = 0
        var largest = 0.0
        for (produced, reference) in zip(image.pixels, expected) {
            let difference = reference.isFinite ? abs(Double(produced) - Double(reference)) : .infinity
            largest = max(largest, difference)
            if difference == 0 { exact += 1 } else if difference <= 1 { offByOne += 1 } else { worse += 1 }
        }
        return Comparison(tensor: tensor.name, file: target.file, operation: target.operation, exact: exact,
                          offByOne: offByOne, worse: worse, maxDifference: largest)
    }

    /// "NAME.pixels", "NAME.crop<size>" or "NAME.crop" (size from the metadata) -> (NAME, operation).
    static func parse(name: String, metadataSize: String?, source: String) throws -> (file: String, operation: Operation) {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else {
            throw DataError(file: source, "tensor \(quoted(name)) is not named NAME.pixels or NAME.crop<size>")
        }
        let file = String(name[..<dot]), suffix = name[name.index(after: dot)...]
        guard !file.hasPrefix("/"), !file.split(separator: "/").contains("..") else {
            throw DataError(file: source, "tensor \(quoted(name)) names a file outside the folder")
        }
        if suffix == "pixels" { return (file, .decode) }
        guard suffix.hasPrefix("crop") else {
            throw DataError(file: source, "tensor \(quoted(name)): unknown operation \(quoted(String(suffix))) "
                            + "(expected pixels or crop<size>)")
        }
        let digits = suffix.dropFirst(4)
        guard let sizeText = digits.isEmpty ? metadataSize : String(digits) else {
            throw DataError(file: source, "tensor \(quoted(name)) gives no crop size and the metadata has no \"size\"")
        }
        guard let size = Int(sizeText), (1...65536).contains(size) else {
            throw DataError(file: source, "tensor \(quoted(name)): crop size \(quoted(sizeText)) is not a whole number in 1...65536")
        }
        return (file, .centerCrop(size: size))
    }

    private static func shapeText(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ", ") + "]" }
}
