import NN
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

/// The optimizer options shared by both kinds of `tvm train`.
let optimizerOptionNames: Set<String> = ["warmup", "schedule", "betas", "eps", "weight-decay", "max-grad-norm"]

let optimizerHelp = """
  Optimizer (AdamW, computed as torch.optim.AdamW computes it; the defaults are the runs before these options):
  --warmup N        the learning rate rises linearly to --lr over the first N steps (default 0)
  --schedule constant|cosine[:END]|rsqrt[:REF]
                    after the warm-up: constant (default); cosine: half a cosine from --lr to zero at step END
                    (default --steps); rsqrt: --lr up to step REF (default the warm-up length), then
                    lr * sqrt(REF / step). The schedule follows the step count, skipped steps included.
  --betas B1,B2     Adam's moment decays (default 0.9,0.95)
  --eps X           Adam's epsilon (default 1e-8)
  --weight-decay X  decoupled weight decay, lr * X * weight per step (default 0)
  --max-grad-norm X scales the gradients down to a global norm of X before the update (default: no clipping;
                    --grad-limit instead rejects such a step as a fault)
"""

/// Reads the optimizer options into `config`; `steps` is the run's step count (the default end of a cosine).
func parseOptimizerOptions(_ a: Arguments, into config: inout TrainConfig, steps: Int?) throws {
    let warmup = try a.int("warmup", default: 0, range: 0...100_000_000)
    let schedule = a.string("schedule", default: "constant")
    let parts = schedule.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    let step = parts.count == 2 ? Int(parts[1]) : nil
    if parts.count == 2 && (step ?? 0) < 1 {
        throw CLIError("--schedule \(parts[0]):N needs a positive whole step number N, got '\(schedule)'", usage: true)
    }
    let decay: LearningRateSchedule.Decay
    switch parts[0].lowercased() {
    case "constant" where parts.count == 1:
        decay = .constant
    case "cosine":
        guard let end = step ?? steps else {
            throw CLIError("--schedule cosine needs the step it ends at: cosine:END, or --steps N", usage: true)
        }
        guard end > warmup else { throw CLIError("--schedule cosine:\(end) must end after the \(warmup) warm-up steps", usage: true) }
        decay = .cosine(end: end)
    case "rsqrt":
        guard let reference = step ?? (warmup > 0 ? warmup : nil) else {
            throw CLIError("--schedule rsqrt needs the step its decay starts at: rsqrt:REF, or --warmup N", usage: true)
        }
        decay = .inverseSquareRoot(reference: reference)
    default:
        throw CLIError("--schedule must be constant, cosine[:END] or rsqrt[:REF], got '\(schedule)'", usage: true)
    }
    config.schedule = LearningRateSchedule(warmup: warmup, decay: decay)
    let betas = a.string("betas", default: "\(config.beta1),\(config.beta2)")
    let b = commaSeparated(betas).map { Double($0) }
    guard b.count == 2, let b1 = b[0], let b2 = b[1], (0..<1).contains(b1), (0..<1).contains(b2) else {
        throw CLIError("--betas must be B1,B2 with both in [0, 1), got '\(betas)'", usage: true)
    }
    (config.beta1, config.beta2) = (b1, b2)
    config.eps = try a.double("eps", default: config.eps, range: 1e-30...1)
    config.weightDecay = try a.double("weight-decay", default: config.weightDecay, range: 0...1e6)
    if let norm = try a.optionalDouble("max-grad-norm") {
        guard norm > 0 else { throw CLIError("--max-grad-norm must be a positive number, got \(a.string("max-grad-norm") ?? "")", usage: true) }
        config.maxGradNorm = norm
    }
}

/// The optimizer settings as recorded in a training checkpoint's configuration (the schedule resolved).
func optimizerJSON(_ c: TrainConfig) -> [(String, JSONValue)] {
    [("beta1", .number(c.beta1)), ("beta2", .number(c.beta2)), ("eps", .number(c.eps)), ("weight_decay", .number(c.weightDecay)),
     ("warmup", .number(Double(c.schedule.warmup))), ("schedule", .string(c.schedule.decay.description)),
     ("max_grad_norm", c.maxGradNorm.map { .number($0) } ?? .null)]
}
