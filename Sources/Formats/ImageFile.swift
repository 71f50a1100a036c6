/// Reading photographs the way Python users open them: `Image.open(f).convert('RGB')`.
extension Image {
    /// Decodes a JPEG or PNG file held in memory, recognised by its first bytes rather than its name (ImageNet
    /// has PNG files named `.JPEG`). Anything else, an empty file included, is refused with a message saying
    /// what it looks like.
    public static func decode(_ bytes: [UInt8]) throws -> Image {
        if JPEG.hasSignature(bytes) { return try JPEG.decode(bytes) }
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) { return try decodePNG(bytes) }
        guard !bytes.isEmpty else { throw FormatError("empty file (0 bytes)") }
        throw FormatError("not a JPEG or PNG image (\(formatGuess(bytes)))")
    }

    /// Reads and decodes a JPEG or PNG file; every error names the file.
    public static func read(path: String) throws -> Image {
        let bytes = try AtomicFile.read(path: path)
        do {
            return try decode(bytes)
        } catch let e as FormatError {
            throw FormatError("\(path): \(e.message)")
        }
    }

    /// The image as 3-channel RGB, as PIL's `convert('RGB')` makes it: gray is replicated into the three
    /// channels and alpha is dropped (not composited onto a background).
    public func rgb() -> Image {
        if channels == 3 { return self }
        let n = width * height
        let rgbPixels = [UInt8](unsafeUninitializedCapacity: n * 3) { out, count in
            pixels.withUnsafeBufferPointer { src in
                for p in 0..<n {
                    if channels <= 2 {
                        let v = src[p * channels]
                        out[3 * p] = v
                        out[3 * p + 1] = v
                        out[3 * p + 2] = v
                    } else {
                        for c in 0..<3 { out[3 * p + c] = src[p * channels + c] }
                    }
                }
            }
            count = n * 3
        }
        return Image(width: width, height: height, channels: 3, pixels: rgbPixels)
    }

    /// A short description of what an unreadable file starts like, for error messages.
    static func formatGuess(_ bytes: [UInt8]) -> String {
        let known: [(String, [UInt8])] = [("a GIF image", Array("GIF8".utf8)), ("a BMP image", Array("BM".utf8)),
                                          ("a TIFF image", [0x49, 0x49, 0x2A, 0x00]), ("a TIFF image", [0x4D, 0x4D, 0x00, 0x2A]),
                                          ("text starting with '<', an HTML or XML page", Array("<".utf8))]
        if bytes.count >= 12, bytes.starts(with: Array("RIFF".utf8)), Array(bytes[8..<12]) == Array("WEBP".utf8) {
            return "it is a WebP image"
        }
        if let (name, _) = known.first(where: { bytes.starts(with: $0.1) }) { return "it is \(name)" }
        let head = bytes.prefix(8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
        return "it starts with bytes \(head)"
    }
}
