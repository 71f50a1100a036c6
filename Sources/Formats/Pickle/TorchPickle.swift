/// A pickle that holds PyTorch tensors, and where their storages' bytes are: inside the pickle
/// (`torch.storage._load_from_bytes`, as network pickles of the EDM family store them), after it (the legacy
/// `torch.save` format), or beside it in a ZIP archive (the `torch.save` format since PyTorch 1.6).
///
/// Tensors are recognised only through the few functions PyTorch pickles them with; anything else where a tensor
/// should be is refused with a one-line error that names what was found (for a call, its global).
public final class TorchPickle {
    public let source: String
    public let root: PickleValue
    /// The bytes behind a persistent id; nil when the format has no persistent storages (a plain pickle).
    let persistentStorage: ((PickleValue) throws -> TorchStorage)?
    let limits: PickleLimits
    /// Storages already decoded from `_load_from_bytes`, by the pickle value that holds them.
    private var embeddedStorages: [Int: TorchStorage] = [:]
    /// Elements of the tensors handed out so far, against `elementBudget`.
    private var viewedElements = 0
    /// A file's tensors together hold at most about as many elements as it has bytes. Views that share storage
    /// (tied weights) may count twice; a pickle that points a million tensors at one storage to make the reader
    /// decode it a million times is refused instead.
    let elementBudget: Int

    init(source: String, root: PickleValue, inputSize: Int, limits: PickleLimits,
         persistentStorage: ((PickleValue) throws -> TorchStorage)?) {
        self.source = source
        self.root = root
        self.limits = limits
        self.persistentStorage = persistentStorage
        elementBudget = 2 * inputSize + (1 << 20)
    }

    /// Reads a plain pickle (`.pkl`), a `torch.save` ZIP archive or a legacy `torch.save` file (`.pt`).
    public static func read(path: String, limits: PickleLimits = .default) throws -> TorchPickle {
        if try ZIPArchive.isArchive(path: path) { return try TorchArchive.read(path: path, limits: limits) }
        return try parse(AtomicFile.read(path: path), source: path, limits: limits)
    }

    /// Reads a plain pickle or a legacy `torch.save` file held in memory.
    public static func parse(_ bytes: [UInt8], source: String, limits: PickleLimits = .default) throws -> TorchPickle {
        if bytes.starts(with: TorchLegacyFormat.signature) {
            let (root, storages) = try TorchLegacyFormat.read(bytes[...], source: source, limits: limits)
            return TorchPickle(source: source, root: root, inputSize: bytes.count, limits: limits) { id in
                storages[try StorageReference(id, source: source).key]!
            }
        }
        return TorchPickle(source: source, root: try PickleReader.read(bytes, source: source, limits: limits),
                           inputSize: bytes.count, limits: limits, persistentStorage: nil)
    }

    /// The functions PyTorch rebuilds tensors with, by global name.
    static let tensorFunctions: Set<String> = [
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
    ]

    /// Whether `value` is a tensor or parameter as PyTorch pickles them (without reading it).
    public static func isTensor(_ value: PickleValue) -> Bool {
        value.record.flatMap(\.calleeName).map(tensorFunctions.contains) ?? false
    }

    /// The tensor `value` stands for; `what` names it in errors (a state-dict key, say).
    public func tensor(_ value: PickleValue, what: String) throws -> TorchTensor {
        try tensor(value, what: what, depth: 0)
    }

    private func tensor(_ value: PickleValue, what: String, depth: Int) throws -> TorchTensor {
        guard let call = value.record, call.kind == .call, let name = call.calleeName, Self.tensorFunctions.contains(name) else {
            throw FormatError("\(source): \(what): \(value.summary) is not a PyTorch tensor")
        }
        return try rebuild(name, call.arguments.tuple!, what: what, depth: depth)
    }

    /// What PyTorch's tensor function `name` would return for `args`.
    private func rebuild(_ name: String, _ args: [PickleValue], what: String, depth: Int) throws -> TorchTensor {
        func fail(_ s: String) -> FormatError { FormatError("\(source): \(what): \(s)") }
        func argument(_ i: Int) throws -> PickleValue {
            guard i < args.count else { throw fail("\(name) has \(args.count) arguments, fewer than it needs") }
            return args[i]
        }
        // Parameters and subclasses wrap a tensor; real files wrap once, a hostile one could chain them.
        guard depth < 4 else { throw fail("tensor wrapped in more than 4 parameters or subclasses") }
        switch name {
        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            // (data, requires_grad, backward_hooks[, state]): a Parameter is its data.
            return try tensor(try argument(0), what: what, depth: depth + 1)
        case "torch._tensor._rebuild_from_type_v2":
            // (func, new_type, args, state): a tensor subclass rebuilt by `func(*args)`; the subclass is ignored.
            let function = try argument(0), inner = try argument(2)
            guard let functionName = function.globalName, Self.tensorFunctions.contains(functionName),
                  let innerArgs = inner.tuple else {
                throw fail("\(name) rebuilds with \(function.summary), not a PyTorch tensor function")
            }
            return try rebuild(functionName, innerArgs, what: what, depth: depth + 1)
        default:
            // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            // and the older _rebuild_tensor(storage, storage_offset, size, stride).
            let storage = try self.storage(try argument(0), what: what)
            guard let offset = try argument(1).int else { throw fail("storage offset is \(args[1].summary)") }
            guard let size = try argument(2).tuple?.map(\.int), let stride = try argument(3).tuple?.map(\.int),
                  size.allSatisfy({ $0 != nil }), stride.allSatisfy({ $0 != nil }) else {
                throw fail("size and stride are \(args[2].summary) and \(args[3].summary), not tuples of integers")
            }
            let t = try TorchTensor(storage: storage, offset: offset, shape: size.map { $0! }, strides: stride.map { $0! },
                                    what: "\(source): \(what)")
            viewedElements += t.count
            guard viewedElements <= elementBudget else {
                throw fail("the tensors read so far hold \(viewedElements) elements, more than a file of this size can store")
            }
            return t
        }
    }

    private func storage(_ value: PickleValue, what: String) throws -> TorchStorage {
        func fail(_ s: String) -> FormatError { FormatError("\(source): \(what): \(s)") }
        if let id = value.persistentID {
            guard let persistentStorage else { throw fail("a persistent id, which a plain pickle cannot resolve") }
            return try persistentStorage(id)
        }
        if let cached = embeddedStorages[value.id] { return cached }
        guard let call = value.record, call.kind == .call, call.calleeName == "torch.storage._load_from_bytes",
              let args = call.arguments.tuple, args.count == 1, let data = args[0].bytes else {
            throw fail("storage is \(value.summary), not torch.storage._load_from_bytes of bytes")
        }
        let (root, storages) = try TorchLegacyFormat.read(data, source: "\(source): \(what)", limits: limits)
        guard let id = root.persistentID else { throw fail("the bytes of its storage hold \(root.summary), not a storage") }
        let storage = storages[try StorageReference(id, source: "\(source): \(what)").key]!
        embeddedStorages[value.id] = storage
        return storage
    }
}
