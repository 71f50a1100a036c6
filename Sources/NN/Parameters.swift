import TensorCore

/// Named parameters in a fixed order, the names being the official state-dict keys, so that a student,
/// its EMA target and its evaluation EMA are three values of one type, and checkpoints map 1:1 to PyTorch.
public final class ParameterSet {
    public private(set) var names: [String] = []
    private var tensors: [String: Tensor] = [:]
    /// The buffer that holds every value of a packed set (`pack()`), each tensor a view of its range in `names`
    /// order; nil for a set that is not packed, and again once a tensor is replaced.
    public private(set) var packed: (buffer: Tensor, layout: PackedLayout)?

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
            packed = nil
        }
    }

    /// Moves the values into one buffer, each tensor becoming a view of its range, so that AdamW, the EMA updates
    /// and the gradient norm are one pass over one buffer rather than one per tensor. Values and names stay; the
    /// set stays as it is when it is empty, mixes element types or devices, or its backend cannot make views.
    public func pack() {
        guard packed == nil, let first = tensors[names.first ?? ""] else { return }
        let all = self.all
        guard all.allSatisfy({ $0.dtype == first.dtype && $0.backend === first.backend }) else { return }
        let layout = PackedLayout(shapes: all.map(\.shape), dtype: first.dtype)
        let buffer = layout.gather(all)
        guard let views = layout.views(of: buffer) else { return }
        for (name, view) in zip(names, views) { tensors[name] = view }
        packed = (buffer, layout)
    }

    /// A set with the same names, shapes and packing, its values made by `make` from this set's buffer where it
    /// is packed, else from each tensor.
    private func mapped(_ make: (Tensor) -> Tensor) -> ParameterSet {
        if let packed {
            let made = make(packed.buffer)
            if let views = packed.layout.views(of: made) {
                let set = ParameterSet(Array(zip(names, views)))
                set.packed = (made, packed.layout)
                return set
            }
        }
        return ParameterSet(pairs.map { ($0, make($1)) })
    }

    public func contains(_ name: String) -> Bool { tensors[name] != nil }
    public var all: [Tensor] { names.map { tensors[$0]! } }
    public var pairs: [(String, Tensor)] { names.map { ($0, tensors[$0]!) } }
    public var count: Int { names.count }
    public var scalarCount: Int { all.reduce(0) { $0 + $1.count } }

    /// Fresh storage with the same values and packing (EMA copies start from the student).
    public func copy() -> ParameterSet {
        mapped { $0.detached() * 1.0 }
    }

    /// Zeros of the same names, shapes and packing (Adam's moments).
    public func zerosLike() -> ParameterSet {
        mapped { $0.zerosLike() }
    }

    /// The same storage, marked as differentiation leaves for one step's gradients.
    public func leaves() -> ParameterSet {
        ParameterSet(pairs.map { ($0, $1.detached().requiringGrad()) })
    }

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
