import TensorCore
import Formats

extension AutoencoderKL {
    /// The files of a diffusers model folder (what `save_pretrained` writes, and what the Hub serves).
    public static let configFileName = "config.json"
    public static let weightsFileName = "diffusion_pytorch_model.safetensors"

    /// Older diffusers releases named the mid-block attention's projections differently; both are read.
    static let legacyAttentionNames = ["query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"]

    /// A model of `config`'s shapes with random weights, for timing: convolution and linear weights drawn from
    /// N(0, 1 / fan-in) so activations keep their size through the network, norm weights 1, every bias 0.
    public convenience init(randomWeightsFor config: VAEConfig, seed: UInt64, on device: Device = .default) {
        var rng = RandomGenerator(seed: seed)
        let parameters = ParameterSet()
        for (name, shape) in Self.parameterShapes(config) {
            let count = Shape.count(shape)
            let values: [Float] = shape.count == 1
                ? [Float](repeating: name.hasSuffix(".weight") ? 1 : 0, count: count)
                : rng.normalFloats(count).map { $0 / Float(count / shape[0]).squareRoot() }
            parameters[name] = Tensor(values, shape: shape, on: device)
        }
        self.init(config: config, parameters: parameters)
    }

    /// Loads `directory/config.json` and `directory/diffusion_pytorch_model.safetensors` (F32, F16, BF16 or F64;
    /// either attention key scheme) to `device` as float32. Any mismatch between the two files is one
    /// `ModelError` naming the weights file and the tensor.
    public convenience init(directory: String, on device: Device = .default) throws {
        let config = try VAEConfig.read(path: directory + "/" + Self.configFileName)
        let weightsPath = directory + "/" + Self.weightsFileName
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: weightsPath) } catch let e as FormatError { throw ModelError(e.message) }
        try self.init(config: config, weights: file, source: weightsPath, on: device)
    }

    /// Checks `file` against `config` (every tensor present, no other tensor, every shape, finite values) and
    /// builds the model on `device`. `source` names the file in errors.
    public convenience init(config: VAEConfig, weights file: SafetensorsFile, source: String, on device: Device = .default) throws {
        func fail(_ what: String) -> ModelError { ModelError("\(source): \(what)") }
        var byName: [String: NamedArray] = [:]
        for t in file.tensors {
            let name = Self.currentName(of: t.name)
            if let other = byName[name] {
                throw fail("tensors \"\(Checkpoint.safeName(other.name))\" and \"\(Checkpoint.safeName(t.name))\" are the same parameter")
            }
            byName[name] = t
        }
        let expected = Self.parameterShapes(config)
        // Names and shapes first, so a file that does not match is refused before any value is converted.
        for (name, shape) in expected {
            guard let t = byName[name] else {
                throw fail("missing tensor \"\(name)\" of shape \(Checkpoint.shapeText(shape)) (the config implies it)")
            }
            guard t.shape == shape else {
                throw fail("tensor \"\(Checkpoint.safeName(t.name))\" has shape \(Checkpoint.shapeText(t.shape)), "
                           + "but the config implies \(Checkpoint.shapeText(shape))")
            }
        }
        let known = Set(expected.map(\.name))
        if let extra = file.tensors.first(where: { !known.contains(Self.currentName(of: $0.name)) }) {
            throw fail("unexpected tensor \"\(Checkpoint.safeName(extra.name))\" (the config does not describe these weights)")
        }
        let p = ParameterSet()
        for (name, shape) in expected {
            let t = byName[name]!
            let values = t.floats()
            if let k = values.firstIndex(where: { !$0.isFinite }) {
                throw fail("tensor \"\(Checkpoint.safeName(t.name))\" holds a non-finite value at flat index \(k)")
            }
            p[name] = Tensor(values, shape: shape, on: device)
        }
        self.init(config: config, parameters: p)
    }

    /// The current-scheme name of a tensor: `....attentions.<i>.query.weight` becomes `....attentions.<i>.to_q.weight`
    /// (likewise key, value, proj_attn); every other name is returned as it is.
    static func currentName(of name: String) -> String {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 4, parts[parts.count - 4] == "attentions",
              let current = legacyAttentionNames[parts[parts.count - 2]] else { return name }
        return (parts.dropLast(2) + [current, parts[parts.count - 1]]).joined(separator: ".")
    }
}
