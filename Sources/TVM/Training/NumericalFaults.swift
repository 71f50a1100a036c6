#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// What a training step does with a numerical fault (`tvm train --on-fault`). Whatever the policy, a step
/// that is rejected changes no weights, no optimizer state and no EMA, so a fault never reaches the
/// teacher or the evaluation weights.
public enum FaultPolicy: String, CaseIterable, Sendable {
    /// The official code's behaviour: loss rows that are NaN or infinite are zeroed and the step trains on
    /// the other rows. A step that is still not finite (its gradient), a loss spike or an exploding gradient
    /// belongs to no single row and is skipped.
    case zeroRows = "zero-rows"
    /// Any fault skips the whole step (the step counter and the random stream still advance).
    case skip
    /// Any fault stops the run before the step updates anything.
    case stop
}

/// When a step counts as faulty. The relative detectors compare with the median of recent steps (a median,
/// not a mean, so one earlier spike does not hide the next) and stay quiet for `warmup` steps, while the
/// loss is still falling fast from its initial value.
public struct FaultDetection: Equatable, Sendable {
    public var policy: FaultPolicy = .zeroRows
    /// A loss above this multiple of the median recent loss is a spike (nil: not checked).
    public var lossSpikeFactor: Double? = 10
    /// A gradient norm above this multiple of the median recent norm is an explosion (nil: not checked).
    public var gradientSpikeFactor: Double? = 20
    /// A gradient norm above this value is an explosion at any step, warm-up included (nil: no limit).
    public var gradientNormLimit: Double?
    /// Steps with finite figures seen before the relative detectors act.
    public var warmup = 100
    /// How many recent steps the medians cover.
    public var window = 100
    public init() {}
}

/// One fault: what went wrong, at which step, in which term, and what was done about it.
public struct NumericalFault: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case nonFiniteLoss = "non-finite loss"
        case nonFiniteGradient = "non-finite gradient"
        case lossSpike = "loss spike"
        case explodingGradient = "exploding gradient"
    }

    public enum Action: String, Sendable {
        /// The non-finite rows were zeroed and the step updated the weights from the others.
        case zeroedRows = "the non-finite rows were zeroed (as the official code does) and the step trained on the rest"
        case skipped = "the step was skipped (no weights, optimizer state or EMA changed)"
        case stopped = "stopping before the step updates anything"
    }

    public var kind: Kind
    public var step: Int
    /// The offending term: "terminal-velocity term", "flow-matching term", both joined by "and", or "loss"
    /// (methods without separate terms); nil for the gradient, which the detail then attributes by term.
    public var term: String?
    /// The numbers behind the verdict, and for a non-finite value where it came from (data batch or network).
    public var detail: String
    public var action: Action

    public var description: String {
        "step \(step): \(kind.rawValue)\(term.map { " in the " + $0 } ?? ""): \(detail); \(action.rawValue)"
    }
}

/// The fault checks and the recent history they compare with. The history is part of a training
/// checkpoint (`state`), so a resumed run judges its steps exactly as the uninterrupted run would.
public struct FaultMonitor: Equatable, Sendable {
    public var detection: FaultDetection
    /// Steps whose figures were all finite (no zeroed rows), since the start of the run.
    public private(set) var seen = 0
    private(set) var losses: [Double] = []
    private(set) var terminals: [Double] = []
    private(set) var flowMatchings: [Double] = []
    private(set) var norms: [Double] = []

    public init(detection: FaultDetection) { self.detection = detection }

    /// Judges one step (before its update) and adds its finite figures to the history. Returns the fault
    /// that decides what the step does, or nil for a clean step.
    public mutating func inspect(_ f: StepFigures, step: Int) -> NumericalFault? {
        defer { record(f) }
        let reject: NumericalFault.Action = detection.policy == .stop ? .stopped : .skipped
        var zeroed: NumericalFault?
        if f.nonFiniteRows > 0 || !f.loss.isFinite {
            let source = f.nonFiniteData > 0
                ? "\(f.nonFiniteData) NaN/Inf value\(f.nonFiniteData == 1 ? "" : "s") in the data batch"
                : "the data batch is finite (largest magnitude \(short(f.dataMagnitude))), so the network produced them"
            let term: String
            if f.terminal == nil {
                term = "loss"
            } else {
                var names: [String] = []
                if f.nonFiniteTerminalRows > 0 { names.append("terminal-velocity term (\(rowCount(f.nonFiniteTerminalRows)))") }
                if f.nonFiniteFlowMatchingRows > 0 { names.append("flow-matching term (\(rowCount(f.nonFiniteFlowMatchingRows)))") }
                term = names.isEmpty ? "loss" : names.joined(separator: " and ")
            }
            let rowText = f.terminal == nil ? "" : "\(f.nonFiniteRows) of \(f.rows) rows NaN or infinite; "
            // Zeroing rows only helps when the rest of the step is finite: 0 * NaN in backward is still NaN.
            let trainable = detection.policy == .zeroRows && f.loss.isFinite && f.gradNorm.isFinite
            if !trainable {
                let still = detection.policy == .zeroRows && f.loss.isFinite ? ", and the gradient is still not finite after zeroing them" : ""
                return NumericalFault(kind: .nonFiniteLoss, step: step, term: term, detail: rowText + source + still, action: reject)
            }
            zeroed = NumericalFault(kind: .nonFiniteLoss, step: step, term: term, detail: rowText + source, action: .zeroedRows)
        }
        if !f.gradNorm.isFinite {
            return NumericalFault(kind: .nonFiniteGradient, step: step, term: nil,
                                  detail: "norm \(f.gradNorm) with a finite loss \(f.loss), from the backward pass of the network",
                                  action: reject)
        }
        if let limit = detection.gradientNormLimit, f.gradNorm > limit {
            return NumericalFault(kind: .explodingGradient, step: step, term: nil,
                                  detail: "norm \(short(f.gradNorm)) is above the limit \(short(limit))\(termRatios(f))",
                                  action: reject)
        }
        // A zeroed step's loss covers fewer rows, so it is no basis for a spike verdict.
        if zeroed == nil, seen >= detection.warmup, let k = detection.lossSpikeFactor, let m = median(losses), f.loss > k * m {
            return NumericalFault(kind: .lossSpike, step: step, term: spikingTerm(f),
                                  detail: "loss \(short(f.loss)) is \(short(f.loss / m))x the median \(short(m)) of the last \(losses.count) steps\(termRatios(f))",
                                  action: reject)
        }
        if seen >= detection.warmup, let k = detection.gradientSpikeFactor, let m = median(norms), f.gradNorm > k * m {
            return NumericalFault(kind: .explodingGradient, step: step, term: nil,
                                  detail: "norm \(short(f.gradNorm)) is \(short(f.gradNorm / m))x the median \(short(m)) of the last \(norms.count) steps\(termRatios(f))",
                                  action: reject)
        }
        return zeroed
    }

    /// The TVM term that moved most against its own median.
    func spikingTerm(_ f: StepFigures) -> String {
        guard let rt = ratio(f.terminal, terminals), let rf = ratio(f.flowMatching, flowMatchings) else { return "loss" }
        return rt >= rf ? "terminal-velocity term" : "flow-matching term"
    }

    /// "; terminal-velocity term 12.0x its median, flow-matching term 1.1x": which term drove a verdict.
    func termRatios(_ f: StepFigures) -> String {
        guard let rt = ratio(f.terminal, terminals), let rf = ratio(f.flowMatching, flowMatchings) else { return "" }
        return "; terminal-velocity term \(short(rt))x its median, flow-matching term \(short(rf))x"
    }

    func ratio(_ value: Double?, _ history: [Double]) -> Double? {
        guard let value, let m = median(history), m > 0 else { return nil }
        return value / m
    }

    mutating func record(_ f: StepFigures) {
        // A step with zeroed rows has a loss over fewer rows: it says nothing about the usual level.
        guard f.loss.isFinite && f.gradNorm.isFinite && f.nonFiniteRows == 0 else { return }
        seen += 1
        func push(_ v: Double?, _ history: inout [Double]) {
            guard let v, v.isFinite else { return }
            history.append(v)
            if history.count > detection.window { history.removeFirst(history.count - detection.window) }
        }
        push(f.loss, &losses)
        push(f.terminal, &terminals)
        push(f.flowMatching, &flowMatchings)
        push(f.gradNorm, &norms)
    }

    /// The history as text for checkpoint metadata; every value is written in Swift's shortest form that
    /// reads back to the same bits.
    public var state: String {
        func list(_ xs: [Double]) -> String { xs.map { "\($0)" }.joined(separator: ",") }
        return "seen=\(seen);loss=\(list(losses));terminal=\(list(terminals));fm=\(list(flowMatchings));norm=\(list(norms))"
    }

    /// Restores the history from `state`; nil when the text is malformed.
    public init?(detection: FaultDetection, state: String) {
        self.detection = detection
        var fields: [String: String] = [:]
        for part in state.split(separator: ";", omittingEmptySubsequences: false) {
            guard let eq = part.firstIndex(of: "=") else { return nil }
            fields[String(part[..<eq])] = String(part[part.index(after: eq)...])
        }
        func list(_ key: String) -> [Double]? {
            guard let text = fields[key] else { return nil }
            if text.isEmpty { return [] }
            let values = text.split(separator: ",", omittingEmptySubsequences: false).map { Double($0) }
            guard values.allSatisfy({ $0?.isFinite == true }) else { return nil }
            return values.map { $0! }
        }
        guard let seenText = fields["seen"], let seen = Int(seenText), seen >= 0, let losses = list("loss"),
              let terminals = list("terminal"), let flowMatchings = list("fm"), let norms = list("norm") else { return nil }
        self.seen = seen
        // A checkpoint from a run with a longer window keeps only what this window covers.
        self.losses = Array(losses.suffix(detection.window))
        self.terminals = Array(terminals.suffix(detection.window))
        self.flowMatchings = Array(flowMatchings.suffix(detection.window))
        self.norms = Array(norms.suffix(detection.window))
    }
}

func rowCount(_ n: Int) -> String { n == 1 ? "1 row" : "\(n) rows" }

func median(_ xs: [Double]) -> Double? {
    guard !xs.isEmpty else { return nil }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Four significant digits: enough to read a fault line, short enough to keep it one line. Dividing a whole
/// number by an exact power of ten prints as the decimal itself (no 0.30000000000000004).
func short(_ v: Double) -> String {
    guard v.isFinite, v != 0 else { return "\(v)" }
    let e = Int(log10(Swift.abs(v)).rounded(.down))
    if e >= 3 && e < 6 { return "\(v.rounded())" }
    if e >= -3 && e < 3 {
        let scale = pow(10, Double(3 - e))
        return "\((v * scale).rounded() / scale)"
    }
    let mantissa = v / pow(10, Double(e))
    return "\((mantissa * 1000).rounded() / 1000)e\(e)"
}
