/// An 8-bit raster image: `channels` interleaved samples per pixel (1 gray, 2 gray+alpha, 3 RGB,
/// 4 RGBA), rows top to bottom.
public struct Image: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// Decoding refuses images above this many pixels (1 GB of RGBA) so a 30-byte header cannot make
    /// the decoder allocate terabytes.
    public static let maxPixels = 1 << 28

    /// The image as a PNG file. Throws when the fields are inconsistent (pixel count, channel count,
    /// empty or oversized image), so a bad image can never produce a corrupt file.
    public func pngBytes() throws -> [UInt8] {
        guard (1...4).contains(channels) else { throw FormatError("PNG: \(channels) channels (expected 1 to 4)") }
        guard width >= 1, height >= 1, width <= Int(Int32.max), height <= Int(Int32.max) else {
            throw FormatError("PNG: invalid size \(width)x\(height)")
        }
        let (rowBytes, o1) = width.multipliedReportingOverflow(by: channels)
        let (total, o2) = rowBytes.multipliedReportingOverflow(by: height)
        guard !o1, !o2, total == pixels.count else {
            throw FormatError("PNG: \(pixels.count) pixel bytes do not match \(width)x\(height)x\(channels)")
        }
        let colorType: UInt8 = [0, 4, 2, 6][channels - 1]
        var ihdr: [UInt8] = []
        PNGChunks.appendBE32(&ihdr, UInt32(width))
        PNGChunks.appendBE32(&ihdr, UInt32(height))
        ihdr += [8, colorType, 0, 0, 0]

        let filtered = PNGFilter.filterRows(pixels, width: width, height: height, channels: channels)
        let compressed = try Zlib.deflate(filtered, format: .zlib)

        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        out.reserveCapacity(compressed.count + 128)
        PNGChunks.append(&out, type: "IHDR", data: ihdr[...])
        // IDAT split in 1 MB pieces: any size up to 2^31-1 is legal, but some tools stream chunk-wise.
        var offset = 0
        repeat {
            let end = min(offset + (1 << 20), compressed.count)
            PNGChunks.append(&out, type: "IDAT", data: compressed[offset..<end])
            offset = end
        } while offset < compressed.count
        PNGChunks.append(&out, type: "IEND", data: [][...])
        return out
    }

    /// Writes the image as a PNG file atomically.
    public func writePNG(path: String) throws {
        let bytes: [UInt8]
        do {
            bytes = try pngBytes()
        } catch let e as FormatError {
            throw FormatError("\(path): \(e.message)")
        }
        try AtomicFile.write(path: path, bytes: bytes)
    }

    public static func readPNG(path: String) throws -> Image {
        do {
            return try decodePNG(AtomicFile.read(path: path))
        } catch let e as FormatError where e.message.hasPrefix("PNG") {
            throw FormatError("\(path): \(e.message)")
        }
    }

    /// Decodes a PNG of any standard layout to 8 bits per sample (`PNGLayout` says how), verifying every
    /// chunk CRC and (through zlib) the Adler-32 of the image data.
    public static func decodePNG(_ bytes: [UInt8]) throws -> Image {
        func fail(_ what: String) -> FormatError { FormatError("PNG: \(what)") }
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        guard bytes.count >= 8, Array(bytes[0..<8]) == signature else { throw fail("missing PNG signature") }

        var pos = 8
        var header: PNGLayout? = nil
        var palette: [UInt8] = [], paletteAlpha: [UInt8] = []
        var idat: [UInt8] = []
        var sawIEND = false
        var lastWasIDAT = false
        var idatClosed = false
        while !sawIEND {
            guard bytes.count - pos >= 12 else { throw fail("file ends before the IEND chunk") }
            let length = Int(PNGChunks.readBE32(bytes, pos))
            guard length <= Int(Int32.max) else { throw fail("chunk length \(length) is too large") }
            guard bytes.count - pos - 12 >= length else { throw fail("chunk at byte \(pos) runs past the end of the file") }
            let typeBytes = Array(bytes[(pos + 4)..<(pos + 8)])
            guard typeBytes.allSatisfy({ ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) }) else {
                throw fail("invalid chunk type at byte \(pos)")
            }
            let type = String(decoding: typeBytes, as: UTF8.self)
            let dataRange = (pos + 8)..<(pos + 8 + length)
            let storedCRC = PNGChunks.readBE32(bytes, pos + 8 + length)
            let actualCRC = Checksum.crc32(bytes[(pos + 4)..<(pos + 8 + length)])
            guard storedCRC == actualCRC else {
                throw fail("CRC mismatch in \(type) chunk (stored 0x\(String(storedCRC, radix: 16)), computed 0x\(String(actualCRC, radix: 16)))")
            }
            pos += 12 + length
            if header == nil && type != "IHDR" { throw fail("first chunk is \(type), expected IHDR") }
            if lastWasIDAT && type != "IDAT" { idatClosed = true }
            lastWasIDAT = false
            switch type {
            case "IHDR":
                guard header == nil else { throw fail("duplicate IHDR chunk") }
                guard length == 13 else { throw fail("IHDR chunk has length \(length), expected 13") }
                let d = Array(bytes[dataRange])
                let width = Int(PNGChunks.readBE32(d, 0)), height = Int(PNGChunks.readBE32(d, 4))
                let depth = d[8], colorType = d[9]
                guard width >= 1, height >= 1, width <= Int(Int32.max), height <= Int(Int32.max) else {
                    throw fail("invalid image size \(width)x\(height)")
                }
                guard width * height <= maxPixels else {
                    throw fail("image of \(width)x\(height) pixels is over the \(maxPixels)-pixel limit")
                }
                guard d[10] == 0 else { throw fail("unknown compression method \(d[10])") }
                guard d[11] == 0 else { throw fail("unknown filter method \(d[11])") }
                header = try PNGLayout(width: width, height: height, colorType: colorType, depth: depth, interlace: d[12])
            case "PLTE":
                // Optional (a suggested palette) for truecolor images, required before IDAT for palette images.
                guard palette.isEmpty else { throw fail("duplicate PLTE chunk") }
                guard length % 3 == 0, (3...768).contains(length) else { throw fail("PLTE chunk has length \(length)") }
                palette = Array(bytes[dataRange])
            case "tRNS":
                // Palette alpha; the color key of gray and truecolor images is ignored, as PIL's convert('RGB') does.
                if header?.isPalette == true { paletteAlpha = Array(bytes[dataRange].prefix(256)) }
            case "IDAT":
                guard !idatClosed else { throw fail("IDAT chunks are not consecutive") }
                idat.append(contentsOf: bytes[dataRange])
                lastWasIDAT = true
            case "IEND":
                sawIEND = true
            default:
                // Lowercase first letter = ancillary, safe to ignore.
                let critical = typeBytes[0] >= 65 && typeBytes[0] <= 90
                if critical { throw fail("unsupported critical chunk \(type)") }
            }
        }
        guard let layout = header else { throw fail("missing IHDR chunk") }
        guard !idat.isEmpty else { throw fail("no IDAT chunk") }
        guard !layout.isPalette || !palette.isEmpty else { throw fail("palette image without a PLTE chunk") }
        let expected = layout.inflatedByteCount
        let decoded: Zlib.Inflated
        do {
            decoded = try Zlib.inflate(idat, format: .zlib, maxOutput: expected)
        } catch let e as FormatError {
            throw fail("image data: \(e.message)")
        }
        guard decoded.end != nil else {
            throw fail("image data exceeds the expected \(expected) bytes for \(layout.width)x\(layout.height)")
        }
        let raw = decoded.output
        guard raw.count == expected else {
            throw fail("image data has \(raw.count) bytes, expected \(expected) for \(layout.width)x\(layout.height)")
        }
        return try layout.image(fromInflated: raw, palette: palette, paletteAlpha: paletteAlpha)
    }
}

enum PNGChunks {
    static func appendBE32(_ out: inout [UInt8], _ v: UInt32) {
        out += [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
    }

    static func readBE32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    static func append(_ out: inout [UInt8], type: String, data: ArraySlice<UInt8>) {
        appendBE32(&out, UInt32(data.count))
        let start = out.count
        out += Array(type.utf8)
        out += data
        appendBE32(&out, Checksum.crc32(out[start...]))
    }
}

enum PNGFilter {
    @inline(__always)
    static func paeth(_ a: UInt8, _ b: UInt8, _ c: UInt8) -> UInt8 {
        let p = Int(a) + Int(b) - Int(c)
        let pa = abs(p - Int(a)), pb = abs(p - Int(b)), pc = abs(p - Int(c))
        if pa <= pb && pa <= pc { return a }
        return pb <= pc ? b : c
    }

    /// Filters each row with whichever of the five filters gives the smallest sum of absolute values
    /// (bytes read as signed), the heuristic the PNG specification recommends.
    static func filterRows(_ pixels: [UInt8], width: Int, height: Int, channels bpp: Int) -> [UInt8] {
        let rowBytes = width * bpp
        var out = [UInt8](repeating: 0, count: height * (rowBytes + 1))
        var candidate = [UInt8](repeating: 0, count: rowBytes)
        var best = [UInt8](repeating: 0, count: rowBytes)
        pixels.withUnsafeBufferPointer { px in
            for y in 0..<height {
                let row = y * rowBytes
                let up = row - rowBytes
                var bestType = 0
                var bestScore = Int.max
                for type in 0..<5 {
                    var score = 0
                    for x in 0..<rowBytes {
                        let cur = px[row + x]
                        let a: UInt8 = x >= bpp ? px[row + x - bpp] : 0
                        let b: UInt8 = y > 0 ? px[up + x] : 0
                        let c: UInt8 = (x >= bpp && y > 0) ? px[up + x - bpp] : 0
                        let v: UInt8
                        switch type {
                        case 0: v = cur
                        case 1: v = cur &- a
                        case 2: v = cur &- b
                        case 3: v = cur &- UInt8((Int(a) + Int(b)) / 2)
                        default: v = cur &- paeth(a, b, c)
                        }
                        candidate[x] = v
                        score += v < 128 ? Int(v) : 256 - Int(v)
                    }
                    if score < bestScore {
                        bestScore = score
                        bestType = type
                        swap(&candidate, &best)
                    }
                }
                let o = y * (rowBytes + 1)
                out[o] = UInt8(bestType)
                for x in 0..<rowBytes { out[o + 1 + x] = best[x] }
            }
        }
        return out
    }

    /// Reverses the filters of `rows` scanlines of `rowBytes` bytes each (every one preceded by its filter-type
    /// byte) stored in `raw` from `start`; `distance` is `PNGLayout.filterDistance`.
    static func unfilterRows(_ raw: [UInt8], start: Int, rows: Int, rowBytes: Int, distance bpp: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: rows * rowBytes)
        try out.withUnsafeMutableBufferPointer { px in
            for y in 0..<rows {
                let src = start + y * (rowBytes + 1) + 1
                let row = y * rowBytes
                let up = row - rowBytes
                let type = raw[src - 1]
                for x in 0..<rowBytes {
                    let a: UInt8 = x >= bpp ? px[row + x - bpp] : 0
                    let b: UInt8 = y > 0 ? px[up + x] : 0
                    let c: UInt8 = (x >= bpp && y > 0) ? px[up + x - bpp] : 0
                    let f = raw[src + x]
                    switch type {
                    case 0: px[row + x] = f
                    case 1: px[row + x] = f &+ a
                    case 2: px[row + x] = f &+ b
                    case 3: px[row + x] = f &+ UInt8((Int(a) + Int(b)) / 2)
                    case 4: px[row + x] = f &+ paeth(a, b, c)
                    default: throw FormatError("PNG: invalid filter type \(type) on row \(y)")
                    }
                }
            }
        }
        return out
    }
}
