import TensorCore

/// Conditioning of one batch: class labels as one-hot rows (all-zero = the null class), the guidance input
/// beta = 1 / w per row and, for a DiT with `guidanceInterval`, the times [start, end] where that guidance acts,
/// [B] each (nil: the whole interval, 0 and 1). Unconditional models take none.
public struct Conditioning {
    public var classes: Tensor?
    public var beta: Tensor?
    public var interval: (start: Tensor, end: Tensor)?
    public init(classes: Tensor? = nil, beta: Tensor? = nil, interval: (start: Tensor, end: Tensor)? = nil) {
        self.classes = classes
        self.beta = beta
        self.interval = interval
    }
}

/// A network F(x, t, g, c, beta) whose output has the shape of x; g = t - s is the gap to the target time.
/// The TVM flow map is f(x, t, s) = x + (s - t) kappa F(x, t, t - s, c, beta).
public protocol FlowMapNetwork {
    /// Fresh parameters (names are the official state-dict keys where one exists).
    func initialParameters(rng: inout RandomGenerator, on device: Device) -> ParameterSet
    func callAsFunction(_ p: ParameterSet, x: Tensor, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor
    /// Parameters that are not trained (the optimizer leaves them as they are).
    var frozenParameterNames: [String] { get }
}

extension FlowMapNetwork {
    public var frozenParameterNames: [String] { [] }
}

/// The 2-D toy network: an MLP on [x, emb(t), emb(t - s)] with SiLU activations.
public struct MLPFlowMap: FlowMapNetwork {
    public var dataDim: Int
    public var width: Int
    public var depth: Int
    public var embeddingDim: Int
    /// Time features are taken at x * timeScale. The default 1 embeds the raw times as the DiT does: with the
    /// classic x1000 the features oscillate so fast that the time derivatives TVM and MeanFlow train on are
    /// huge (measured: MeanFlow's 1-NFE W2 1.11 at x1000 against 0.23 at x1; TVM 0.18 against 0.17).
    public var timeScale: Double

    public init(dataDim: Int = 2, width: Int = 256, depth: Int = 4, embeddingDim: Int = 32, timeScale: Double = 1) {
        self.dataDim = dataDim
        self.width = width
        self.depth = depth
        self.embeddingDim = embeddingDim
        self.timeScale = timeScale
    }

    /// The Linear layers, with PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weights and biases.
    var layers: [LinearLayer] {
        let sizes = [dataDim + 2 * embeddingDim] + Array(repeating: width, count: depth) + [dataDim]
        return (0..<(sizes.count - 1)).map { i in
            let bound = 1 / Double(sizes[i]).squareRoot()
            return LinearLayer("layers.\(i)", in: sizes[i], out: sizes[i + 1], weight: .uniform(bound: bound),
                               bias: .uniform(bound: bound))
        }
    }

    public func initialParameters(rng: inout RandomGenerator, on device: Device = .default) -> ParameterSet {
        ParameterSet(initializing: layers.flatMap(\.parameters), rng: &rng, on: device)
    }

    public func callAsFunction(_ p: ParameterSet, x: Tensor, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
        var h = concat([x, sinusoidalEmbedding(t, dim: embeddingDim, scale: timeScale),
                        sinusoidalEmbedding(gap, dim: embeddingDim, scale: timeScale)], axis: 1)
        let layers = layers
        for (i, layer) in layers.enumerated() {
            h = layer(h, p)
            if i < layers.count - 1 { h = h.silu() }
        }
        return h
    }
}
