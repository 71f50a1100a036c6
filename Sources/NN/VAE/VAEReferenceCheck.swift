import TensorCore
import Formats

/// Compares this AutoencoderKL with reference outputs of diffusers' (the folder format of
/// `fixtures/latent/README.md`): `config.json`, `diffusion_pytorch_model.safetensors` and `reference.safetensors`
/// holding the inputs `images` [B, C, H, W] and/or `latents` [B', L, h, w] and any of the outputs
/// `posterior_mean`, `posterior_std`, `posterior_logvar`, `roundtrip` (decoding of the posterior mean; all of
/// `images`) and `decoded` (of `latents`). Everything is derived from the files; every problem (a missing
/// file, a tensor that is not one of these, a shape that does not fit the config, a non-finite value) is one
/// `ModelError` naming the file.
public enum VAEReferenceCheck {
    /// The largest relative error ||out - ref|| / ||ref|| accepted for every tensor.
    public static let tolerance = 1e-4
    public static let referenceFileName = "reference.safetensors"

    public struct Comparison: Equatable, Sendable {
        public var name: String
        public var relativeError: Double
        public var passed: Bool { relativeError <= VAEReferenceCheck.tolerance }
    }

    /// The outputs each input leads to, in the order they are reported.
    static let outputsOfImages = ["posterior_mean", "posterior_std", "posterior_logvar", "roundtrip"]
    static let outputsOfLatents = ["decoded"]

    /// Loads the folder's model and reference, computes every output the reference holds and compares them.
    public static func run(directory: String, on device: Device = .default) throws -> [Comparison] {
        let vae = try AutoencoderKL(directory: directory, on: device)
        let path = directory + "/" + referenceFileName
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try compare(vae, reference: file, source: path, on: device)
    }

    /// Compares `vae` with the reference `file` (`source` names it in errors).
    public static func compare(_ vae: AutoencoderKL, reference file: SafetensorsFile, source: String,
                               on device: Device = .default) throws -> [Comparison] {
        func fail(_ what: String) -> ModelError { ModelError("\(source): \(what)") }
        let known = Set(["images", "latents"] + outputsOfImages + outputsOfLatents)
        if let other = file.tensors.first(where: { !known.contains($0.name) }) {
            throw fail("unexpected tensor \"\(Checkpoint.safeName(other.name))\" (known: \(known.sorted().joined(separator: ", ")))")
        }
        func tensor(_ name: String) throws -> Tensor? {
            guard let a = file[name] else { return nil }
            let values = a.floats()
            if let k = values.firstIndex(where: { !$0.isFinite }) { throw fail("tensor \"\(name)\" holds a non-finite value at flat index \(k)") }
            return Tensor(values, shape: a.shape, on: device)
        }
        func expectShape(_ name: String, _ actual: [Int], _ expected: [Int]) throws {
            guard actual == expected else {
                throw fail("tensor \"\(name)\" has shape \(Checkpoint.shapeText(actual)), but the model gives \(Checkpoint.shapeText(expected))")
            }
        }
        var computed: [(name: String, value: Tensor)] = []
        for (input, outputs) in [("images", outputsOfImages), ("latents", outputsOfLatents)] {
            let wanted = outputs.filter { file[$0] != nil }
            guard !wanted.isEmpty else { continue }
            guard let x = try tensor(input) else { throw fail("tensor \"\(wanted[0])\" needs the input \"\(input)\", which is missing") }
            do {
                if input == "images" {
                    let posterior = try vae.encode(x)
                    let byName = ["posterior_mean": posterior.mean, "posterior_std": posterior.std,
                                  "posterior_logvar": posterior.logVariance]
                    for name in wanted {
                        computed.append((name, name == "roundtrip" ? try vae.decode(posterior.mean) : byName[name]!))
                    }
                } else {
                    computed.append(("decoded", try vae.decode(x)))
                }
            } catch let e as ModelError { throw fail("tensor \"\(input)\": \(e.message)") }
        }
        guard !computed.isEmpty else {
            throw fail("holds none of the outputs \((outputsOfImages + outputsOfLatents).joined(separator: ", "))")
        }
        return try computed.map { name, value in
            let reference = try tensor(name)!
            try expectShape(name, reference.shape, value.shape)
            return Comparison(name: name, relativeError: relativeError(value, reference))
        }
    }

    /// ||a - b|| / ||b|| in float64 (0 when both are zero, infinite when only the reference is).
    public static func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
        let x = a.doubles, y = b.doubles
        precondition(x.count == y.count, "relative error of tensors of \(x.count) and \(y.count) values")
        var difference = 0.0, reference = 0.0
        for i in x.indices {
            difference += (x[i] - y[i]) * (x[i] - y[i])
            reference += y[i] * y[i]
        }
        if reference == 0 { return difference == 0 ? 0 : .infinity }
        return (difference / reference).squareRoot()
    }
}
