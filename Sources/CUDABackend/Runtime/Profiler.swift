/// Device time per kernel name (TVM_CUDA_PROFILE=1, or =grid: per name and launch grid): an event pair around every
/// launch and cuBLAS call, read back when a report is asked for. Events serialise nothing on the stream, so the order of work is
/// unchanged; their own cost (a few µs per launch on the host) makes profiled steps slower in wall time,
/// which is why the report gives device time only.
final class KernelProfiler {
    private let driver: Driver
    private var pending: [(name: String, start: Handle, end: Handle)] = []
    private var spare: [Handle] = []
    private var totals: [String: (calls: Int, ms: Double)] = [:]
    /// Kernel launches named with their grid ("copy_rows_f32 [12x4]").
    let byGrid: Bool

    init(driver: Driver, byGrid: Bool) {
        self.driver = driver
        self.byGrid = byGrid
    }

    private func event() -> Handle {
        if let e = spare.popLast() { return e }
        var e: Handle? = nil
        driver.must(driver.cuEventCreate(&e, 0), "cuEventCreate")
        return e!
    }

    /// Records an event before the work; `end` records the one after it under `name`.
    func begin(_ stream: Handle) -> Handle {
        let e = event()
        driver.must(driver.cuEventRecord(e, stream), "cuEventRecord")
        return e
    }

    func end(_ start: Handle, _ name: String, _ stream: Handle) {
        let e = event()
        driver.must(driver.cuEventRecord(e, stream), "cuEventRecord")
        pending.append((name, start, e))
        if pending.count >= 4096 { collect() }
    }

    /// Waits for the recorded work and adds its times to the totals.
    func collect() {
        guard let last = pending.last else { return }
        driver.must(driver.cuEventSynchronize(last.end), "cuEventSynchronize")
        for p in pending {
            var ms: Float = 0
            driver.must(driver.cuEventElapsedTime(&ms, p.start, p.end), "cuEventElapsedTime")
            let t = totals[p.name] ?? (0, 0)
            totals[p.name] = (t.calls + 1, t.ms + Double(ms))
            spare.append(p.start)
            spare.append(p.end)
        }
        pending.removeAll(keepingCapacity: true)
    }

    func reset() { collect(); totals = [:] }

    /// (name, calls, total ms), largest total first.
    func report() -> [(name: String, calls: Int, ms: Double)] {
        collect()
        return totals.map { ($0.key, $0.value.calls, $0.value.ms) }.sorted { $0.ms > $1.ms }
    }
}
