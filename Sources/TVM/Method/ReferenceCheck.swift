import TensorCore
import NN
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// Compares this implementation (DiT, TVM objective with gradients through the JVP, few-step sampler) with
/// reference tensors from the official PyTorch code, in the format of `fixtures/README.md`.
///
/// Everything read from the file is validated before use (config fields, every tensor's presence and shape
/// against the config, batch sizes, finite values, one-hot labels, times and guidance in range), and any
/// problem is one `ReferenceCheck.Failure` line.
public enum ReferenceCheck {
    /// The largest relative error ||out - ref|| / ||ref|| accepted for every tensor.
    public static let tolerance = 1e-4

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public let message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// The model and run description in `__metadata__.config`.
    public struct Config: Equatable {
        public var patch, hidden, depth, heads, res, channels, classes, batch: Int
        public var mlpRatio: Double
        public var scaleParam: Bool
        public var sampleCFG: Double

        public var dit: DiTConfig {
            DiTConfig(patch: patch, hidden: hidden, depth: depth, heads: heads, mlpRatio: mlpRatio, inputSize: res,
                      inChannels: channels, numClasses: classes, modulationNorm: true)
        }

        /// Parses and validates the JSON string.
        public static func parse(_ text: String) throws -> Config {
            let json: JSONValue
            do { json = try JSONValue.parse(text) } catch { throw Failure("metadata config is not valid JSON: \(error)") }
            guard json.object != nil else { throw Failure("metadata config is not a JSON object") }
            func int(_ key: String, min: Int = 1) throws -> Int {
                guard let v = json[key] else { throw Failure("metadata config has no \"\(key)\"") }
                guard let i = v.int, i >= min, i <= 1 << 24 else {
                    throw Failure("metadata config \"\(key)\" must be a whole number in \(min)...\(1 << 24), got \(v.serialized())")
                }
                return i
            }
            func number(_ key: String, default d: Double? = nil) throws -> Double {
                guard let v = json[key] else {
                    if let d { return d }
                    throw Failure("metadata config has no \"\(key)\"")
                }
                guard let x = v.double, x.isFinite, x > 0 else {
                    throw Failure("metadata config \"\(key)\" must be a positive number, got \(v.serialized())")
                }
                return x
            }
            let (patch, hidden, depth, heads) = (try int("patch"), try int("hidden"), try int("depth"), try int("heads"))
            let (res, channels, classes, batch) = (try int("res"), try int("channels"), try int("classes", min: 0), try int("batch"))
            guard let sp = json["scale_param"] else { throw Failure("metadata config has no \"scale_param\"") }
            guard let scaleParam = sp.bool else {
                throw Failure("metadata config \"scale_param\" must be true or false, got \(sp.serialized())")
            }
            let c = Config(patch: patch, hidden: hidden, depth: depth, heads: heads, res: res, channels: channels,
                           classes: classes, batch: batch, mlpRatio: try number("mlp_ratio", default: 4),
                           scaleParam: scaleParam, sampleCFG: try number("sample_cfg"))
            do { try c.dit.validate() } catch { throw Failure("metadata config: \(error)") }
            return c
        }
    }

    public struct Comparison: Equatable {
        public var name: String
        public var relErr: Double
        public var passed: Bool { relErr <= ReferenceCheck.tolerance }
    }

    /// Reads, validates and checks one reference file.
    public static func run(file path: String, on device: Device = .default) throws -> [Comparison] {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError { throw Failure(e.message) }
        return try run(file, source: path, on: device)
    }

    /// Validated inputs of one reference file.
    struct Case {
        var config: Config
        var net: DiT
        var student: ParameterSet
        var teacher: ParameterSet
        var tensors: [String: Tensor]
        var sampleSteps: [Int]
        subscript(_ name: String) -> Tensor { tensors[name]! }
    }

    static func load(_ file: SafetensorsFile, source: String, on device: Device) throws -> Case {
        func fail(_ s: String) -> Failure { Failure("\(source): \(s)") }
        guard let text = file.metadata("config") else { throw fail("no \"config\" entry in __metadata__") }
        let config: Config
        do { config = try Config.parse(text) } catch let e as Failure { throw fail(e.message) }
        let net: DiT
        do { net = try DiT(config.dit) } catch { throw fail("\(error)") }
        // Parameter sets: names and shapes against the config, then finite values.
        var sets: [ParameterSet] = []
        for prefix in ["params.", "teacher."] {
            do {
                sets.append(try net.parameters(from: file, prefix: prefix, allowExtra: false, source: source, on: device))
            } catch let e as ModelError { throw Failure(e.message) }
        }
        func checkFinite(_ name: String, _ a: NamedArray) throws {
            if a.floats().contains(where: { !$0.isFinite }) { throw fail("tensor \"\(name)\" holds NaN or infinite values") }
        }
        for prefix in ["params.", "teacher."] {
            for (name, _) in net.parameterShapes { if let a = file[prefix + name] { try checkFinite(prefix + name, a) } }
        }

        let (B, C, R, K) = (config.batch, config.channels, config.res, config.classes)
        guard let latents = file["inputs.latents"] else { throw fail("missing tensor \"inputs.latents\"") }
        let Bs = latents.shape.first ?? 0
        guard Bs >= 1 else { throw fail("tensor \"inputs.latents\" has shape \(Checkpoint.shapeText(latents.shape)), expected [B, \(C), \(R), \(R)]") }
        var expected: [(String, [Int])] = [
            ("inputs.images", [B, C, R, R]), ("inputs.noise", [B, C, R, R]),
            ("inputs.t", [B]), ("inputs.s", [B]), ("inputs.s_prime", [B]),
            ("inputs.class_labels", [B, K]), ("inputs.beta_scale", [B]),
            ("inputs.latents", [Bs, C, R, R]), ("inputs.sample_class_labels", [Bs, K]),
            ("outputs.F", [B, C, R, R]), ("outputs.f_st", [B, C, R, R]), ("outputs.df_ds", [B, C, R, R]),
            ("outputs.loss", [B]), ("outputs.terminal_loss", [B]), ("outputs.fm_loss", [B]),
        ]
        // Gradients: every trainable parameter, plus any fixed one the file holds a gradient for.
        let shapes = Dictionary(uniqueKeysWithValues: net.parameterShapes.map { ($0.name, $0.shape) })
        for spec in net.parameterSpecs where spec.trainable || file["grads." + spec.key] != nil {
            expected.append(("grads." + spec.key, spec.shape))
        }
        var sampleSteps: [Int] = []
        for t in file.tensors where t.name.hasPrefix("outputs.sample_") && t.name.hasSuffix("step") {
            let middle = t.name.dropFirst("outputs.sample_".count).dropLast("step".count)
            guard let n = Int(middle), n >= 1, n <= 1000 else {
                throw fail("tensor \"\(Checkpoint.safeName(t.name))\": expected outputs.sample_<steps>step with 1 to 1000 steps")
            }
            sampleSteps.append(n)
            expected.append((t.name, [Bs, C, R, R]))
        }
        sampleSteps.sort()
        var tensors: [String: Tensor] = [:]
        for (name, shape) in expected {
            guard let a = file[name] else {
                throw fail("missing tensor \"\(name)\" (expected shape \(Checkpoint.shapeText(shape)))")
            }
            guard a.shape == shape else {
                throw fail("tensor \"\(name)\" has shape \(Checkpoint.shapeText(a.shape)), expected \(Checkpoint.shapeText(shape)) from the config")
            }
            try checkFinite(name, a)
            tensors[name] = Tensor(a.floats(), shape: shape, on: device)
        }
        // Unknown tensors would be silently unchecked: refuse them.
        let knownNames = Set(expected.map(\.0))
        for t in file.tensors where !knownNames.contains(t.name) {
            if t.name.hasPrefix("params.") || t.name.hasPrefix("teacher.") { continue }  // validated above
            if t.name.hasPrefix("grads."), shapes[String(t.name.dropFirst(6))] != nil { continue }
            throw fail("unexpected tensor \"\(Checkpoint.safeName(t.name))\"")
        }

        // Values: times in [0, 1] with s <= t, positive beta, one-hot (or all-zero) labels.
        let t = file["inputs.t"]!.floats(), s = file["inputs.s"]!.floats(), sp = file["inputs.s_prime"]!.floats()
        for i in 0..<B {
            guard (0...1).contains(t[i]), (0...1).contains(s[i]), (0...1).contains(sp[i]) else {
                throw fail("row \(i): times t = \(t[i]), s = \(s[i]), s' = \(sp[i]) must lie in [0, 1]")
            }
            guard s[i] <= t[i] else { throw fail("row \(i): s = \(s[i]) is after t = \(t[i])") }
        }
        for (i, b) in file["inputs.beta_scale"]!.floats().enumerated() where !(b > 0) {
            throw fail("row \(i): beta_scale \(b) must be positive (beta = 1 / w)")
        }
        for name in ["inputs.class_labels", "inputs.sample_class_labels"] {
            let v = file[name]!.floats(), rows = v.count / max(K, 1)
            for r in 0..<rows where K > 0 {
                let row = v[(r * K)..<((r + 1) * K)]
                guard row.allSatisfy({ $0 == 0 || $0 == 1 }), row.reduce(0, +) <= 1 else {
                    throw fail("\(name) row \(r) is not one-hot (or all zero for the null class)")
                }
            }
        }
        return Case(config: config, net: net, student: sets[0], teacher: sets[1], tensors: tensors,
                    sampleSteps: sampleSteps)
    }

    /// ||a - b|| / ||b|| in float64 (0 when both are zero, infinite when only the reference is).
    public static func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
        let x = a.doubles, y = b.doubles
        precondition(x.count == y.count, "relative error of tensors of \(x.count) and \(y.count) values")
        var num = 0.0, den = 0.0
        for i in 0..<x.count { num += (x[i] - y[i]) * (x[i] - y[i]); den += y[i] * y[i] }
        if den == 0 { return num == 0 ? 0 : .infinity }
        return (num / den).squareRoot()
    }

    /// Validates `file` and compares every output, gradient and sample with this implementation.
    public static func run(_ file: SafetensorsFile, source: String = "reference", on device: Device = .default) throws -> [Comparison] {
        let c = try load(file, source: source, on: device)
        let cfg = c.config
        var results: [Comparison] = []
        func compare(_ name: String, _ out: Tensor) { results.append(Comparison(name: name, relErr: relativeError(out, c[name]))) }

        let objective = TVMObjective(guidance: GuidanceConfig(scale: .constant(cfg.sampleCFG), labelDropout: 0,
                                                              scaledParameterization: cfg.scaleParam))
        let leaves = c.student.leaves()
        let cond = Conditioning(classes: c["inputs.class_labels"], beta: c["inputs.beta_scale"])
        let inputs = TVMObjective.Inputs(x0: c["inputs.images"], noise: c["inputs.noise"], t: c["inputs.t"], s: c["inputs.s"],
                                         sPrime: c["inputs.s_prime"], cond: cond)
        // The trainer's evaluation (two backward passes), so the check covers what training runs.
        let (terms, grads) = objective.termsAndGradients(network: c.net, student: leaves, teacher: c.teacher, inputs,
                                                         wrt: leaves.all)
        compare("outputs.F", terms.F)
        compare("outputs.f_st", terms.flowMap)
        compare("outputs.df_ds", terms.flowMapDerivative)
        compare("outputs.loss", terms.loss)
        compare("outputs.terminal_loss", terms.terminal)
        compare("outputs.fm_loss", terms.flowMatching)
        for (name, g) in zip(leaves.names, grads) where c.tensors["grads." + name] != nil {
            compare("grads." + name, g)
        }
        let Bs = c["inputs.latents"].shape[0]
        let sampleCond = Conditioning(classes: c["inputs.sample_class_labels"],
                                      beta: Tensor.full(1 / cfg.sampleCFG, shape: [Bs], on: device))
        for n in c.sampleSteps {
            let x = sampleFlowMap(network: c.net, params: c.student, noise: c["inputs.latents"], steps: n,
                                  cond: sampleCond, kappa: cfg.scaleParam ? cfg.sampleCFG : 1)
            compare("outputs.sample_\(n)step", x)
        }
        return results
    }
}
