#if canImport(Glibc)
import Glibc
#endif

/// One curve of a chart panel: points (x, y) in x order. Non-finite points (a NaN loss) are gaps.
public struct ChartSeries: Sendable {
    public var color: RGB
    public var x: [Double]
    public var y: [Double]
    /// Steps of an exponential moving average (TensorBoard's, debiased) drawn bold over the raw trace, which is
    /// then drawn faint behind it; 0 draws the raw points alone, bold.
    public var smoothing: Double
    /// Dots at the points (for sparse series such as FID).
    public var markers: Bool

    public init(color: RGB, x: [Double], y: [Double], smoothing: Double = 0, markers: Bool = false) {
        precondition(x.count == y.count, "one x per y")
        self.color = color
        self.x = x
        self.y = y
        self.smoothing = smoothing
        self.markers = markers
    }

    /// The EMA over the finite points with weight w = 1 - 1/window, divided by 1 - w^k after k points as
    /// TensorBoard does, so the start is not pulled toward zero. Non-finite points stay gaps.
    public static func smoothed(_ y: [Double], window: Double) -> [Double] {
        guard window > 1 else { return y }
        let w = 1 - 1 / window
        var ema = 0.0, weight = 0.0
        return y.map { v in
            guard v.isFinite else { return v }
            ema = w * ema + (1 - w) * v
            weight = w * weight + (1 - w)
            return ema / weight
        }
    }
}

public enum AxisScale: Sendable {
    case linear, logarithmic

    /// Logarithmic where the values are positive and span more than a factor of 10 (a loss falling by decades,
    /// a gradient norm with spikes), linear otherwise.
    public static func automatic(for values: [Double]) -> AxisScale {
        let finite = values.filter(\.isFinite)
        guard let lo = finite.min(), let hi = finite.max(), lo > 0 else { return .linear }
        return hi / lo > 10 ? .logarithmic : .linear
    }
}

/// One framed plot: a title, curves, and its axes' labels.
public struct ChartPanel: Sendable {
    public var title: String
    public var xLabel: String
    public var series: [ChartSeries]
    /// nil: `AxisScale.automatic` over every series' values.
    public var yScale: AxisScale?

    public init(title: String, xLabel: String, series: [ChartSeries], yScale: AxisScale? = nil) {
        self.title = title
        self.xLabel = xLabel
        self.series = series
        self.yScale = yScale
    }
}

/// A figure of line-chart panels, `columns` per row, each `panelWidth` x `panelHeight` pixels of plot area
/// with its title above and its tick labels around it, under an optional title line and legend (a colour swatch
/// and a name per entry).
public func lineChart(panels: [ChartPanel], columns: Int, title: String? = nil, legend: [(name: String, color: RGB)] = [],
                      panelWidth: Int = 520, panelHeight: Int = 260) -> Image {
    let scale = 2, small = 1
    let lineHeight = Canvas.lineHeight(scale: scale)
    let cols = max(1, min(columns, max(panels.count, 1)))
    let rows = max(1, (panels.count + cols - 1) / cols)
    let width = min(max(panelWidth, 80), 4096), height = min(max(panelHeight, 60), 4096)
    // Room for tick labels left of and below each plot, and its title above.
    let left = Canvas.advance(scale: small) * 7 + 14, below = Canvas.lineHeight(scale: small) + lineHeight + 12
    let above = lineHeight + 8, gap = 28, margin = 24
    let cellWidth = left + width + gap, cellHeight = above + height + below + gap

    var top = margin
    var legendRows: [[(name: String, color: RGB)]] = []
    let swatch = 28, entryGap = 30
    let figureWidth = 2 * margin + cols * cellWidth - gap
    if !legend.isEmpty {
        var row: [(name: String, color: RGB)] = [], used = 0
        for entry in legend {
            let w = swatch + 8 + Canvas.textWidth(entry.name, scale: scale) + entryGap
            if used + w > figureWidth - 2 * margin && !row.isEmpty {
                legendRows.append(row)
                row = []
                used = 0
            }
            row.append(entry)
            used += w
        }
        legendRows.append(row)
    }
    if title != nil { top += lineHeight + 10 }
    top += legendRows.count * (lineHeight + 6) + (legendRows.isEmpty ? 0 : 10)
    var canvas = Canvas(width: figureWidth, height: top + rows * cellHeight - gap + margin)

    var y = margin
    if let title {
        canvas.drawText(title.replacingNewlines(), x: margin, y: y, color: .black, scale: scale)
        y += lineHeight + 10
    }
    for row in legendRows {
        var x = margin
        for entry in row {
            canvas.fillRect(x: x, y: y + lineHeight / 2 - 3, width: swatch, height: 5, color: entry.color)
            x += swatch + 8
            canvas.drawText(entry.name.replacingNewlines(), x: x, y: y, color: .black, scale: scale)
            x += Canvas.textWidth(entry.name, scale: scale) + entryGap
        }
        y += lineHeight + 6
    }

    for (k, panel) in panels.enumerated() {
        let px = margin + (k % cols) * cellWidth + left
        let py = top + (k / cols) * cellHeight + above
        canvas.drawPanel(panel, x: px, y: py, width: width, height: height, scale: scale, small: small)
    }
    return canvas.image
}

/// Where a panel's values land: an axis range, linear or logarithmic, mapped onto `pixels`.
struct ChartAxis {
    let scale: AxisScale
    let lo: Double, hi: Double

    /// The range of `values` (finite ones; positive ones on a logarithmic axis), widened a little so no curve
    /// runs along the frame, and never empty.
    init(values: [Double], scale: AxisScale, pad: Double) {
        self.scale = scale
        let usable = values.filter { $0.isFinite && (scale == .linear || $0 > 0) }
        var a = usable.min() ?? (scale == .linear ? 0 : 1), b = usable.max() ?? (scale == .linear ? 1 : 10)
        if scale == .logarithmic { (a, b) = (log10(a), log10(b)) }
        if b - a < 1e-12 * max(abs(a), abs(b), 1) { (a, b) = (a - 0.5, b + 0.5) }
        let margin = (b - a) * pad
        (lo, hi) = (a - margin, b + margin)
    }

    /// 0 at `lo`, 1 at `hi` (nil for a value the axis cannot show).
    func fraction(_ v: Double) -> Double? {
        guard v.isFinite else { return nil }
        switch scale {
        case .linear: return (v - lo) / (hi - lo)
        case .logarithmic: return v > 0 ? (log10(v) - lo) / (hi - lo) : nil
        }
    }

    /// Tick values inside the range: 1, 2 or 5 times a power of ten apart on a linear axis, about `count` of
    /// them; on a logarithmic one the powers of ten, with 2 and 5 times them when fewer than three decades show.
    func ticks(count: Int) -> [Double] {
        switch scale {
        case .linear:
            let rough = (hi - lo) / Double(max(count, 1))
            let power = pow(10, (log10(rough)).rounded(.down))
            let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= rough } ?? 10 * power
            var t = (lo / step).rounded(.up) * step, out: [Double] = []
            while t <= hi + step * 1e-9 && out.count < 50 {
                out.append(abs(t) < step * 1e-9 ? 0 : t)
                t += step
            }
            return out
        case .logarithmic:
            let decades = Int((lo).rounded(.down))...Int((hi).rounded(.up))
            let multiples: [Double] = hi - lo < 3 ? [1, 2, 5] : [1]
            return decades.flatMap { e in multiples.map { $0 * pow(10, Double(e)) } }
                .filter { let f = log10($0); return f >= lo - 1e-9 && f <= hi + 1e-9 }
        }
    }
}

/// A tick label: plain decimals from 0.01 to 9999 with the digits the tick spacing needs, "20k" and "1.5M"
/// for large round numbers, and "1e-4" beyond.
func tickLabel(_ v: Double, spacing: Double) -> String {
    if v == 0 { return "0" }
    let a = abs(v), sign = v < 0 ? "-" : ""
    if a >= 1e4 && a < 1e9 {
        let (unit, div) = a >= 1e6 ? ("M", 1e6) : ("k", 1e3)
        return sign + decimal(a / div, digits: decimals(of: spacing / div)) + unit
    }
    if a >= 0.01 && a < 1e4 { return sign + decimal(a, digits: decimals(of: spacing)) }
    let e = Int(log10(a).rounded(.down))
    let mantissa = decimal(a / pow(10, Double(e)), digits: 1)
    return sign + mantissa + "e\(e)"
}

/// The decimals that tell ticks `spacing` apart (0 to 4): 0 for 500, 1 for 2.5, 2 for 0.05.
func decimals(of spacing: Double) -> Int {
    (0...4).first { d in
        let v = abs(spacing) * pow(10, Double(d))
        return abs(v - v.rounded()) <= 1e-6 * max(1, v)
    } ?? 4
}

/// `v` (0 or more, below 1e15) rounded to `digits` decimals, without trailing zeros.
func decimal(_ v: Double, digits: Int) -> String {
    let scale = pow(10, Double(digits))
    let scaled = Int((v * scale).rounded())
    let whole = String(scaled / Int(scale))
    guard digits > 0 else { return whole }
    var fraction = String(scaled % Int(scale))
    fraction = String(repeating: "0", count: max(0, digits - fraction.count)) + fraction
    while fraction.hasSuffix("0") { fraction.removeLast() }
    return fraction.isEmpty ? whole : whole + "." + fraction
}

extension Canvas {
    /// One panel: grid lines and tick labels, the curves (each smoothed one over its faint raw trace), the frame,
    /// the title above and the x label below.
    mutating func drawPanel(_ panel: ChartPanel, x px: Int, y py: Int, width: Int, height: Int, scale: Int, small: Int) {
        let xs = panel.series.flatMap(\.x), ys = panel.series.flatMap(\.y)
        let xAxis = ChartAxis(values: xs, scale: .linear, pad: 0)
        let yAxis = ChartAxis(values: ys, scale: panel.yScale ?? .automatic(for: ys), pad: 0.04)
        let grid = RGB(228, 228, 228), frame = RGB(90, 90, 90), label = RGB(60, 60, 60)
        let charHeight = Font5x7.height * small

        let xTicks = xAxis.ticks(count: max(2, width / 110))
        let xSpacing = xTicks.count > 1 ? xTicks[1] - xTicks[0] : 1
        for t in xTicks {
            guard let f = xAxis.fraction(t) else { continue }
            let tx = px + Int((f * Double(width - 1)).rounded())
            fillRect(x: tx, y: py, width: 1, height: height, color: grid)
            let text = tickLabel(t, spacing: xSpacing)
            drawText(text, x: tx - Canvas.textWidth(text, scale: small) / 2, y: py + height + 6, color: label, scale: small)
        }
        let yTicks = yAxis.ticks(count: max(2, height / 50))
        let ySpacing = yAxis.scale == .linear && yTicks.count > 1 ? yTicks[1] - yTicks[0] : 0
        for t in yTicks {
            guard let f = yAxis.fraction(t) else { continue }
            let ty = py + height - 1 - Int((f * Double(height - 1)).rounded())
            fillRect(x: px, y: ty, width: width, height: 1, color: grid)
            let text = tickLabel(t, spacing: ySpacing == 0 ? t / 10 : ySpacing)
            drawText(text, x: px - 6 - Canvas.textWidth(text, scale: small), y: ty - charHeight / 2, color: label, scale: small)
        }

        func point(_ x: Double, _ y: Double) -> (Double, Double)? {
            guard let fx = xAxis.fraction(x), let fy = yAxis.fraction(y) else { return nil }
            return (Double(px) + fx * Double(width - 1), Double(py + height - 1) - fy * Double(height - 1))
        }
        let clip = (x0: px, y0: py, x1: px + width, y1: py + height)
        for series in panel.series where series.smoothing > 1 {
            drawPolyline(zip(series.x, series.y).map { point($0, $1) }, width: 1, color: series.color, alpha: 0.22, clip: clip)
        }
        for series in panel.series {
            let y = ChartSeries.smoothed(series.y, window: series.smoothing)
            let points = zip(series.x, y).map { point($0, $1) }
            drawPolyline(points, width: 2.2, color: series.color, alpha: 1, clip: clip)
            if series.markers {
                for case let (x, y)? in points {
                    drawDisc(cx: Int(x.rounded()), cy: Int(y.rounded()), radius: 3, color: series.color, alpha: 1, clip: clip)
                }
            }
        }
        strokeRect(x: px - 1, y: py - 1, width: width + 2, height: height + 2, color: frame)
        let title = panel.title.replacingNewlines() + (yAxis.scale == .logarithmic ? " (log)" : "")
        drawText(title, x: px, y: py - Canvas.lineHeight(scale: scale) - 2, color: .black, scale: scale)
        let xLabel = panel.xLabel.replacingNewlines()
        drawText(xLabel, x: px + (width - Canvas.textWidth(xLabel, scale: scale)) / 2,
                 y: py + height + 8 + Canvas.lineHeight(scale: small), color: label, scale: scale)
    }

    /// An anti-aliased line of `width` pixels through `points` (nil: a gap), blended once with `alpha` where the
    /// line covers a pixel, so a faint dense trace stays faint where its segments overlap. Clipped to `clip`.
    mutating func drawPolyline(_ points: [(Double, Double)?], width: Double, color: RGB, alpha: Float,
                               clip: (x0: Int, y0: Int, x1: Int, y1: Int)) {
        let w = clip.x1 - clip.x0, h = clip.y1 - clip.y0
        guard w > 0, h > 0 else { return }
        var coverage = [Float](repeating: 0, count: w * h)
        let half = width / 2
        func segment(_ a: (Double, Double), _ b: (Double, Double)) {
            let minX = max(clip.x0, Int((min(a.0, b.0) - half - 1).rounded(.down)))
            let maxX = min(clip.x1 - 1, Int((max(a.0, b.0) + half + 1).rounded(.up)))
            let minY = max(clip.y0, Int((min(a.1, b.1) - half - 1).rounded(.down)))
            let maxY = min(clip.y1 - 1, Int((max(a.1, b.1) + half + 1).rounded(.up)))
            guard minX <= maxX, minY <= maxY else { return }
            let dx = b.0 - a.0, dy = b.1 - a.1, length2 = dx * dx + dy * dy
            for y in minY...maxY {
                for x in minX...maxX {
                    // Distance from the pixel's centre to the segment; coverage falls off over one pixel.
                    let t = length2 > 0 ? min(max(((Double(x) - a.0) * dx + (Double(y) - a.1) * dy) / length2, 0), 1) : 0
                    let ex = Double(x) - (a.0 + t * dx), ey = Double(y) - (a.1 + t * dy)
                    let c = Float(min(max(half + 0.5 - (ex * ex + ey * ey).squareRoot(), 0), 1))
                    let i = (y - clip.y0) * w + (x - clip.x0)
                    if c > coverage[i] { coverage[i] = c }
                }
            }
        }
        // Points far outside the plot (a spike on a linear axis) would make huge boxes: the box is clipped first.
        var previous: (Double, Double)?
        for p in points {
            guard let p, abs(p.0) < 1e7, abs(p.1) < 1e7 else { previous = nil; continue }
            segment(previous ?? p, p)
            previous = p
        }
        for y in 0..<h {
            for x in 0..<w where coverage[y * w + x] > 0 {
                blend(x: clip.x0 + x, y: clip.y0 + y, color: color, alpha: alpha * coverage[y * w + x])
            }
        }
    }
}
