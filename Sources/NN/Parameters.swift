import TensorCore

/// Named parameters in a fixed order, the names being the official state-dict keys, so that a student,
/// its EMA target and its evaluation EMA are three values of one type, and checkpoints map 1:1 to PyTorch.
public final class ParameterSet {
    public private(set) var names: [String] = []
    private var tensors: [String: Tensor] = [:]

    public init() {}

    public init(_ pairs: [(String, Tensor)]) {
        for (n, t) in pairs { self[n] = t }
    }

    public subscript(name: String) -> Tensor {
        get {
            guard let t = tensors[name] else { preconditionFailure("no parameter named \(name)") }
            return t
        }
        set {
            if tensors[name] == nil { names.append(name) }
            tensors[name] = newValue
        }
    }

    public func contains(_ name: String) -> Bool { tensors[name] != nil }
    public var all: [Tensor] { names.map { tensors[$0]! } }
    public var pairs: [(String, Tensor)] { names.map { ($0, tensors[$0]!) } }
    public var count: Int { names.count }
    public var scalarCount: Int { all.reduce(0) { $0 + $1.count } }

    /// Fresh storage with the same values (EMA copies start from the student).
    public func copy() -> ParameterSet {
        ParameterSet(pairs.map { ($0, $1.detached() * 1.0) }).detachedAll()
    }

    /// The same storage, marked as differentiation leaves for one step's gradients.
    public func leaves() -> ParameterSet {
        ParameterSet(pairs.map { ($0, $1.detached().requiringGrad()) })
    }

    func detachedAll() -> ParameterSet { ParameterSet(pairs.map { ($0, $1.detached()) }) }

    public func to(_ device: Device) -> ParameterSet { ParameterSet(pairs.map { ($0, $1.to(device)) }) }

    /// The parameters under `prefix.` with the prefix removed.
    public func scoped(_ prefix: String) -> ParameterSet {
        let p = prefix + "."
        return ParameterSet(pairs.filter { $0.0.hasPrefix(p) }.map { (String($0.0.dropFirst(p.count)), $0.1) })
    }
}

/// y = x W^T + b with W stored [out, in] (PyTorch's Linear), for models that name their tensors by hand;
/// the networks here declare theirs as `LinearLayer`s.
public func linear(_ x: Tensor, _ p: ParameterSet, _ name: String, bias: Bool = true) -> Tensor {
    x.linear(p[name + ".weight"], bias: bias ? p[name + ".bias"] : nil)
}
