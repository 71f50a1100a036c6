/// An n-dimensional array on a device, and a value that automatic differentiation can follow.
///
/// Reference semantics: ops never mutate their inputs; a tensor's storage is written once, when it is made
/// (the optimizer's in-place updates on parameters are the one exception, outside any recorded graph).
public final class Tensor {
    public let shape: [Int]
    public let storage: Storage
    /// Where reverse mode sends this tensor's cotangent (nil: a constant).
    var gradSource: GradSource?
    /// Forward-mode tangent in the JVP session `tangentSession` (nil: zero).
    var tangent: Tensor?
    var tangentSession: UInt64 = 0
    /// Makes this tensor's values again from storages the graph keeps anyway (nil: it cannot be remade). A node whose
    /// rule reads it saves a shape-only stand-in with this recipe, and backward remakes the values when the node
    /// runs: a cheap activation is then not kept alive through the whole graph (`Tensor.savedForBackward`).
    var recompute: (() -> Storage)?

    public init(storage: Storage, shape: [Int]) {
        precondition(Shape.count(shape) == storage.count,
                     "shape \(shape) does not match storage of \(storage.count) elements")
        self.storage = storage
        self.shape = shape
    }

    public var dtype: DType { storage.dtype }
    public var backend: any Backend { storage.backend }
    public var device: Device { Device(backend: storage.backend) }
    public var rank: Int { shape.count }
    public var count: Int { storage.count }
    public var requiresGrad: Bool { gradSource != nil }

    /// The same values with no gradient and no tangent attached.
    public func detached() -> Tensor { Tensor(storage: storage, shape: shape) }

    /// Marks this tensor as a differentiation leaf (a parameter, or an input of `gradients`).
    @discardableResult
    public func requiringGrad() -> Tensor {
        if gradSource == nil { gradSource = .leaf(LeafID()) }
        return self
    }
}

/// Where tensors live. `Device.cpu` always exists; the CUDA backend provides another.
public struct Device {
    public let backend: any Backend
    public init(backend: any Backend) { self.backend = backend }
    public static let cpu = Device(backend: CPUBackend.shared)
    /// The device that tensors made without an explicit device go to.
    nonisolated(unsafe) public static var `default` = Device.cpu
    public var name: String { backend.name }
    public var isCPU: Bool { backend === CPUBackend.shared }
}

// MARK: - Making tensors and reading them back

extension Tensor {
    public convenience init(_ values: [Float], shape: [Int], on device: Device = .default) {
        precondition(values.count == Shape.count(shape), "\(values.count) values for shape \(shape)")
        self.init(storage: device.backend.upload(values), shape: shape)
    }

    public convenience init(_ values: [Double], shape: [Int], dtype: DType, on device: Device = .default) {
        precondition(values.count == Shape.count(shape), "\(values.count) values for shape \(shape)")
        self.init(storage: device.backend.upload(values, dtype: dtype), shape: shape)
    }

    /// A scalar (rank 0).
    public convenience init(scalar: Double, dtype: DType = .float32, on device: Device = .default) {
        self.init([scalar], shape: [], dtype: dtype, on: device)
    }

    public static func full(_ value: Double, shape: [Int], dtype: DType = .float32, on device: Device = .default) -> Tensor {
        let s = device.backend.allocate(Shape.count(shape), dtype)
        device.backend.fill(s, value: value)
        return Tensor(storage: s, shape: shape)
    }

    public static func zeros(_ shape: [Int], dtype: DType = .float32, on device: Device = .default) -> Tensor {
        full(0, shape: shape, dtype: dtype, on: device)
    }

    public static func ones(_ shape: [Int], dtype: DType = .float32, on device: Device = .default) -> Tensor {
        full(1, shape: shape, dtype: dtype, on: device)
    }

    public func zerosLike() -> Tensor { .zeros(shape, dtype: dtype, on: device) }

    /// Uninitialised output of the same backend (kernels fill it).
    func empty(_ shape: [Int], dtype: DType? = nil) -> Tensor {
        Tensor(storage: backend.allocate(Shape.count(shape), dtype ?? self.dtype), shape: shape)
    }

    public var floats: [Float] { backend.downloadFloats(storage) }
    public var doubles: [Double] { backend.download(storage) }
    /// The single value of a one-element tensor.
    public var item: Double {
        precondition(count == 1, "item of a tensor with \(count) elements")
        return doubles[0]
    }

    public func to(_ device: Device) -> Tensor {
        if device.backend === backend { return self }
        return dtype == .float32 ? Tensor(floats, shape: shape, on: device)
                                 : Tensor(doubles, shape: shape, dtype: dtype, on: device)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let v = doubles
        let head = v.prefix(8).map { String(Float($0)) }.joined(separator: ", ")
        return "Tensor(\(shape), \(dtype), [\(head)\(v.count > 8 ? ", ..." : "")])"
    }
}
