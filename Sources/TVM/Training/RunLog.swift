import Formats

/// What a run records as it goes (rank 0 alone): `metrics.jsonl`, one JSON line per step and one per FID
/// measurement, and TensorBoard event files in the run folder with the same figures, the sample grids and the
/// run's options.
public final class RunLog {
    let metrics: LineWriter
    let events: TensorBoardWriter
    /// Images per step, for the throughput in images per second.
    let batch: Int

    /// Opens the log of a run that continues after `step` (0: a fresh run, which empties `metricsPath`). A resumed
    /// run's caller has trimmed `metricsPath` to that step; TensorBoard drops what an interrupted invocation logged
    /// after it likewise. `options` (the run's options, as in config.json) are logged as text.
    public init(directory: String, metricsPath: String, after step: Int, batch: Int, options: JSONValue?) throws {
        metrics = try LineWriter(path: metricsPath, append: step > 0)
        events = try TensorBoardWriter(directory: directory, firstStep: step == 0 ? 0 : step + 1)
        self.batch = batch
        if let options { try events.config(options, step: step) }
    }

    /// The step's line and scalars.
    public func step(_ stats: StepStats, rate: Double, elapsed: Double) throws {
        try metrics.write(Self.line(stats, rate: rate, elapsed: elapsed).serialized())
        var scalars: [(tag: String, value: Double)] = [("loss/total", stats.loss)]
        if let t = stats.terminal { scalars.append(("loss/terminal", t)) }
        if let f = stats.flowMatching { scalars.append(("loss/flow_matching", f)) }
        scalars += [("optimizer/grad_norm", stats.gradNorm), ("optimizer/learning_rate", stats.learningRate),
                    ("throughput/images_per_second", rate * Double(batch)),
                    ("faults/skipped", stats.skipped ? 1 : 0), ("faults/nan_rows", Double(stats.nanRows))]
        try events.scalars(scalars, step: stats.step)
    }

    /// One line of `metrics.jsonl`.
    static func line(_ stats: StepStats, rate: Double, elapsed: Double) -> JSONValue {
        var fields: [(String, JSONValue)] = [("step", .number(Double(stats.step))), ("loss", .number(stats.loss))]
        if let t = stats.terminal { fields.append(("terminal", .number(t))) }
        if let f = stats.flowMatching { fields.append(("fm", .number(f))) }
        fields += [("grad_norm", .number(stats.gradNorm)), ("lr", .number(stats.learningRate)), ("it/s", .number(rate)),
                   ("elapsed", .number(elapsed))]
        if stats.nanRows > 0 { fields.append(("nan_rows", .number(Double(stats.nanRows)))) }
        if stats.skipped { fields.append(("skipped", .bool(true))) }
        if let fault = stats.fault { fields.append(("fault", .string(fault.description))) }
        return .object(fields)
    }

    /// The FIDs of one step: a line {"step": N, "fid_nfe1": ..., "fid_seconds": ...} and a scalar per NFE.
    func fid(_ measurements: [FIDMeasurement], seconds: Double) throws {
        guard let step = measurements.first?.step else { return }
        let fields = measurements.map { ("fid_nfe\($0.nfe)", JSONValue.number($0.fid)) }
        try metrics.write(JSONValue.object([("step", .number(Double(step)))] + fields + [("fid_seconds", .number(seconds))]).serialized())
        try events.scalars(measurements.map { ("fid/nfe\($0.nfe)", $0.fid) }, step: step)
    }

    /// A snapshot's sample grids.
    func grids(_ grids: [SampleGrids.Grid], step: Int) throws {
        for grid in grids { try image("samples/nfe\(grid.nfe)", grid.image, step: step) }
    }

    public func image(_ tag: String, _ image: Image, step: Int) throws { try events.image(tag, image, step: step) }

    /// Syncs the event file (the metrics lines are flushed as they are written).
    public func close() throws { try events.close() }
}
