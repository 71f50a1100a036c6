import TensorCore
import Formats

/// Parameter sets to and from safetensors files, under the official state-dict names (optionally behind a
/// prefix such as "params." or "teacher."), so checkpoints move between this project and PyTorch.
public enum Checkpoint {
    /// Reads `path` and returns the tensors the model expects (see `parameters(from:...)`).
    public static func load(path: String, expected: [(name: String, shape: [Int])], prefix: String = "",
                            allowExtra: Bool = false, on device: Device = .default) throws -> ParameterSet {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try parameters(from: file, expected: expected, prefix: prefix, allowExtra: allowExtra,
                              source: path, on: device)
    }

    /// The tensors named `prefix + name` for each expected (name, shape), in the expected order, converted
    /// to float32 (from F32, F16, BF16 or F64). Throws a `ModelError` naming the tensor when one is missing,
    /// has another shape, or (unless `allowExtra`) when a tensor under `prefix` is not expected.
    /// Tensors outside `prefix` are ignored.
    public static func parameters(from file: SafetensorsFile, expected: [(name: String, shape: [Int])],
                                  prefix: String = "", allowExtra: Bool = false, source: String = "checkpoint",
                                  on device: Device = .default) throws -> ParameterSet {
        var byName: [String: NamedArray] = [:]
        for t in file.tensors where t.name.hasPrefix(prefix) { byName[String(t.name.dropFirst(prefix.count))] = t }
        let p = ParameterSet()
        var known = Set<String>()
        for (name, shape) in expected {
            known.insert(name)
            guard let t = byName[name] else {
                throw ModelError("\(source): missing tensor \"\(prefix)\(name)\" (expected shape \(shapeText(shape)))")
            }
            guard t.shape == shape else {
                throw ModelError("\(source): tensor \"\(prefix)\(name)\" has shape \(shapeText(t.shape)) but the model expects \(shapeText(shape))")
            }
            p[name] = Tensor(t.floats(), shape: shape, on: device)
        }
        if !allowExtra {
            // Report the first unknown tensor in file order, so the message is stable.
            for t in file.tensors where t.name.hasPrefix(prefix) && !known.contains(String(t.name.dropFirst(prefix.count))) {
                throw ModelError("\(source): unexpected tensor \"\(safeName(t.name))\" that the model does not have")
            }
        }
        return p
    }

    /// The named arrays of a parameter set (values read back from the device), e.g. to join several sets in one file.
    public static func arrays(_ params: ParameterSet, prefix: String = "", dtype: TensorDType = .f32) -> [NamedArray] {
        params.pairs.map { name, t in
            NamedArray(name: prefix + name, shape: t.shape, floats: t.floats, dtype: dtype)
        }
    }

    /// Writes `params` (F32 by default, or BF16 / F16 / F64) with string metadata, atomically.
    public static func save(_ params: ParameterSet, path: String, metadata: [(String, String)] = [],
                            prefix: String = "", dtype: TensorDType = .f32) throws {
        let file = SafetensorsFile(metadata: metadata, tensors: arrays(params, prefix: prefix, dtype: dtype))
        do { try file.write(path: path) } catch let e as FormatError { throw ModelError(e.message) }
    }

    public static func shapeText(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ", ") + "]" }

    /// A tensor name from a file, shortened and stripped of control characters for a one-line message.
    public static func safeName(_ s: String) -> String {
        var out = ""
        for (i, u) in s.unicodeScalars.enumerated() {
            if i >= 120 { out += "..."; break }
            out.unicodeScalars.append(u.value < 0x20 || u.value == 0x7F ? "?" : u)
        }
        return out
    }
}

extension DiT {
    /// Loads this model's parameters from a safetensors checkpoint with the official names. A missing
    /// `pos_embed` is filled in from its formula (it is fixed, and some exports drop it).
    public func loadParameters(path: String, prefix: String = "", allowExtra: Bool = false,
                               on device: Device = .default) throws -> ParameterSet {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try parameters(from: file, prefix: prefix, allowExtra: allowExtra, source: path, on: device)
    }

    public func parameters(from file: SafetensorsFile, prefix: String = "", allowExtra: Bool = false,
                           source: String = "checkpoint", on device: Device = .default) throws -> ParameterSet {
        let specs = parameterSpecs, positions = layers.positions
        let hasPos = file[prefix + positions.key] != nil
        let expected = specs.filter { hasPos || $0.key != positions.key }.map { (name: $0.key, shape: $0.shape) }
        let loaded = try Checkpoint.parameters(from: file, expected: expected, prefix: prefix,
                                               allowExtra: allowExtra, source: source, on: device)
        if hasPos { return loaded }
        // Rebuilding allocates [1, tokens, hidden] that no bytes in the file stand for, and a training
        // checkpoint names its own model: a 20 KB file claiming a 16384x16384 input with patch 1 would take
        // 12 GB here. So it is rebuilt only when no larger than the tensors the file does hold (in real
        // checkpoints it is a small fraction of them).
        let held = expected.reduce(0) { $0 + Shape.count($1.shape) }
        guard positions.count <= held else {
            throw ModelError("\(source): no tensor \"\(prefix)\(positions.key)\", and rebuilding it ([1, \(config.tokens), \(config.hidden)]) "
                             + "would take more memory than all \(held) values the file holds; store it in the checkpoint")
        }
        let p = ParameterSet()
        for spec in specs { p[spec.key] = spec.key == positions.key ? positions.fixedTensor(on: device)! : loaded[spec.key] }
        return p
    }
}
