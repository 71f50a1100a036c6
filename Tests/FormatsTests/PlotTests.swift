import XCTest
@testable import Formats

final class PlotTests: XCTestCase {
    func changedPixels(_ canvas: Canvas, from background: RGB) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        for y in 0..<canvas.height {
            for x in 0..<canvas.width where canvas[x, y] != background { out.append((x, y)) }
        }
        return out
    }

    func testFontCoversPrintableASCIIWithDistinctGlyphs() {
        XCTAssertEqual(Font5x7.glyphs.count, 95 * 7)
        XCTAssertTrue(Font5x7.glyphs.allSatisfy { $0 < 32 }, "rows are 5 bits wide")
        var seen: [[UInt8]: Character] = [:]
        for code in 33...126 {
            let scalar = Unicode.Scalar(UInt8(code))
            let rows = Array(Font5x7.rows(for: scalar))
            XCTAssertTrue(rows.contains { $0 != 0 }, "glyph for \(Character(scalar)) is blank")
            if let other = seen[rows] { XCTFail("\(Character(scalar)) and \(other) share a glyph") }
            seen[rows] = Character(scalar)
        }
        XCTAssertTrue(Font5x7.rows(for: " ").allSatisfy { $0 == 0 })
        XCTAssertEqual(Array(Font5x7.rows(for: "é")), Array(Font5x7.rows(for: "?")), "non-ASCII draws as '?'")
    }

    func testTextDrawsExactlyTheGlyphInItsBox() {
        var canvas = Canvas(width: 40, height: 40, background: .white)
        canvas.drawText("A", x: 10, y: 20, color: .black, scale: 2)
        let changed = changedPixels(canvas, from: .white)
        // 'A' has 18 lit font pixels; at scale 2 each is a 2x2 block.
        XCTAssertEqual(changed.count, 18 * 4)
        XCTAssertTrue(changed.allSatisfy { $0.0 >= 10 && $0.0 < 20 && $0.1 >= 20 && $0.1 < 34 })
        XCTAssertEqual(canvas[10, 20], .white, "top-left corner of 'A' is unlit")
        XCTAssertEqual(canvas[12, 20], .black, "top row starts at column 1")
        XCTAssertEqual(canvas[10, 22], .black)
        XCTAssertEqual(canvas[19, 33], .black, "bottom-right leg")
        XCTAssertEqual(Canvas.textWidth("AB", scale: 1), 11)
        XCTAssertEqual(Canvas.textWidth("AB\nxyz", scale: 2), 34)
        XCTAssertEqual(Canvas.textWidth("", scale: 3), 0)

        var two = Canvas(width: 30, height: 30)
        two.drawText("I\nI", x: 0, y: 0, color: .red)
        XCTAssertEqual(changedPixels(two, from: .white).count, 2 * 11)
        XCTAssertTrue(changedPixels(two, from: .white).contains { $0.1 >= Canvas.lineHeight(scale: 1) })
    }

    func testDrawingClipsInsteadOfCrashing() {
        var canvas = Canvas(width: 20, height: 10)
        canvas.drawText("clipped text", x: -7, y: -3, color: .black, scale: 3)
        canvas.drawText("far", x: Int.max - 5, y: Int.min + 5, color: .black, scale: 1000)
        canvas.drawLine(x0: -1_000_000, y0: 5, x1: 1_000_000, y1: 5, color: .blue)
        canvas.drawLine(x0: Int.min, y0: Int.min, x1: Int.max, y1: Int.max, color: .blue)
        canvas.drawLine(x0: 100, y0: 100, x1: 200, y1: 300, color: .red)
        canvas.drawPoint(x: Float.nan, y: 3, color: .red)
        canvas.drawPoint(x: Float.infinity, y: 3, color: .red)
        canvas.drawPoint(x: Int.max, y: Int.max, color: .red, radius: 5)
        canvas.fillRect(x: Int.max - 1, y: 0, width: Int.max, height: 3, color: .red)
        canvas.fillRect(x: 5, y: 5, width: -3, height: 2, color: .red)
        XCTAssertEqual(canvas.pixels.count, 20 * 10 * 3)
        for x in 0..<20 { XCTAssertEqual(canvas[x, 5], .blue, "horizontal line crosses the whole canvas") }
        XCTAssertNil(canvas[20, 0])
        XCTAssertNil(canvas[-1, 0])
    }

    func testLinesPointsRectsAndBlending() {
        var canvas = Canvas(width: 12, height: 12)
        canvas.drawLine(x0: 0, y0: 0, x1: 11, y1: 11, color: .black)
        XCTAssertEqual(changedPixels(canvas, from: .white).count, 12)
        for i in 0..<12 { XCTAssertEqual(canvas[i, i], .black) }

        var dots = Canvas(width: 12, height: 12)
        dots.drawPoint(x: 5, y: 5, color: .red, radius: 0)
        XCTAssertEqual(changedPixels(dots, from: .white).count, 1)
        dots.drawPoint(x: Float(8.4), y: Float(2.6), color: .red, radius: 1)
        XCTAssertEqual(changedPixels(dots, from: .white).count, 1 + 5, "radius 1 is a plus of 5 pixels")
        XCTAssertEqual(dots[8, 3], .red)

        var rect = Canvas(width: 10, height: 10)
        rect.fillRect(x: 2, y: 3, width: 4, height: 2, color: .black, alpha: 0.5)
        XCTAssertEqual(changedPixels(rect, from: .white).count, 8)
        XCTAssertEqual(rect[2, 3], RGB(128, 128, 128), "50% black over white")
        rect.strokeRect(x: 0, y: 0, width: 10, height: 10, color: .blue)
        XCTAssertEqual(changedPixels(rect, from: .white).count, 8 + 36)

        let image = rect.image
        XCTAssertEqual(image.channels, 3)
        XCTAssertEqual(image.width, 10)
        XCTAssertEqual(Array(image.pixels[0..<3]), [RGB.blue.r, RGB.blue.g, RGB.blue.b])
    }

    func testScatterGridLayout() throws {
        let reference: [Float] = [1, 1, -1, -1]
        let image = scatterGrid(panels: [(title: "data", points: [0, 0, 3.9, -3.9], color: .blue),
                                         (title: "TVM 1-NFE", points: [2, 2, 100, 100, .nan, 0], color: .red),
                                         (title: "odd", points: [1], color: .green)],
                                reference: reference, extent: -4...4, panelSize: 100, columns: 2)
        // margin 10, cells of 100 + 10 wide; title band 7 + 8 high at scale 1.
        XCTAssertEqual(image.width, 10 + 2 * 110)
        XCTAssertEqual(image.height, 10 + 2 * (15 + 100 + 10))
        func pixel(_ x: Int, _ y: Int) -> RGB {
            let i = 3 * (y * image.width + x)
            return RGB(image.pixels[i], image.pixels[i + 1], image.pixels[i + 2])
        }
        let top = 10 + 15
        // (0, 0) maps to the panel centre: 10 + round(0.5 * 99) = 60.
        let centre = pixel(60, top + 50)
        XCTAssertLessThan(centre.r, 200)
        XCTAssertGreaterThan(centre.b, centre.r, "blue dot over the axes")
        // Panel 1's reference point (1, 1) is gray under its own points; its point (2, 2) is red.
        let px1 = 10 + 110
        let ref = pixel(px1 + Int((5.0 / 8 * 99).rounded()), top + Int((3.0 / 8 * 99).rounded()))
        XCTAssertEqual(ref.r, ref.g)
        XCTAssertLessThan(ref.r, 255)
        let red = pixel(px1 + Int((6.0 / 8 * 99).rounded()), top + Int((2.0 / 8 * 99).rounded()))
        XCTAssertGreaterThan(red.r, red.g + 50)
        // Frame pixels surround the panel.
        XCTAssertEqual(pixel(9, top + 10), RGB(90, 90, 90))
        XCTAssertEqual(pixel(110, top + 10), RGB(90, 90, 90))
        // The title is drawn in the band above the panel.
        var titleInk = 0
        for y in 10..<top { for x in 10..<110 where pixel(x, y) == .black { titleInk += 1 } }
        XCTAssertGreaterThan(titleInk, 10)
        XCTAssertNoThrow(try Image.decodePNG(image.pngBytes()))

        let empty = scatterGrid(panels: [], reference: nil, columns: 0)
        XCTAssertGreaterThan(empty.width, 0)
        let long = scatterGrid(panels: [(title: String(repeating: "W", count: 500), points: [], color: .blue)],
                               reference: nil, extent: 1...1, panelSize: 16, columns: 3)
        XCTAssertEqual(long.width, 10 + 26)
    }

    func testImageGridMapsValuesAndLaysOutTiles() throws {
        let gray = try imageGrid(images: [[-1, 0, 1, 0.5], [5, -5, .nan, -0.5]], channels: 1, height: 2, width: 2,
                                 columns: 2, padding: 1)
        XCTAssertEqual(gray.width, 7)
        XCTAssertEqual(gray.height, 4)
        XCTAssertEqual(gray.channels, 1)
        XCTAssertEqual(gray.pixels, [
            255, 255, 255, 255, 255, 255, 255,
            255, 0, 128, 255, 255, 0, 255,
            255, 255, 191, 255, 0, 64, 255,
            255, 255, 255, 255, 255, 255, 255,
        ])
        // CHW input: the red plane first; output is interleaved RGB.
        let rgb = try imageGrid(images: [[1, -1, -1, 1, 0, 0]], channels: 3, height: 1, width: 2, columns: 4, padding: 0)
        XCTAssertEqual(rgb.width, 2)
        XCTAssertEqual(rgb.pixels, [255, 0, 128, 0, 255, 128])
        let rows = try imageGrid(images: Array(repeating: [Float](repeating: 0, count: 4), count: 5), channels: 1,
                                 height: 2, width: 2, columns: 2)
        XCTAssertEqual(rows.width, 2 + 2 * 4)
        XCTAssertEqual(rows.height, 2 + 3 * 4)

        assertFormatError(try imageGrid(images: [[0]], channels: 2, height: 1, width: 1, columns: 1), contains: ["2 channels"])
        assertFormatError(try imageGrid(images: [[0, 0]], channels: 1, height: 1, width: 1, columns: 1), contains: ["image 0 has 2 values"])
        assertFormatError(try imageGrid(images: [], channels: 1, height: 1, width: 1, columns: 1), contains: ["no images"])
        assertFormatError(try imageGrid(images: [[0]], channels: 1, height: 1, width: 1, columns: 0), contains: ["columns"])
    }
}
