import TensorCore
import NN
import TVM
#if canImport(Glibc)
import Glibc
#endif

/// `tvm reference-check FILE`: this implementation against reference tensors of the official code.
struct ReferenceCheckCommand: Command {
    let name = "reference-check"
    let summary = "compare DiT, TVM loss, gradients and samples with an official reference file"
    let help = """
        tvm reference-check FILE [--tolerance X] [--tf32|--bf16]
          Checks this implementation against reference tensors from the official PyTorch code (format:
          shared/fixtures/README.md): the DiT output F, the flow map f(x_t, t, s) and d/ds f, the per-row TVM loss
          terms, the gradient of the mean loss for every parameter (through the JVP), and the 1/2/4-step samples.
          Prints each tensor's relative error ||out - ref|| / ||ref|| and exits with status 1 if any is above the
          tolerance (default 1e-4), or if the file is malformed or inconsistent with its config. On the GPU,
          --tf32 / --bf16 run the matrix products in that precision (to measure its errors; raise the tolerance).
        """

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "reference-check", args, options: ["tolerance"], switches: ["tf32", "bf16"])
        try a.expectPositional(1, "one reference file")
        let precision = applyProductPrecision(a)
        let tolerance = try a.double("tolerance", default: ReferenceCheck.tolerance, range: 0...1)
        let path = a.positional[0]
        let start = now()
        let results: [ReferenceCheck.Comparison]
        do { results = try ReferenceCheck.run(file: path) } catch let e as ReferenceCheck.Failure {
            throw CLIError(e.message)
        }
        let width = max(28, (results.map(\.name.count).max() ?? 0) + 2)
        Console.out("tensor".padding(width) + "rel. error   ")
        var failed: [String] = []
        for r in results {
            let ok = r.relErr <= tolerance
            if !ok { failed.append(r.name) }
            Console.out(r.name.padding(width) + scientific(r.relErr).padding(13) + (ok ? "ok" : "FAIL"))
        }
        let worst = results.max { $0.relErr < $1.relErr }
        Console.out("\(results.count) tensors compared in \(fmt(now() - start, 1)) s; largest error \(worst.map { scientific($0.relErr) + " (" + $0.name + ")" } ?? "-"); tolerance \(scientific(tolerance))\(precision)")
        if !failed.isEmpty {
            throw CLIError("\(failed.count) of \(results.count) tensors exceed the tolerance: \(failed.prefix(5).joined(separator: ", "))\(failed.count > 5 ? ", ..." : "")")
        }
    }
}

/// 1.234e-05 style, for errors spanning many orders of magnitude.
func scientific(_ v: Double) -> String {
    guard v.isFinite else { return "\(v)" }
    if v == 0 { return "0" }
    var e = Int(log10(Swift.abs(v)).rounded(.down))
    var m = v / pow(10, Double(e))
    if Swift.abs(m) >= 9.9995 { m /= 10; e += 1 }
    return fmt(m, 3) + "e" + (e < 0 ? "-" : "+") + (Swift.abs(e) < 10 ? "0" : "") + "\(Swift.abs(e))"
}
