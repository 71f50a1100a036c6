import TensorCore

/// How a parameter's first values are made. Random values come from `Init` (drawn on the host in float64), one
/// parameter after another in the order the model declares them, so one seed gives one model on every backend.
public enum Initializer: Equatable, Sendable {
    case zeros
    case ones
    /// N(0, std²).
    case normal(std: Double)
    /// U(-bound, bound).
    case uniform(bound: Double)
    /// Xavier-normal divided by the largest singular value (`Init.spectral`). Like `xavierUniform`, it treats
    /// the tensor as an [out, in] matrix: the first axis against all the others (a patch-embedding weight
    /// [D, C, p, p] is the matrix [D, C p p]).
    case spectral
    /// Xavier-uniform (`Init.xavierUniform`), over the same [out, in] matrix.
    case xavierUniform
    /// The fixed 2-D sin-cos position embedding of a grid x grid token map (`DiT.positionEmbedding`), over the
    /// last axis.
    case sinCosPositions(grid: Int)
}

/// One tensor of a model, declared once: its key (the official state-dict name), its shape, how it starts,
/// and whether an optimizer trains it. A model's parameter list, its initialisation and the names its forward
/// pass looks up all come from its specs.
public struct ParameterSpec: Equatable, Sendable {
    public let key: String
    public let shape: [Int]
    public let initializer: Initializer
    /// False for fixed buffers stored with the parameters (the position embedding): the forward pass reads
    /// them without gradient.
    public let trainable: Bool

    public init(_ key: String, _ shape: [Int], _ initializer: Initializer, trainable: Bool = true) {
        self.key = key
        self.shape = shape
        self.initializer = initializer
        self.trainable = trainable
    }

    public var count: Int { Shape.count(shape) }

    /// Fresh values; a random initializer draws them from `rng`.
    public func initialTensor(rng: inout RandomGenerator, on device: Device) -> Tensor {
        if let fixed = fixedTensor(on: device) { return fixed }
        let out = shape.first ?? 1, fanIn = count / Swift.max(out, 1)
        let values: [Double]
        switch initializer {
        case .normal(let std): values = Init.normal(count, std: std, rng: &rng)
        case .uniform(let bound): values = Init.uniform(count, bound: bound, rng: &rng)
        case .spectral: values = Init.spectral(out: out, in: fanIn, rng: &rng)
        case .xavierUniform: values = Init.xavierUniform(out: out, in: fanIn, rng: &rng)
        case .zeros, .ones, .sinCosPositions: preconditionFailure("\(initializer) is made by fixedTensor")
        }
        return Tensor(values, shape: shape, dtype: .float32, on: device)
    }

    /// The values of an initializer that draws no random numbers (zeros, ones, the position embedding); nil for
    /// a random one.
    public func fixedTensor(on device: Device) -> Tensor? {
        switch initializer {
        case .zeros: return Tensor.zeros(shape, on: device)
        case .ones: return Tensor.ones(shape, on: device)
        case .sinCosPositions(let grid):
            return Tensor(DiT.positionEmbedding(hidden: shape.last ?? 0, grid: grid), shape: shape, dtype: .float32, on: device)
        case .normal, .uniform, .spectral, .xavierUniform: return nil
        }
    }
}

extension ParameterSet {
    /// Fresh values for `specs`, made in their order (the order decides which random numbers each one gets).
    public convenience init(initializing specs: [ParameterSpec], rng: inout RandomGenerator, on device: Device) {
        self.init()
        for spec in specs { self[spec.key] = spec.initialTensor(rng: &rng, on: device) }
    }
}

/// A Linear layer y = x Wᵀ + b (PyTorch's): the weight `key.weight` [out, in] (or another shape of that many
/// values, such as a patch embedding's [D, C, p, p]) and the bias `key.bias` [out].
public struct LinearLayer: Equatable, Sendable {
    public let weight: ParameterSpec
    public let bias: ParameterSpec

    public init(_ key: String, in fanIn: Int, out: Int, weightShape: [Int]? = nil, weight: Initializer,
                bias: Initializer = .zeros) {
        self.weight = ParameterSpec(key + ".weight", weightShape ?? [out, fanIn], weight)
        self.bias = ParameterSpec(key + ".bias", [out], bias)
    }

    public var parameters: [ParameterSpec] { [weight, bias] }

    /// x Wᵀ + b; `products`: who reads the result (`ProductUse`).
    public func callAsFunction(_ x: Tensor, _ p: ParameterSet, products: ProductUse = .none) -> Tensor {
        x.linear(p[weight.key], bias: p[bias.key], products: products)
    }

    /// GELU(x Wᵀ + b) (tanh approximation), the bias and the activation in the product's epilogue where nothing
    /// is differentiated (`Tensor.linearGELU`); `products`: who reads the result (`ProductUse`).
    public func gelu(_ x: Tensor, _ p: ParameterSet, products: ProductUse = .none) -> Tensor {
        x.linearGELU(p[weight.key], bias: p[bias.key], products: products)
    }
}
