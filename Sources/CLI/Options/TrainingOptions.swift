import TVM
import Formats

/// The numerical-fault options shared by both kinds of `tvm train`.
let faultOptionNames: Set<String> = ["on-fault", "loss-spike", "grad-spike", "grad-limit", "fault-warmup"]

let faultHelp = """
  Numerical faults (a NaN/Inf loss row, a non-finite gradient, a loss spike, an exploding gradient) are
  printed and logged with their step, the term at fault and where a NaN came from (data or network):
  --on-fault zero-rows|skip|stop  zero-rows (default, the official code's behaviour): NaN/Inf loss rows are
                    zeroed and the step trains on the rest; a step still not finite, a spike or an explosion
                    is skipped. skip: any fault skips the step. stop: any fault ends the run with one line,
                    keeping the last checkpoint. A rejected step never reaches the weights or any EMA.
  --loss-spike K    a loss above K x the median of the last 100 steps is a spike (default 10; 0: off)
  --grad-spike K    a gradient norm above K x its median of the last 100 steps is an explosion (default 20; 0: off)
  --grad-limit X    a gradient norm above X is an explosion at any step (default: no limit)
  --fault-warmup N  steps before the spike checks begin (default 100)
"""

func parseFaultOptions(_ a: Arguments) throws -> FaultDetection {
    var d = FaultDetection()
    let name = a.string("on-fault", default: d.policy.rawValue)
    guard let policy = FaultPolicy(rawValue: name.lowercased()) else {
        throw CLIError("--on-fault must be zero-rows, skip or stop, got '\(name)'", usage: true)
    }
    d.policy = policy
    // 0 switches a relative check off; below 1 it would flag ordinary steps, which vary around the median.
    func factor(_ flag: String, _ current: Double?) throws -> Double? {
        guard a.string(flag) != nil else { return current }
        let k = try a.double(flag, default: 0, range: 0...1e12)
        guard k == 0 || k > 1 else { throw CLIError("--\(flag) must be 0 (off) or a factor above 1, got \(k)", usage: true) }
        return k == 0 ? nil : k
    }
    d.lossSpikeFactor = try factor("loss-spike", d.lossSpikeFactor)
    d.gradientSpikeFactor = try factor("grad-spike", d.gradientSpikeFactor)
    if let limit = try a.optionalDouble("grad-limit") {
        guard limit > 0 else { throw CLIError("--grad-limit must be a positive number, got \(a.string("grad-limit") ?? "")", usage: true) }
        d.gradientNormLimit = limit
    }
    d.warmup = try a.int("fault-warmup", default: d.warmup, range: 0...100_000_000)
    return d
}

/// The settings as recorded in a training checkpoint's configuration.
func faultJSON(_ d: FaultDetection) -> [(String, JSONValue)] {
    [("on_fault", .string(d.policy.rawValue)), ("loss_spike", d.lossSpikeFactor.map { .number($0) } ?? .null),
     ("grad_spike", d.gradientSpikeFactor.map { .number($0) } ?? .null),
     ("grad_limit", d.gradientNormLimit.map { .number($0) } ?? .null), ("fault_warmup", .number(Double(d.warmup)))]
}

/// "0.999" (a fixed decay) or "power:GAMMA" (a window growing with the step count).
func parseEMA(_ s: String) throws -> EMASchedule {
    if s.hasPrefix("power:"), let g = Double(s.dropFirst(6)), g > 0, g.isFinite { return .power(gamma: g, max: 0.9999) }
    if let d = Double(s), d >= 0, d < 1 { return .fixed(d) }
    throw CLIError("--ema must be a decay in [0, 1) or power:GAMMA with GAMMA > 0, got '\(s)'", usage: true)
}

/// "A,B,...": the evaluation EMA, then extra EMAs of other widths kept alongside it (no two the same).
func parseEMAList(_ s: String) throws -> (first: EMASchedule, extra: [EMASchedule]) {
    let schedules = try commaSeparated(s).map(parseEMA)
    var seen = Set<String>()
    for e in schedules where !seen.insert(e.description).inserted {
        throw CLIError("--ema lists \(e.description) twice", usage: true)
    }
    return (schedules[0], Array(schedules.dropFirst()))
}
