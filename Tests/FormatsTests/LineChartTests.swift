import XCTest
@testable import Formats

final class LineChartTests: XCTestCase {
    func testSmoothingIsDebiasedAndKeepsGaps() {
        let flat = ChartSeries.smoothed([Double](repeating: 3, count: 50), window: 10)
        XCTAssertTrue(flat.allSatisfy { abs($0 - 3) < 1e-12 }, "no pull toward zero at the start")
        let s = ChartSeries.smoothed([1, .nan, 3, 5], window: 2)
        // w = 0.5: ema 0.5, 1.75, 3.375 over weights 0.5, 0.75, 0.875; the NaN stays a gap.
        XCTAssertEqual(s[0], 1)
        XCTAssertTrue(s[1].isNaN)
        XCTAssertEqual(s[2], 1.75 / 0.75, accuracy: 1e-12)
        XCTAssertEqual(s[3], 3.375 / 0.875, accuracy: 1e-12)
        XCTAssertEqual(ChartSeries.smoothed([4, 2], window: 1), [4, 2], "a window of one point is no smoothing")
    }

    func testLogarithmicWhereValuesSpanDecades() {
        XCTAssertEqual(AxisScale.automatic(for: [0.02, 0.5, 3]), .logarithmic)
        XCTAssertEqual(AxisScale.automatic(for: [1, 5, .nan]), .linear)
        XCTAssertEqual(AxisScale.automatic(for: [0, 100]), .linear, "zero has no logarithm")
        XCTAssertEqual(AxisScale.automatic(for: [-1, 100]), .linear)
        XCTAssertEqual(AxisScale.automatic(for: []), .linear)
    }

    func testTicksAreRoundNumbers() {
        XCTAssertEqual(ChartAxis(values: [0, 97], scale: .linear, pad: 0).ticks(count: 5), [0, 20, 40, 60, 80])
        XCTAssertEqual(ChartAxis(values: [1, 2000], scale: .linear, pad: 0).ticks(count: 4), [500, 1000, 1500, 2000])
        let log = ChartAxis(values: [0.05, 3], scale: .logarithmic, pad: 0).ticks(count: 5)
        XCTAssertEqual(log.count, 6)
        for (tick, expected) in zip(log, [0.05, 0.1, 0.2, 0.5, 1, 2]) { XCTAssertEqual(tick, expected, accuracy: 1e-12) }
        let wide = ChartAxis(values: [1e-4, 30], scale: .logarithmic, pad: 0).ticks(count: 5)
        XCTAssertEqual(wide.map { log10($0).rounded() }, [-4, -3, -2, -1, 0, 1], "decades only across many of them")
        // One value, or none: still a range with ticks.
        XCTAssertFalse(ChartAxis(values: [7], scale: .linear, pad: 0).ticks(count: 4).isEmpty)
        XCTAssertFalse(ChartAxis(values: [], scale: .logarithmic, pad: 0).ticks(count: 4).isEmpty)
    }

    func testTickLabels() {
        XCTAssertEqual(tickLabel(0, spacing: 1), "0")
        XCTAssertEqual(tickLabel(20000, spacing: 5000), "20k")
        XCTAssertEqual(tickLabel(22500, spacing: 2500), "22.5k")
        XCTAssertEqual(tickLabel(2_500_000, spacing: 500_000), "2.5M")
        XCTAssertEqual(tickLabel(1500, spacing: 500), "1500")
        XCTAssertEqual(tickLabel(0.25, spacing: 0.05), "0.25")
        XCTAssertEqual(tickLabel(0.5, spacing: 0.05), "0.5")
        XCTAssertEqual(tickLabel(2e-4, spacing: 5e-5), "2e-4")
        XCTAssertEqual(tickLabel(1.5e-4, spacing: 5e-5), "1.5e-4")
        XCTAssertEqual(tickLabel(-3, spacing: 1), "-3")
    }

    func testAFaintTraceStaysFaintWhereItOverlapsItself() {
        var canvas = Canvas(width: 40, height: 20)
        // Back and forth over the same row many times.
        let points: [(Double, Double)?] = (0..<40).map { ($0 % 2 == 0 ? 2.0 : 37.0, 10.0) }
        canvas.drawPolyline(points, width: 1, color: .black, alpha: 0.2, clip: (0, 0, 40, 20))
        XCTAssertEqual(canvas[20, 10], RGB(204, 204, 204), "one blend at 20% opacity, not forty")
        XCTAssertEqual(canvas[20, 2], .white)
        // A gap (nil) breaks the line; points off the plot are clipped.
        var gapped = Canvas(width: 40, height: 20)
        gapped.drawPolyline([(2, 5), (10, 5), nil, (30, 5), (1e9, 5)], width: 1, color: .black, alpha: 1, clip: (0, 0, 40, 20))
        XCTAssertEqual(gapped[6, 5], .black)
        XCTAssertEqual(gapped[20, 5], .white)
        XCTAssertEqual(gapped[30, 5], .black)
    }

    func testChartSizeAndCurvesWithBadValues() {
        let series = ChartSeries(color: .blue, x: [1, 2, 3, 4], y: [1, .nan, .infinity, 0.5], smoothing: 2)
        let empty = ChartSeries(color: .orange, x: [], y: [])
        let panels = [ChartPanel(title: "loss", xLabel: "step", series: [series]),
                      ChartPanel(title: "nothing", xLabel: "step", series: [empty]),
                      ChartPanel(title: "fid", xLabel: "step", series: [ChartSeries(color: .green, x: [1], y: [3], markers: true)])]
        let image = lineChart(panels: panels, columns: 2, title: "run", legend: [("a", .blue), ("b", .orange)],
                              panelWidth: 200, panelHeight: 100)
        let plain = lineChart(panels: panels, columns: 2, panelWidth: 200, panelHeight: 100)
        XCTAssertEqual(image.width, plain.width)
        XCTAssertGreaterThan(image.height, plain.height, "the title and the legend take rows")
        XCTAssertEqual(image.channels, 3)
        XCTAssertTrue(stride(from: 0, to: image.pixels.count, by: 3).contains {
            image.pixels[$0] == RGB.green.r && image.pixels[$0 + 1] == RGB.green.g && image.pixels[$0 + 2] == RGB.green.b
        }, "the lone FID point is drawn")
    }
}
