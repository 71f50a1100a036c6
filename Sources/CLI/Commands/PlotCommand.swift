import Formats

/// `tvm plot RUN_DIR...`: a run's loss terms, gradient norm, learning rate and FID against steps and wall time,
/// several runs overlaid, as one PNG.
struct PlotCommand: Command {
    let name = "plot"
    let summary = "draw runs' losses, gradient norm and FID against steps and wall time as a PNG"
    let help = """
        tvm plot RUN_DIR [RUN_DIR...] [--out plot.png] [--title TEXT]
          Draws what tvm train logged in each RUN_DIR (metrics.jsonl, or losses.jsonl of a 2-D run; a .jsonl file
          may be given instead of its folder): one row per figure (the loss, its terminal-velocity and
          flow-matching terms, the gradient norm, the learning rate when a schedule changes it, and the FID at
          each NFE measured), against the step on the left and the wall time on the right (the training time of
          every invocation of a resumed run, added up). Each curve is an exponential moving average over about
          1/60 of its points, its raw trace faint behind it; FID is drawn point by point. An axis is logarithmic
          where the values are positive and span more than a factor of 10. Several runs are overlaid, one colour
          each, with a legend of their folder names. Writes --out (default plot.png) atomically.
        """

    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "plot", args, options: ["out", "title"])
        guard !a.positional.isEmpty else {
            throw CLIError("'tvm plot' takes one or more run folders (tvm plot RUN_DIR [RUN_DIR...])", usage: true)
        }
        let out = a.string("out", default: "plot.png")
        let runs = try a.positional.map(RunHistory.init(path:))
        let names = RunHistory.distinctNames(runs.map(\.path))
        let image = runFigure(runs, names: names, title: a.string("title"))
        try image.writePNG(path: out)
        Console.info("wrote \(out) (\(image.width)x\(image.height)): \(runs.count) run\(runs.count == 1 ? "" : "s"), "
                     + runs.map { "\($0.path) to step \(Int($0.steps.last ?? 0))" }.joined(separator: ", "))
    }
}

/// What one run logged, as columns over its step lines, and its FID measurements.
struct RunHistory {
    let path: String
    /// The log file read.
    let file: String
    var steps: [Double] = []
    /// Seconds of training up to each step line, the invocations of a resumed run added up.
    var seconds: [Double] = []
    /// Per step line, by metrics key ("loss", "terminal", "fm", "grad_norm", "lr"); NaN where a line lacks it.
    var columns: [String: [Double]] = [:]
    /// By NFE: the steps and values of the FID lines.
    var fid: [Int: [(step: Double, fid: Double)]] = [:]

    static let keys = ["loss", "terminal", "fm", "grad_norm", "lr"]

    /// Reads RUN_DIR/metrics.jsonl (image training), RUN_DIR/losses.jsonl (2-D training), or `path` itself.
    init(path: String) throws {
        self.path = path
        if FileSystem.isRegularFile(path) {
            file = path
        } else if FileSystem.isDirectory(path) {
            guard let log = ["metrics.jsonl", "losses.jsonl"].map({ path + "/" + $0 }).first(where: FileSystem.isRegularFile) else {
                throw CLIError("\(path): no metrics.jsonl or losses.jsonl (not a tvm train folder, or no step logged yet)")
            }
            file = log
        } else {
            throw CLIError("\(path): no such run folder or log file")
        }
        let text = String(decoding: try AtomicFile.read(path: file), as: UTF8.self)
        for key in Self.keys { columns[key] = [] }
        var offset = 0.0, previous = 0.0
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let json: JSONValue
            do { json = try JSONValue.parse(String(line)) } catch let e as FormatError {
                throw CLIError("\(file): line \(index + 1): not JSON (\(e.message))")
            }
            guard let step = json["step"]?.double, step.isFinite, let fields = json.object else {
                throw CLIError("\(file): line \(index + 1): no \"step\" number")
            }
            let fids = fields.compactMap { key, value -> (Int, Double)? in
                guard key.hasPrefix("fid_nfe"), let nfe = Int(key.dropFirst(7)) else { return nil }
                return (nfe, value.double ?? .nan)
            }
            if !fids.isEmpty {
                for (nfe, value) in fids { fid[nfe, default: []].append((step, value)) }
                continue
            }
            // "elapsed" restarts with every invocation; earlier 2-D logs called it "time".
            let elapsed = json["elapsed"]?.double ?? json["time"]?.double ?? .nan
            if elapsed < previous { offset += previous }
            if elapsed.isFinite { previous = elapsed }
            steps.append(step)
            seconds.append(offset + elapsed)
            for key in Self.keys { columns[key]!.append(json[key]?.double ?? .nan) }
        }
        guard !steps.isEmpty else { throw CLIError("\(file): no step logged yet") }
    }

    /// The seconds of training at `step` (that of the nearest logged step at or before it).
    func seconds(atStep step: Double) -> Double {
        var lo = 0, hi = steps.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if steps[mid] <= step { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? .nan : seconds[lo - 1]
    }

    /// Legend names: the folders' last components, or more of the path where two runs share one.
    static func distinctNames(_ paths: [String]) -> [String] {
        let trimmed = paths.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        let last = trimmed.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        return zip(trimmed, last).map { path, name in last.filter { $0 == name }.count > 1 ? path : name }
    }
}

/// The figure: per logged quantity a row of two panels (against steps, against wall time).
func runFigure(_ runs: [RunHistory], names: [String], title: String?) -> Image {
    let colors = runs.indices.map { RGB.palette[$0 % RGB.palette.count] }
    let maxSeconds = runs.compactMap { $0.seconds.filter(\.isFinite).max() }.max() ?? 0
    let (unit, divisor) = maxSeconds < 180 ? ("s", 1.0) : maxSeconds < 3 * 3600 ? ("min", 60.0) : ("h", 3600.0)
    var panels: [ChartPanel] = []
    /// A row of two panels; `noisy` figures are smoothed, the others (FID, the learning rate) drawn as they are.
    func addRow(_ title: String, noisy: Bool, markers: Bool = false, yScale: AxisScale? = nil,
                _ series: (RunHistory) -> (steps: [Double], seconds: [Double], values: [Double])) {
        var byStep: [ChartSeries] = [], byTime: [ChartSeries] = []
        for (run, color) in zip(runs, colors) {
            let s = series(run)
            guard s.values.contains(where: \.isFinite) else { continue }
            let smoothing = noisy ? Double(s.values.count) / 60 : 0
            byStep.append(ChartSeries(color: color, x: s.steps, y: s.values, smoothing: smoothing, markers: markers))
            byTime.append(ChartSeries(color: color, x: s.seconds.map { $0 / divisor }, y: s.values, smoothing: smoothing, markers: markers))
        }
        guard !byStep.isEmpty else { return }
        panels.append(ChartPanel(title: title, xLabel: "step", series: byStep, yScale: yScale))
        panels.append(ChartPanel(title: title, xLabel: "wall time (\(unit))", series: byTime, yScale: yScale))
    }
    let titles = ["loss": "loss", "terminal": "terminal-velocity term", "fm": "flow-matching term", "grad_norm": "gradient norm",
                  "lr": "learning rate"]
    for key in RunHistory.keys where key != "lr" {
        addRow(titles[key]!, noisy: true) { ($0.steps, $0.seconds, $0.columns[key]!) }
    }
    // A constant learning rate is one number, not a figure; a schedule is drawn on a linear axis, which shows 0.
    if runs.contains(where: { Set(($0.columns["lr"] ?? []).filter(\.isFinite)).count > 1 }) {
        addRow(titles["lr"]!, noisy: false, yScale: .linear) { ($0.steps, $0.seconds, $0.columns["lr"]!) }
    }
    for nfe in Set(runs.flatMap(\.fid.keys)).sorted() {
        addRow("FID, \(nfe) NFE", noisy: false, markers: true) { run in
            let points = run.fid[nfe] ?? []
            return (points.map(\.step), points.map { run.seconds(atStep: $0.step) }, points.map(\.fid))
        }
    }
    let heading = title ?? (runs.count == 1 ? names[0] + ": step \(Int(runs[0].steps.last!))" : nil)
    return lineChart(panels: panels, columns: 2, title: heading,
                     legend: runs.count > 1 ? Array(zip(names, colors)).map { (name: $0, color: $1) } : [])
}
