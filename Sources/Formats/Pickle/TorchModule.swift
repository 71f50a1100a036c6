/// A pickled `torch.nn.Module`, read as data: its class, its constructor arguments where the pickle records them,
/// and the `_parameters`, `_buffers` and `_modules` of its `__dict__`, walked to state-dict names.
///
/// Two ways of pickling are recognised. A plain module is `NEWOBJ` of its class (or protocol 0/1's
/// `copyreg._reconstructor`) followed by BUILD with its `__dict__`. A class decorated with EDM's
/// `torch_utils.persistence` (the official TVM and EDM networks) is `_reconstruct_persistent_obj(meta)`, where
/// `meta` holds the class name, the Python source of its module (which Python would `exec`; never run here), and
/// the `__dict__`, into which the decorator put the constructor's `_init_args` and `_init_kwargs`.
/// A `torch.compile` wrapper (`OptimizedModule`) keeps the real module as its child `_orig_mod`, whose names it
/// looks through; pickled by its own `__reduce__`, it is a call of its class with the real module as first argument,
/// which is recognised as that module.
public struct TorchModule {
    /// The class name: persistence's `class_name`, or the name of the class global.
    public let className: String
    /// "module.name" of a plain module's class (nil for a persistent class, whose module is its embedded source).
    public let classGlobal: String?
    /// Constructor arguments that `torch_utils.persistence` recorded (empty for plain modules).
    public let initArguments: [PickleValue]
    public let initKeywords: [(name: String, value: PickleValue)]
    /// Length of the Python source a persistent class carries (kept only as a length: it is never looked at).
    public let embeddedSourceLength: Int?
    /// The module's `__dict__`.
    public let attributes: PickleValue
    /// Names the module in error messages ("FILE: ema.model").
    public let what: String
    let value: PickleValue

    static let persistentReconstructor = "torch_utils.persistence._reconstruct_persistent_obj"
    static let compiledModule = "torch._dynamo.eval_frame.OptimizedModule"

    /// Recognises `value` as a module; `what` names it in errors.
    public init(_ value: PickleValue, what: String) throws {
        func fail(_ s: String) -> FormatError { FormatError("\(what): \(s)") }
        guard let record = value.record else { throw fail("\(value.summary) is not a PyTorch module") }
        if record.kind == .call, record.calleeName == Self.compiledModule, let wrapped = record.arguments.tuple?.first {
            // Each wrapper is one more level of the pickle, so this recursion is bounded by its depth limit.
            self = try TorchModule(wrapped, what: what)
            return
        }
        var arguments: [PickleValue] = [], keywords: [(String, PickleValue)] = [], sourceLength: Int?
        let state: PickleValue
        if record.kind == .call, record.calleeName == Self.persistentReconstructor {
            guard let meta = record.arguments.tuple?.first, meta.dictionary != nil, meta["type"]?.string == "class",
                  let name = meta["class_name"]?.string, let s = meta["state"] else {
                throw fail("persistent object without a class name and state (only persistent classes are read)")
            }
            className = name
            classGlobal = nil
            state = s
            sourceLength = meta["module_src"]?.string?.utf8.count
            if let a = s["_init_args"] {
                guard let items = a.tuple else { throw fail("_init_args is \(a.summary), not a tuple") }
                arguments = items
            }
            if let k = s["_init_kwargs"] {
                guard let entries = k.dictionary else { throw fail("_init_kwargs is \(k.summary), not a dict") }
                keywords = try entries.map { e in
                    guard let key = e.key.string else { throw fail("_init_kwargs has the key \(e.key.summary)") }
                    return (key, e.value)
                }
            }
        } else {
            var cls = record.callee
            if record.kind == .call, let name = record.calleeName,
               name == "copyreg._reconstructor" || name == "copy_reg._reconstructor", let first = record.arguments.tuple?.first {
                cls = first
            } else if record.kind != .newObject {
                throw fail("\(value.summary) is not a PyTorch module")
            }
            guard let global = cls.global, let s = record.state else { throw fail("\(value.summary) is not a PyTorch module") }
            className = global.name
            classGlobal = cls.globalName
            state = s
        }
        guard state.dictionary != nil, state["_modules"]?.dictionary != nil, state["_parameters"]?.dictionary != nil else {
            throw fail("\(value.summary) (class \(quoted(className))) has no _modules and _parameters: not a PyTorch module")
        }
        attributes = state
        initArguments = arguments
        initKeywords = keywords
        embeddedSourceLength = sourceLength
        self.value = value
        self.what = what
    }

    /// The constructor keyword argument `name`.
    public func keyword(_ name: String) -> PickleValue? { initKeywords.last { $0.name == name }?.value }

    /// The child modules by attribute name, in registration order; `None` entries (optional submodules switched
    /// off) are left out. A `torch.compile` wrapper's `_orig_mod` child is replaced by its own children.
    public func children() throws -> [(name: String, module: TorchModule)] {
        var out: [(String, TorchModule)] = []
        for (key, child) in try entries("_modules") where !child.isNone {
            let module = try TorchModule(child, what: "\(what).\(key)")
            if key == "_orig_mod" { out += try module.children() } else { out.append((key, module)) }
        }
        return out
    }

    /// The module `_orig_mod` stands for, or this one: a compiled network's own class and arguments.
    public var lookingThroughCompilation: TorchModule {
        get throws {
            guard let wrapped = try entries("_modules").first(where: { $0.name == "_orig_mod" }) else { return self }
            return try TorchModule(wrapped.value, what: what).lookingThroughCompilation
        }
    }

    /// One tensor of a module tree under its state-dict name.
    public struct NamedTensor {
        public let name: String
        public let value: PickleValue
        public let isParameter: Bool
    }

    /// Every parameter and persistent buffer under its state-dict name ("blocks.0.attn.qkv.weight"), in
    /// `state_dict()` order: a module's own parameters, then its buffers, then each child's, depth first.
    /// A module object met twice (shared, or a cycle a hostile file made) is refused, so the walk is linear.
    public func stateDict(maxDepth: Int = 64) throws -> [NamedTensor] {
        var out: [NamedTensor] = []
        var seen = Set<Int>()
        try collect(prefix: "", into: &out, seen: &seen, depth: 0, maxDepth: maxDepth)
        return out
    }

    private func collect(prefix: String, into out: inout [NamedTensor], seen: inout Set<Int>, depth: Int, maxDepth: Int) throws {
        guard depth <= maxDepth else { throw FormatError("\(what): modules nested deeper than \(maxDepth) levels") }
        guard seen.insert(value.id).inserted else {
            throw FormatError("\(what): the same module object appears twice in the network")
        }
        for (key, tensor) in try entries("_parameters") where !tensor.isNone {
            out.append(NamedTensor(name: prefix + key, value: tensor, isParameter: true))
        }
        let transient = Set(setStrings(attributes["_non_persistent_buffers_set"]))
        for (key, tensor) in try entries("_buffers") where !tensor.isNone && !transient.contains(key) {
            out.append(NamedTensor(name: prefix + key, value: tensor, isParameter: false))
        }
        for (key, child) in try entries("_modules") where !child.isNone {
            let module = try TorchModule(child, what: "\(what).\(key)")
            // torch.compile's wrapper adds `_orig_mod.` to every name; the official names do not have it.
            let childPrefix = key == "_orig_mod" ? prefix : prefix + key + "."
            try module.collect(prefix: childPrefix, into: &out, seen: &seen, depth: depth + 1, maxDepth: maxDepth)
        }
    }

    /// The string-keyed entries of the dict attribute `name`.
    private func entries(_ name: String) throws -> [(name: String, value: PickleValue)] {
        guard let dict = attributes[name]?.dictionary else { return [] }
        return try dict.map { e in
            guard let key = e.key.string else { throw FormatError("\(what): \(name) has the key \(e.key.summary)") }
            return (key, e.value)
        }
    }

    private func setStrings(_ value: PickleValue?) -> [String] {
        guard let value else { return [] }
        // An empty set pickles as EMPTY_SET, a filled one as EMPTY_SET + ADDITEMS, or in protocol 2 as
        // builtins.set([...]); all the names are strings.
        if let items = value.record?.arguments.tuple?.first?.list { return items.compactMap(\.string) }
        return value.setElements?.compactMap(\.string) ?? []
    }
}
