import TensorCore
import NN
import TVM
import Data
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// `tvm reference-check PATH`: this implementation against reference outputs of the official code, diffusers or
/// PIL; what is compared follows from what PATH is.
struct ReferenceCheckCommand: Command {
    let name = "reference-check"
    let summary = "compare with reference outputs of the official code (DiT, TVM, samples), diffusers' VAE or PIL"
    let help = """
        tvm reference-check FILE.safetensors|FILE.pkl|DIR [--tolerance X] [--tf32|--bf16]
          Checks this implementation against reference tensors and prints each one's error; exits with status 1
          if any is beyond the tolerance, or if the reference is malformed or inconsistent with its model.
          FILE.safetensors: a TVM reference of the official PyTorch code (format: shared/fixtures/README.md): the
            DiT output F, the flow map f(x_t, t, s) and d/ds f, the per-row TVM loss terms, the gradient of the
            mean loss for every parameter (through the JVP), and the 1/2/4-step samples.
          FILE.pkl (or .pt): a network pickled by the official code, read without running anything in it, sampled
            here from the noise and labels of FILE_samples.safetensors beside it and compared with the official
            sampler's outputs there (network key, guidance scale and step counts from its metadata).
          DIR with config.json and diffusion_pytorch_model.safetensors: a diffusers AutoencoderKL and its
            reference.safetensors (posterior, decoded latents, round trip).
          DIR with images and reference.safetensors: image preparation against PIL (decoding, the ADM center
            crop); every pixel must be within 1 gray level.
          Relative errors ||out - ref|| / ||ref|| are held to --tolerance (default 1e-4). On the GPU, --tf32 /
          --bf16 run the matrix products in that precision (to measure its errors; raise the tolerance).
        """

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "reference-check", args, options: ["tolerance"], switches: ["tf32", "bf16"])
        try a.expectPositional(1, "one reference file or folder")
        let precision = applyProductPrecision(a)
        let tolerance = try a.double("tolerance", default: ReferenceCheck.tolerance, range: 0...1)
        let path = a.positional[0]
        let start = now()
        let results: [(name: String, error: Double)]
        switch try ReferenceKind(path) {
        case .tvmReference:
            do { results = try ReferenceCheck.run(file: path).map { ($0.name, $0.relErr) } }
            catch let e as ReferenceCheck.Failure { throw CLIError(e.message) }
        case .officialPickle:
            do { results = try OfficialSampleCheck.run(picklePath: path).map { ($0.name, $0.relErr) } }
            catch let e as ReferenceCheck.Failure { throw CLIError(e.message) }
        case .vae:
            results = try VAEReferenceCheck.run(directory: path).map { ($0.name, $0.relativeError) }
        case .imagePreparation:
            if a.string("tolerance") != nil {
                throw CLIError("--tolerance is for relative errors; an image-preparation check allows \(fmt(ImageReferenceCheck.tolerance, 0)) gray level", usage: true)
            }
            try checkImagePreparation(folder: path, start: start)
            return
        }
        let width = max(28, (results.map(\.name.count).max() ?? 0) + 2)
        Console.out("tensor".padding(width) + "rel. error   ")
        var failed: [String] = []
        for r in results {
            let ok = r.error <= tolerance
            if !ok { failed.append(r.name) }
            Console.out(r.name.padding(width) + scientific(r.error).padding(13) + (ok ? "ok" : "FAIL"))
        }
        let worst = results.max { $0.error < $1.error }
        Console.out("\(results.count) tensors compared in \(fmt(now() - start, 1)) s; largest error \(worst.map { scientific($0.error) + " (" + $0.name + ")" } ?? "-"); tolerance \(scientific(tolerance))\(precision)")
        try failIfAny(failed, of: results.count)
    }

    /// Each tensor's agreement with PIL, pixel by pixel.
    func checkImagePreparation(folder: String, start: Double) throws {
        let results = try ImageReferenceCheck.run(folder: folder)
        let width = max(28, (results.map(\.tensor.count).max() ?? 0) + 2)
        Console.out("tensor".padding(width) + "exact".padding(10) + "off by 1".padding(10) + "worse".padding(8) + "max diff")
        var failed: [String] = []
        for r in results {
            if !r.withinTolerance { failed.append(r.tensor) }
            Console.out(r.tensor.padding(width) + "\(r.exact)".padding(10) + "\(r.offByOne)".padding(10) + "\(r.worse)".padding(8)
                        + fmt(r.maxDifference, 0).padding(9) + (r.withinTolerance ? "ok" : "FAIL"))
        }
        let worst = results.map(\.maxDifference).max() ?? 0
        Console.out("\(results.count) tensors compared in \(fmt(now() - start, 1)) s; largest difference \(fmt(worst, 0)) gray levels; "
                    + "tolerance \(fmt(ImageReferenceCheck.tolerance, 0))")
        try failIfAny(failed, of: results.count)
    }

    func failIfAny(_ failed: [String], of count: Int) throws {
        guard failed.isEmpty else {
            throw CLIError("\(failed.count) of \(count) tensors exceed the tolerance: \(failed.prefix(5).joined(separator: ", "))\(failed.count > 5 ? ", ..." : "")")
        }
    }
}

/// What a reference path holds, told apart by the path alone (the checks themselves report what is wrong inside).
enum ReferenceKind {
    case tvmReference, officialPickle, vae, imagePreparation

    init(_ path: String) throws {
        guard FileSystem.exists(path) else { throw CLIError("\(path): no such file or folder") }
        if FileSystem.isDirectory(path) {
            if FileSystem.exists(path + "/" + AutoencoderKL.configFileName) || FileSystem.exists(path + "/" + AutoencoderKL.weightsFileName) {
                self = .vae
            } else if FileSystem.exists(path + "/" + ImageReferenceCheck.referenceFileName) {
                self = .imagePreparation
            } else {
                throw CLIError("\(path): a folder without \(ImageReferenceCheck.referenceFileName) or \(AutoencoderKL.configFileName): "
                               + "neither a VAE nor an image-preparation reference")
            }
        } else {
            let lower = path.lowercased()
            self = lower.hasSuffix(".pkl") || lower.hasSuffix(".pt") ? .officialPickle : .tvmReference
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
