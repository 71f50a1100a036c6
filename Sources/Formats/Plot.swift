/// An opaque 8-bit color.
public struct RGB: Equatable, Sendable {
    public var r: UInt8
    public var g: UInt8
    public var b: UInt8

    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) {
        self.r = r
        self.g = g
        self.b = b
    }

    public static let black = RGB(0, 0, 0)
    public static let white = RGB(255, 255, 255)
    public static let gray = RGB(128, 128, 128)
    public static let lightGray = RGB(200, 200, 200)
    public static let red = RGB(214, 39, 40)
    public static let green = RGB(44, 160, 44)
    public static let blue = RGB(31, 119, 180)
    public static let orange = RGB(255, 127, 14)
    public static let purple = RGB(148, 103, 189)
    public static let brown = RGB(140, 86, 75)
    /// Well-separated colors for successive series.
    public static let palette: [RGB] = [.blue, .orange, .green, .red, .purple, .brown,
                                        RGB(227, 119, 194), RGB(23, 190, 207)]
}

/// A small RGB raster for figures. Every drawing call clips to the canvas, so coordinates computed
/// from data (including NaN or huge values) can never write out of bounds.
public struct Canvas: Sendable {
    public let width: Int
    public let height: Int
    /// RGB, row-major, top row first.
    public private(set) var pixels: [UInt8]

    /// Sizes are clamped to 1...32768 per side; a figure larger than that is a bug, not a request.
    public init(width: Int, height: Int, background: RGB = .white) {
        self.width = min(max(width, 1), 32768)
        self.height = min(max(height, 1), 32768)
        pixels = [UInt8](repeating: 0, count: self.width * self.height * 3)
        for i in 0..<(self.width * self.height) {
            pixels[3 * i] = background.r
            pixels[3 * i + 1] = background.g
            pixels[3 * i + 2] = background.b
        }
    }

    public var image: Image {
        Image(width: width, height: height, channels: 3, pixels: pixels)
    }

    public subscript(x: Int, y: Int) -> RGB? {
        guard x >= 0, y >= 0, x < width, y < height else { return nil }
        let i = 3 * (y * width + x)
        return RGB(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// Blends `color` over one pixel with opacity `alpha` (0...1); off-canvas pixels are ignored.
    public mutating func blend(x: Int, y: Int, color: RGB, alpha: Float = 1) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = 3 * (y * width + x)
        if alpha >= 1 {
            pixels[i] = color.r
            pixels[i + 1] = color.g
            pixels[i + 2] = color.b
            return
        }
        guard alpha > 0 else { return }
        @inline(__always) func mix(_ old: UInt8, _ new: UInt8) -> UInt8 {
            UInt8(min(255, max(0, (Float(old) + (Float(new) - Float(old)) * alpha).rounded())))
        }
        pixels[i] = mix(pixels[i], color.r)
        pixels[i + 1] = mix(pixels[i + 1], color.g)
        pixels[i + 2] = mix(pixels[i + 2], color.b)
    }

    public mutating func fillRect(x: Int, y: Int, width w: Int, height h: Int, color: RGB, alpha: Float = 1) {
        let x0 = max(x, 0), y0 = max(y, 0)
        let x1 = min(saturatingAdd(x, w), width), y1 = min(saturatingAdd(y, h), height)
        guard x0 < x1, y0 < y1 else { return }
        for yy in y0..<y1 {
            for xx in x0..<x1 { blend(x: xx, y: yy, color: color, alpha: alpha) }
        }
    }

    /// A one-pixel outline whose outer edge is the given rectangle.
    public mutating func strokeRect(x: Int, y: Int, width w: Int, height h: Int, color: RGB) {
        guard w > 0, h > 0 else { return }
        fillRect(x: x, y: y, width: w, height: 1, color: color)
        fillRect(x: x, y: saturatingAdd(y, h - 1), width: w, height: 1, color: color)
        fillRect(x: x, y: y, width: 1, height: h, color: color)
        fillRect(x: saturatingAdd(x, w - 1), y: y, width: 1, height: h, color: color)
    }

    /// A filled disc of the given radius (0 = a single pixel) centred on the nearest pixel.
    public mutating func drawPoint(x: Int, y: Int, color: RGB, radius: Int = 1, alpha: Float = 1) {
        drawDisc(cx: x, cy: y, radius: radius, color: color, alpha: alpha,
                 clip: (0, 0, width, height))
    }

    /// As above for fractional coordinates; NaN or infinite coordinates draw nothing.
    public mutating func drawPoint(x: Float, y: Float, color: RGB, radius: Int = 1, alpha: Float = 1) {
        guard let cx = Canvas.pixelCoordinate(x), let cy = Canvas.pixelCoordinate(y) else { return }
        drawPoint(x: cx, y: cy, color: color, radius: radius, alpha: alpha)
    }

    mutating func drawDisc(cx: Int, cy: Int, radius: Int, color: RGB, alpha: Float,
                           clip: (x0: Int, y0: Int, x1: Int, y1: Int)) {
        let r = min(max(radius, 0), 64)
        // The r/2 slack rounds the outline: radius 1 is a plus-shaped dot rather than a 3x3 square,
        // and larger radii look round instead of diamond-like.
        let limit = r * r + r / 2
        for dy in -r...r {
            for dx in -r...r where dx * dx + dy * dy <= limit {
                let x = saturatingAdd(cx, dx), y = saturatingAdd(cy, dy)
                guard x >= clip.x0, y >= clip.y0, x < clip.x1, y < clip.y1 else { continue }
                blend(x: x, y: y, color: color, alpha: alpha)
            }
        }
    }

    /// A one-pixel line between two pixel centres (Bresenham), clipped to the canvas first so
    /// far-away endpoints cost nothing.
    public mutating func drawLine(x0: Int, y0: Int, x1: Int, y1: Int, color: RGB, alpha: Float = 1) {
        guard let (a, b) = Canvas.clip(Double(x0), Double(y0), Double(x1), Double(y1),
                                       maxX: Double(width - 1), maxY: Double(height - 1)) else { return }
        var x = Int(a.0.rounded()), y = Int(a.1.rounded())
        let xe = Int(b.0.rounded()), ye = Int(b.1.rounded())
        let dx = abs(xe - x), dy = -abs(ye - y)
        let sx = x < xe ? 1 : -1, sy = y < ye ? 1 : -1
        var err = dx + dy
        while true {
            blend(x: x, y: y, color: color, alpha: alpha)
            if x == xe && y == ye { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    /// Draws `text` with its top-left corner at (x, y) in the built-in 5x7 font, each font pixel a
    /// `scale` x `scale` block; tails of g, j, p, q and y reach two font rows below the box. Characters outside printable ASCII draw as '?'; "\n" starts a new line.
    public mutating func drawText(_ text: String, x: Int, y: Int, color: RGB, scale: Int = 1) {
        let s = min(max(scale, 1), 64)
        var penX = x, penY = y
        for scalar in text.unicodeScalars {
            if scalar == "\n" {
                penX = x
                penY = saturatingAdd(penY, Canvas.lineHeight(scale: s))
                continue
            }
            let drop = Font5x7.drop(for: scalar)
            for (row, bits) in Font5x7.rows(for: scalar).enumerated() where bits != 0 {
                for col in 0..<Font5x7.width where bits & (1 << (Font5x7.width - 1 - col)) != 0 {
                    fillRect(x: saturatingAdd(penX, col * s), y: saturatingAdd(penY, (row + drop) * s),
                             width: s, height: s, color: color)
                }
            }
            penX = saturatingAdd(penX, Canvas.advance(scale: s))
        }
    }

    /// Horizontal distance between successive characters.
    public static func advance(scale: Int) -> Int { (Font5x7.width + 1) * max(scale, 1) }

    public static func lineHeight(scale: Int) -> Int { (Font5x7.height + 2) * max(scale, 1) }

    /// Width in pixels of the longest line of `text` (without the trailing inter-character gap).
    public static func textWidth(_ text: String, scale: Int = 1) -> Int {
        let longest = text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.unicodeScalars.count }.max() ?? 0
        return longest == 0 ? 0 : longest * advance(scale: scale) - max(scale, 1)
    }

    static func pixelCoordinate(_ v: Float) -> Int? {
        guard v.isFinite, abs(v) < 1e9 else { return nil }
        return Int(v.rounded())
    }

    /// Liang-Barsky clipping of a segment to [0, maxX] x [0, maxY].
    static func clip(_ x0: Double, _ y0: Double, _ x1: Double, _ y1: Double, maxX: Double, maxY: Double)
        -> ((Double, Double), (Double, Double))? {
        var t0 = 0.0, t1 = 1.0
        let dx = x1 - x0, dy = y1 - y0
        for (p, q) in [(-dx, x0), (dx, maxX - x0), (-dy, y0), (dy, maxY - y0)] {
            if p == 0 {
                if q < 0 { return nil }
            } else {
                let r = q / p
                if p < 0 { t0 = max(t0, r) } else { t1 = min(t1, r) }
                if t0 > t1 { return nil }
            }
        }
        return ((x0 + t0 * dx, y0 + t0 * dy), (x0 + t1 * dx, y0 + t1 * dy))
    }
}

@inline(__always)
func saturatingAdd(_ a: Int, _ b: Int) -> Int {
    let (s, overflow) = a.addingReportingOverflow(b)
    return overflow ? (b > 0 ? Int.max : Int.min) : s
}

/// One square scatter panel per entry, laid out `columns` per row, each with a frame and its title
/// above. `reference` points (typically the data) are drawn in light gray under every panel's own
/// points. Points are interleaved [x0, y0, x1, y1, ...]; those outside `extent` are not drawn.
public func scatterGrid(panels: [(title: String, points: [Float], color: RGB)], reference: [Float]?,
                        extent: ClosedRange<Float> = -4...4, panelSize: Int = 320, columns: Int) -> Image {
    let size = min(max(panelSize, 16), 4096)
    let cols = max(1, min(columns, max(panels.count, 1)))
    let rows = max(1, (panels.count + cols - 1) / cols)
    let margin = 10
    let scale = size >= 240 ? 2 : 1
    let titleHeight = Font5x7.height * scale + 8
    let cellWidth = size + margin, cellHeight = titleHeight + size + margin
    var canvas = Canvas(width: margin + cols * cellWidth, height: margin + rows * cellHeight)

    let lo = extent.lowerBound, hi = extent.upperBound
    let span = hi > lo ? hi - lo : 1
    let pointRadius = size >= 240 ? 1 : 0

    for (k, panel) in panels.enumerated() {
        let px = margin + (k % cols) * cellWidth
        let py = margin + (k / cols) * cellHeight + titleHeight
        let clip = (px, py, px + size, py + size)

        func toPixel(_ x: Float, _ y: Float) -> (Int, Int)? {
            guard x.isFinite, y.isFinite, x >= lo, x <= hi, y >= lo, y <= hi else { return nil }
            let sx = px + Int(((x - lo) / span * Float(size - 1)).rounded())
            let sy = py + Int(((hi - y) / span * Float(size - 1)).rounded())
            return (sx, sy)
        }

        if lo < 0 && hi > 0, let (zx, zy) = toPixel(0, 0) {
            canvas.fillRect(x: px, y: zy, width: size, height: 1, color: RGB(235, 235, 235))
            canvas.fillRect(x: zx, y: py, width: 1, height: size, color: RGB(235, 235, 235))
        }
        if let reference {
            for i in stride(from: 0, to: reference.count - 1, by: 2) {
                guard let (sx, sy) = toPixel(reference[i], reference[i + 1]) else { continue }
                canvas.drawDisc(cx: sx, cy: sy, radius: pointRadius, color: RGB(170, 170, 170), alpha: 0.35, clip: clip)
            }
        }
        let points = panel.points
        for i in stride(from: 0, to: points.count - 1, by: 2) {
            guard let (sx, sy) = toPixel(points[i], points[i + 1]) else { continue }
            canvas.drawDisc(cx: sx, cy: sy, radius: pointRadius, color: panel.color, alpha: 0.6, clip: clip)
        }
        canvas.strokeRect(x: px - 1, y: py - 1, width: size + 2, height: size + 2, color: RGB(90, 90, 90))

        var title = panel.title.replacingNewlines()
        let maxChars = max(1, (size + scale) / Canvas.advance(scale: scale))
        if title.unicodeScalars.count > maxChars {
            title = String(String.UnicodeScalarView(title.unicodeScalars.prefix(maxChars - 1))) + "~"
        }
        canvas.drawText(title, x: px, y: py - titleHeight + 3, color: .black, scale: scale)
    }
    return canvas.image
}

/// Tiles images given channel-first with values in [-1, 1] (the model's range) into one picture,
/// `columns` per row with `padding` white pixels between and around them. One channel gives a gray
/// image, three give RGB; values outside [-1, 1] are clamped and NaN shows as black.
public func imageGrid(images: [[Float]], channels: Int, height: Int, width: Int, columns: Int,
                      padding: Int = 2) throws -> Image {
    guard channels == 1 || channels == 3 else {
        throw FormatError("imageGrid: \(channels) channels (expected 1 or 3)")
    }
    guard height >= 1, width >= 1, height <= 16384, width <= 16384 else {
        throw FormatError("imageGrid: invalid image size \(width)x\(height)")
    }
    guard !images.isEmpty else { throw FormatError("imageGrid: no images") }
    guard columns >= 1 else { throw FormatError("imageGrid: columns must be at least 1, got \(columns)") }
    guard padding >= 0, padding <= 1024 else { throw FormatError("imageGrid: invalid padding \(padding)") }
    let plane = height * width
    for (k, img) in images.enumerated() where img.count != plane * channels {
        throw FormatError("imageGrid: image \(k) has \(img.count) values, expected \(channels)x\(height)x\(width)")
    }
    let cols = min(columns, images.count)
    let rows = (images.count + cols - 1) / cols
    let outWidth = padding + cols * (width + padding)
    let outHeight = padding + rows * (height + padding)
    guard outWidth.multipliedReportingOverflow(by: outHeight).partialValue <= Image.maxPixels,
          outWidth <= 1 << 20, outHeight <= 1 << 20 else {
        throw FormatError("imageGrid: grid of \(outWidth)x\(outHeight) pixels is too large")
    }
    var pixels = [UInt8](repeating: 255, count: outWidth * outHeight * channels)
    for (k, img) in images.enumerated() {
        let ox = padding + (k % cols) * (width + padding)
        let oy = padding + (k / cols) * (height + padding)
        for y in 0..<height {
            for x in 0..<width {
                let dst = ((oy + y) * outWidth + ox + x) * channels
                for c in 0..<channels {
                    let v = img[c * plane + y * width + x]
                    let scaled = v.isNaN ? 0 : ((min(max(v, -1), 1) + 1) * 127.5).rounded()
                    pixels[dst + c] = UInt8(scaled)
                }
            }
        }
    }
    return Image(width: outWidth, height: outHeight, channels: channels, pixels: pixels)
}

extension String {
    func replacingNewlines() -> String {
        String(String.UnicodeScalarView(unicodeScalars.map { $0 == "\n" || $0 == "\r" ? " " : $0 }))
    }
}
