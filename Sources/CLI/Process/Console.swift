#if canImport(Glibc)
import Glibc
#endif

/// Terminal output: messages to stderr, results to stdout, and a one-line progress bar.
enum Console {
    /// A note about the setup (the CPU fallback of --device auto), held back until the command prints
    /// anything: a command refused for bad input then prints only its one error line.
    nonisolated(unsafe) static var pendingNote: String?
    /// Set in the ranks other than 0 of a data-parallel run: one process speaks for the run.
    nonisolated(unsafe) static var quiet = false

    /// Whether a progress bar's line on the terminal stopped short of its end (a time budget, an error): the next
    /// line starts on a line of its own.
    nonisolated(unsafe) static var barLineOpen = false

    static func info(_ s: String) {
        guard !quiet else { return }
        endBarLine()
        flushNote()
        fputs(s + "\n", stderr)
    }

    static func out(_ s: String) {
        endBarLine()
        flushNote()
        print(s)
    }

    static func endBarLine() {
        guard barLineOpen else { return }
        barLineOpen = false
        fputs("\n", stderr)
    }

    static func flushNote() {
        guard let note = pendingNote else { return }
        pendingNote = nil
        if !quiet { fputs(note + "\n", stderr) }
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "--:--" }
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600):" + pad2((t / 60) % 60) + ":" + pad2(t % 60) : "\(t / 60):" + pad2(t % 60)
}

private func pad2(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }

func fmt(_ v: Double, _ digits: Int = 4) -> String {
    guard v.isFinite else { return "\(v)" }
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let r = (v * p).rounded() / p
    var s = "\(r)"
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
    } else {
        s += "." + String(repeating: "0", count: digits)
    }
    return s
}

/// Progress on one stderr line, redrawn in place on a terminal at most 5 times a second (a plain line every 10 s
/// otherwise): training steps with the loss, or images done. The work ends at a count (`total`), at a time budget
/// (`seconds`), or at whichever comes first; the bar and the ETA follow the nearer end.
final class ProgressBar {
    let label: String
    let total: Int?
    let seconds: Double?
    /// Where this invocation started (the step resumed from): the rate and the ETA count only what runs now.
    let first: Int
    let start = now()
    var lastDraw = 0.0
    let tty = isatty(2) != 0

    init(_ label: String, total: Int?, seconds: Double? = nil, from first: Int = 0) {
        self.label = label
        self.total = total
        self.seconds = seconds
        self.first = first
    }

    /// "label [####....] step s/total loss L r it/s ETA" ("step s" with a time budget alone).
    func update(step: Int, loss: Double, extra: String = "") {
        redraw(step) { rate, eta, fraction in
            let width = 24, filled = Int(Double(width) * fraction)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let count = self.total.map { "\(step)/\($0)" } ?? "\(step)"
            return "\(self.label) [\(bar)] step \(count) loss \(fmt(loss)) \(fmt(rate, 1)) it/s ETA \(eta)\(extra)"
        }
    }

    /// "label: done/total images, r images/s, ETA".
    func update(images done: Int) {
        redraw(done) { rate, eta, _ in "\(self.label): \(done)/\(self.total ?? done) images, \(fmt(rate, 1)) images/s, ETA \(eta)" }
    }

    private func redraw(_ done: Int, _ line: (_ rate: Double, _ eta: String, _ fraction: Double) -> String) {
        guard !Console.quiet else { return }
        let t = now(), elapsed = t - start
        let finished = done == total
        guard finished || t - lastDraw >= (tty ? 0.2 : 10) else { return }
        lastDraw = t
        Console.flushNote()
        let rate = Double(done - first) / max(elapsed, 1e-9)
        var left = Double.infinity, fraction = 0.0
        if let total {
            left = Double(total - done) / max(rate, 1e-9)
            fraction = total > 0 ? Double(done) / Double(total) : 1
        }
        if let seconds {
            left = min(left, max(seconds - elapsed, 0))
            fraction = max(fraction, elapsed / max(seconds, 1e-9))
        }
        let text = line(rate, formatDuration(left), min(max(fraction, 0), 1))
        if tty {
            fputs("\r\u{1B}[2K" + text + (finished ? "\n" : ""), stderr)
            Console.barLineOpen = !finished
        } else {
            fputs(text + "\n", stderr)
        }
    }

    var elapsed: Double { now() - start }
}

/// SIGINT (Ctrl-C) and SIGTERM (what clusters send before preemption), caught so that a training run can end
/// its step and save its checkpoint; the handler only records the signal, and puts the default action back so
/// that a second one ends the process at once.
enum StopSignal {
    struct Received {
        let number: Int32
        var name: String { number == SIGINT ? "SIGINT" : "SIGTERM" }
    }

    /// The signal caught (0: none yet). Written by the handler, read by the training loop between steps.
    nonisolated(unsafe) private static var caught: Int32 = 0

    static var received: Received? { caught == 0 ? nil : Received(number: caught) }

    /// Installs the handlers; returns the question the training loop asks before every step.
    static func install() -> () -> Bool {
        caught = 0
        for s in [SIGINT, SIGTERM] {
            signal(s) { number in
                StopSignal.caught = number
                signal(number, SIG_DFL)
            }
        }
        return { caught != 0 }
    }
}
