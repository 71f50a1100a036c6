import TensorCore
import Formats

/// A network of the official TVM code, read from its pickle (`im256_w2.pkl`, a training snapshot) or its
/// `torch.save` training state, without running anything in the file.
///
/// The official code pickles a `TVMWrapper` (`do_scale_param`, the class of its `model`) around a `DiT`, both
/// decorated with `torch_utils.persistence`, which records their constructor arguments. The configuration is
/// taken from those arguments (a named class such as `DiT_XL_2_18h` fixes the sizes its `__init__` passes on;
/// where neither says, the `DiT` defaults apply, and an unknown subclass's sizes come from its tensors),
/// then every tensor is checked against it. Parameters keep the official state-dict names of the `DiT`, which are
/// this project's names; a `torch.compile` wrapper (`_orig_mod`) is looked through.
public struct OfficialNetwork {
    /// Which network of the file: "ema" (released files, `generate_images.py`), "net" or "ema_target".
    public let key: String
    public let config: DiTConfig
    /// The wrapper's `do_scale_param`: the network's output is scaled by kappa = w (TVM.md).
    public let scaledParameterization: Bool
    /// The DiT class and where each size came from, for a report line.
    public let summary: String
    /// The DiT parameter names in the order of the official `net.parameters()`: the indices of its optimizer state.
    public let parameterOrder: [String]
    public let parameters: ParameterSet

    /// The networks a file may hold.
    public static let keys = ["ema", "net", "ema_target"]

    /// Reads network `key` of a `.pkl` or `.pt` file.
    public static func load(path: String, key: String = "ema", on device: Device = .default) throws -> OfficialNetwork {
        let file: TorchPickle
        do { file = try TorchPickle.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try OfficialNetwork(file, key: key, on: device)
    }

    /// Reads network `key` of an open file.
    public init(_ file: TorchPickle, key: String, on device: Device = .default) throws {
        let source = file.source
        func fail(_ s: String) -> ModelError { ModelError("\(source): \(s)") }
        guard file.root.dictionary != nil else {
            throw fail("holds \(file.root.summary), not a dict of networks (\(Self.keys.joined(separator: ", ")))")
        }
        guard let value = file.root[key] else {
            let found = file.root.dictionary!.compactMap { $0.key.string.map { quoted($0) } }.prefix(12)
            throw fail("no network \(quoted(key)); the file holds \(found.isEmpty ? "no string keys" : found.joined(separator: ", "))")
        }
        do {
            let wrapper = try TorchModule(value, what: "\(source): \(key)").lookingThroughCompilation
            guard let model = try wrapper.children().first(where: { $0.name == "model" })?.module.lookingThroughCompilation else {
                throw fail("\(key) is a \(quoted(wrapper.className)) without a model: not an official TVMWrapper")
            }
            // Every tensor as a view first (cheap: nothing is decoded), so the configuration can be checked against
            // all of their shapes before any value is read.
            var views: [String: TorchTensor] = [:]
            var stateOrder: [String] = [], order: [String] = []
            var seenParameters = Set<Int>()
            for t in try wrapper.stateDict() {
                guard t.name.hasPrefix("model.") else { throw fail("\(key): unexpected tensor \(quoted(t.name)) outside the model") }
                let name = String(t.name.dropFirst("model.".count))
                views[name] = try file.tensor(t.value, what: "\(key).\(t.name)")
                stateOrder.append(name)
                // named_parameters() lists a shared Parameter once, under its first name.
                if t.isParameter, seenParameters.insert(t.value.id).inserted { order.append(name) }
            }
            let arguments = OfficialArguments(wrapper: wrapper, model: model, shapes: views.mapValues(\.shape))
            let (config, summary) = try arguments.config()
            let expected = try DiT(config).parameterShapes
            let known = Set(expected.map(\.name))
            if let extra = stateOrder.first(where: { !known.contains($0) }) {
                throw fail("\(key): tensor \(quoted("model." + extra)) is not part of the DiT that \(summary) describes")
            }
            let parameters = ParameterSet()
            for (name, shape) in expected {
                let what = "\(key).model.\(name)"
                guard let tensor = views[name] else { throw fail("\(key): missing tensor \(quoted("model." + name)) (\(summary))") }
                guard tensor.shape == shape else {
                    throw fail("\(what) has shape \(Checkpoint.shapeText(tensor.shape)) but \(summary) needs \(Checkpoint.shapeText(shape))")
                }
                guard tensor.integers() == nil else { throw fail("\(what) holds \(tensor.dtype) values, not floating point") }
                let values = tensor.floats()
                guard values.allSatisfy(\.isFinite) else { throw fail("\(what) holds NaN or infinite values") }
                parameters[name] = Tensor(values, shape: shape, on: device)
            }
            self.key = key
            self.config = config
            scaledParameterization = try arguments.scaledParameterization()
            self.summary = summary
            parameterOrder = order
            self.parameters = parameters
        } catch let e as FormatError {
            throw ModelError(e.message)
        }
    }
}

/// The constructor arguments of the official `TVMWrapper` and `DiT`, mapped to a `DiTConfig`.
struct OfficialArguments {
    let wrapper: TorchModule
    let model: TorchModule
    /// The shapes of the model's tensors, by name.
    let shapes: [String: [Int]]

    /// `DiT.__init__`'s parameters in order, for arguments passed by position.
    static let positional = ["img_resolution", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                             "num_classes", "embedding_kwargs", "temb_mult", "dropout", "qk_norm", "learn_guidance",
                             "do_mod_norm", "init_type", "time_specinit"]

    /// The sizes the official named subclasses pass to `DiT.__init__` (training/dit.py).
    static let namedSizes: [String: [String: Int]] = [
        "DiT_XL_2": ["patch_size": 2, "hidden_size": 1152, "depth": 28, "num_heads": 16],
        "DiT_XL_2_18h": ["patch_size": 2, "hidden_size": 1152, "depth": 28, "num_heads": 18],
        "DiT_L_2": ["patch_size": 2, "hidden_size": 1024, "depth": 24, "num_heads": 16],
        "DiT_B_2": ["patch_size": 2, "hidden_size": 768, "depth": 12, "num_heads": 12],
        "DiT_S_2": ["patch_size": 2, "hidden_size": 384, "depth": 12, "num_heads": 6],
    ]

    /// `DiT.__init__`'s defaults.
    static let defaults: [String: Any] = [
        "patch_size": 2, "in_channels": 4, "hidden_size": 1152, "depth": 28, "num_heads": 16, "mlp_ratio": 4.0,
        "num_classes": 1000, "temb_mult": 1, "qk_norm": true, "learn_guidance": true, "do_mod_norm": true,
        "init_type": "spectral", "time_specinit": false,
    ]

    func fail(_ s: String) -> ModelError { ModelError("\(model.what): \(s)") }

    /// The argument `name` as given to the model's constructor (by keyword, or by position to `DiT` itself).
    func given(_ name: String) -> PickleValue? {
        if let v = model.keyword(name) { return v }
        if model.className == "DiT", let i = Self.positional.firstIndex(of: name), i < model.initArguments.count {
            return model.initArguments[i]
        }
        return nil
    }

    func int(_ name: String, sources: inout [String]) throws -> Int {
        if let v = given(name) {
            guard let i = v.int else { throw fail("constructor argument \(name) is \(v.summary), not an integer") }
            return i
        }
        if let i = Self.namedSizes[model.className]?[name] { return i }
        // A subclass this reader does not know passes its own sizes to DiT.__init__; its tensors show them.
        if model.className != "DiT", let inferred = inferred(name) {
            sources.append("\(name) \(inferred) from the tensors")
            return inferred
        }
        return Self.defaults[name] as! Int
    }

    /// A size read off the tensors: the patch embedding is [hidden, channels, patch, patch], there is one set of
    /// block tensors per layer, the q norm's weight is [hidden / heads], the label table has a row per class and one
    /// for the null class.
    func inferred(_ name: String) -> Int? {
        switch name {
        case "hidden_size": return shapes["x_embedder.proj.weight"]?.first
        case "in_channels": return shapes["x_embedder.proj.weight"].flatMap { $0.count == 4 ? $0[1] : nil }
        case "num_classes": return shapes["y_embedder.embedding_table.weight"]?.first.map { $0 - 1 }
        case "depth":
            var n = 0
            while shapes["blocks.\(n).attn.qkv.weight"] != nil { n += 1 }
            return n
        case "patch_size": return shapes["x_embedder.proj.weight"]?.last
        case "num_heads":
            guard let d = shapes["x_embedder.proj.weight"]?.first, let h = shapes["blocks.0.attn.q_norm.weight"]?.first, h > 0 else { return nil }
            return d / h
        default: return nil
        }
    }

    func bool(_ name: String) throws -> Bool {
        guard let v = given(name) else { return Self.defaults[name] as! Bool }
        guard let b = v.bool else { throw fail("constructor argument \(name) is \(v.summary), not True or False") }
        return b
    }

    func config() throws -> (DiTConfig, String) {
        var sources: [String] = []
        let patch = try int("patch_size", sources: &sources), hidden = try int("hidden_size", sources: &sources)
        let depth = try int("depth", sources: &sources), heads = try int("num_heads", sources: &sources)
        let classes = try int("num_classes", sources: &sources), channels = try int("in_channels", sources: &sources)
        guard let resolution = given("img_resolution")?.int ?? wrapper.keyword("img_resolution")?.int else {
            throw fail("no img_resolution among the constructor arguments")
        }
        var ratio = Self.defaults["mlp_ratio"] as! Double
        if let v = given("mlp_ratio") {
            guard let r = v.double else { throw fail("constructor argument mlp_ratio is \(v.summary)") }
            ratio = r
        } else if Self.namedSizes[model.className] == nil, model.className != "DiT",
                  let mlp = shapes["blocks.0.mlp.fc1.weight"]?.first, hidden > 0 {
            ratio = Double(mlp) / Double(hidden)
            sources.append("mlp_ratio \(ratio) from the tensors")
        }
        // Options this implementation has one fixed way of: refuse the others rather than compute something else.
        guard try bool("learn_guidance") else { throw fail("learn_guidance=False (no guidance embedder) is not supported") }
        guard try bool("qk_norm") else { throw fail("qk_norm=False is not supported") }
        guard try int("temb_mult", sources: &sources) == 1 else { throw fail("temb_mult other than 1 is not supported") }
        if let e = given("embedding_kwargs"), let entries = e.dictionary, !entries.isEmpty {
            guard entries.count == 1, entries[0].key.string == "frequency_embedding_size", entries[0].value.int == DiT.frequencyDim else {
                throw fail("embedding_kwargs other than frequency_embedding_size=\(DiT.frequencyDim) are not supported")
            }
        }
        if let labels = wrapper.keyword("label_dim")?.int, labels != classes {
            throw fail("the wrapper's label_dim \(labels) differs from the model's num_classes \(classes)")
        }
        let initialization: DiTConfig.Initialization
        switch given("init_type")?.string ?? (Self.defaults["init_type"] as! String) {
        case "spectral": initialization = .spectral
        case "xunif": initialization = .xavierUniform
        case let other: throw fail("init_type \(quoted(other)) is not one this implementation has (spectral, xunif)")
        }
        let config = DiTConfig(patch: patch, hidden: hidden, depth: depth, heads: heads, mlpRatio: ratio, inputSize: resolution,
                               inChannels: channels, numClasses: classes, modulationNorm: try bool("do_mod_norm"),
                               init: initialization, timeSpecInit: try bool("time_specinit"))
        do { try config.validate() } catch let e as ModelError { throw fail(e.message) }
        let summary = "\(model.className) (patch \(patch), hidden \(hidden), depth \(depth), \(heads) heads, \(resolution)x\(resolution)x"
            + "\(channels), \(classes) classes\(sources.isEmpty ? "" : "; " + sources.joined(separator: ", ")))"
        return (config, summary)
    }

    /// The wrapper's `do_scale_param`: the attribute it holds, else its constructor argument (default False).
    func scaledParameterization() throws -> Bool {
        guard let v = wrapper.attributes["do_scale_param"] ?? wrapper.keyword("do_scale_param") else { return false }
        guard let b = v.bool else { throw ModelError("\(wrapper.what): do_scale_param is \(v.summary), not True or False") }
        return b
    }
}
