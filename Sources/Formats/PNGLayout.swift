/// What a PNG's IHDR chunk says about its pixels, and the conversion of its inflated scanlines to an 8-bit
/// `Image`.
///
/// Every layout of the PNG specification is read: gray at 1, 2, 4, 8 and 16 bits, gray+alpha, RGB and RGBA at
/// 8 and 16 bits, palette images at 1, 2, 4 and 8 bits, each interlaced (Adam7) or not. Samples become 8-bit as
/// PIL reads them: 16-bit samples keep their high byte, 1-, 2- and 4-bit gray is scaled to 0...255, and palette
/// images expand to RGB, or RGBA when a tRNS chunk gives palette entries an alpha. (PIL keeps 16-bit gray as
/// 16-bit and its `convert('RGB')` clips values above 255 to white; the high byte is kept here instead, so such
/// an image is not turned white.)
struct PNGLayout {
    let width: Int
    let height: Int
    let colorType: UInt8
    let depth: Int
    let interlaced: Bool

    /// One sub-image stored in the data stream: the whole image, or one of Adam7's seven passes (pixels
    /// x0 + i·dx, y0 + j·dy).
    struct Pass {
        let x0, y0, dx, dy, width, height: Int
    }

    init(width: Int, height: Int, colorType: UInt8, depth: UInt8, interlace: UInt8) throws {
        func fail(_ what: String) -> FormatError { FormatError("PNG: \(what)") }
        let allowedDepths: [UInt8]
        switch colorType {
        case 0: allowedDepths = [1, 2, 4, 8, 16]
        case 3: allowedDepths = [1, 2, 4, 8]
        case 2, 4, 6: allowedDepths = [8, 16]
        default: throw fail("invalid color type \(colorType)")
        }
        guard allowedDepths.contains(depth) else { throw fail("bit depth \(depth) is invalid for color type \(colorType)") }
        guard interlace <= 1 else { throw fail("unknown interlace method \(interlace)") }
        self.width = width
        self.height = height
        self.colorType = colorType
        self.depth = Int(depth)
        interlaced = interlace == 1
    }

    var isPalette: Bool { colorType == 3 }
    var samplesPerPixel: Int { [0: 1, 2: 3, 3: 1, 4: 2, 6: 4][colorType]! }
    var bitsPerPixel: Int { samplesPerPixel * depth }
    /// Filters pair each byte with the same byte of the pixel on the left: this many bytes back (1 when
    /// pixels are smaller than a byte).
    var filterDistance: Int { max(1, bitsPerPixel / 8) }
    func rowBytes(width w: Int) -> Int { (w * bitsPerPixel + 7) / 8 }

    var passes: [Pass] {
        guard interlaced else { return [Pass(x0: 0, y0: 0, dx: 1, dy: 1, width: width, height: height)] }
        let adam7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        return adam7.map { x0, y0, dx, dy in
            Pass(x0: x0, y0: y0, dx: dx, dy: dy, width: max(0, (width - x0 + dx - 1) / dx),
                 height: max(0, (height - y0 + dy - 1) / dy))
        }
    }

    /// Bytes of the inflated data stream: each non-empty pass's rows, each with a leading filter-type byte.
    var inflatedByteCount: Int {
        passes.reduce(0) { total, p in p.width == 0 || p.height == 0 ? total : total + p.height * (1 + rowBytes(width: p.width)) }
    }

    /// Channels of the decoded image.
    func outputChannels(paletteAlpha: [UInt8]) -> Int {
        isPalette ? (paletteAlpha.isEmpty ? 3 : 4) : samplesPerPixel
    }

    /// The image from the inflated stream (exactly `inflatedByteCount` bytes). `palette` holds RGB triples;
    /// indices beyond it give black, as in PIL, and entries beyond `paletteAlpha` are opaque.
    func image(fromInflated raw: [UInt8], palette: [UInt8], paletteAlpha: [UInt8]) throws -> Image {
        let channels = outputChannels(paletteAlpha: paletteAlpha)
        if !interlaced && depth == 8 && !isPalette {
            let pixels = try PNGFilter.unfilterRows(raw, start: 0, rows: height, rowBytes: rowBytes(width: width),
                                                    distance: filterDistance)
            return Image(width: width, height: height, channels: channels, pixels: pixels)
        }
        // Palette entries as `channels` bytes each, all 256 indices (missing entries black and opaque).
        var lookup = [UInt8](repeating: 0, count: 256 * channels)
        if isPalette {
            for i in 0..<256 {
                if 3 * i + 2 < palette.count { for c in 0..<3 { lookup[i * channels + c] = palette[3 * i + c] } }
                if channels == 4 { lookup[i * 4 + 3] = i < paletteAlpha.count ? paletteAlpha[i] : 255 }
            }
        }
        let grayScale = [1: 255, 2: 85, 4: 17, 8: 1, 16: 1][depth]!
        let spp = samplesPerPixel, mask = (1 << min(depth, 8)) - 1
        var pixels = [UInt8](repeating: 0, count: width * height * channels)
        var start = 0
        for pass in passes where pass.width > 0 && pass.height > 0 {
            let stride = rowBytes(width: pass.width)
            let rows = try PNGFilter.unfilterRows(raw, start: start, rows: pass.height, rowBytes: stride, distance: filterDistance)
            start += pass.height * (1 + stride)
            for j in 0..<pass.height {
                let row = j * stride
                for i in 0..<pass.width {
                    let out = ((pass.y0 + j * pass.dy) * width + pass.x0 + i * pass.dx) * channels
                    if depth < 8 {
                        let bit = i * depth
                        let value = (Int(rows[row + (bit >> 3)]) >> (8 - depth - (bit & 7))) & mask
                        if isPalette {
                            for c in 0..<channels { pixels[out + c] = lookup[value * channels + c] }
                        } else {
                            pixels[out] = UInt8(value * grayScale)
                        }
                    } else if isPalette {
                        let value = Int(rows[row + i])
                        for c in 0..<channels { pixels[out + c] = lookup[value * channels + c] }
                    } else {
                        // 8-bit samples, or the high (first, big-endian) byte of 16-bit ones.
                        let bytesPerSample = depth / 8
                        for c in 0..<spp { pixels[out + c] = rows[row + (i * spp + c) * bytesPerSample] }
                    }
                }
            }
        }
        return Image(width: width, height: height, channels: channels, pixels: pixels)
    }
}
