import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// The Lipschitz-controlled DiT of TVM.md as a flow-map network F(x, t, g, c, beta): x [B, C, R, R],
/// t, g = t - s and beta [B], classes one-hot [B, classes] (all-zero rows: the null class).
///
/// Parameter names are the official state-dict keys. `pos_embed` is a fixed buffer stored with the
/// parameters (as upstream, where it is a parameter with requires_grad = False): the forward pass uses it
/// without gradient, so its gradient is zero and optimizers leave it unchanged.
public struct DiT: FlowMapNetwork {
    public let config: DiTConfig
    let layers: DiTLayers

    public init(_ config: DiTConfig) throws {
        try config.validate()
        self.config = config
        layers = DiTLayers(config)
    }

    /// Frequency-feature width of the timestep embedders (cos and sin of 128 frequencies).
    public static let frequencyDim = 256

    // MARK: Parameters

    /// Every tensor of the model in state-dict order (see `DiTLayers`).
    public var parameterSpecs: [ParameterSpec] { layers.parameters }

    /// Every tensor of the model in state-dict order, with its shape.
    public var parameterShapes: [(name: String, shape: [Int])] { parameterSpecs.map { ($0.key, $0.shape) } }

    /// Names of the parameters an optimizer trains (all but the fixed position embedding).
    public var trainableNames: [String] { parameterSpecs.filter(\.trainable).map(\.key) }
    public var frozenParameterNames: [String] { parameterSpecs.filter { !$0.trainable }.map(\.key) }

    /// Total number of scalars (fixed position embedding included) and trainable ones.
    public var parameterCount: (total: Int, trainable: Int) {
        let specs = parameterSpecs
        return (specs.reduce(0) { $0 + $1.count }, specs.filter(\.trainable).reduce(0) { $0 + $1.count })
    }

    /// The fixed 2-D sin-cos position embedding [tokens * hidden] (token n = row * grid + column): the first
    /// half of the channels encodes the column, the second the row, each as [sin(pos w_i), cos(pos w_i)] with
    /// w_i = 10000^(-i / (D/4)).
    public static func positionEmbedding(hidden D: Int, grid: Int) -> [Double] {
        let quarter = D / 4
        let omega = (0..<quarter).map { 1 / pow(10000.0, Double($0) / Double(quarter)) }
        var out = [Double](repeating: 0, count: grid * grid * D)
        for row in 0..<grid {
            for col in 0..<grid {
                let base = (row * grid + col) * D
                for i in 0..<quarter {
                    let a = Double(col) * omega[i], b = Double(row) * omega[i]
                    out[base + i] = sin(a)
                    out[base + quarter + i] = cos(a)
                    out[base + 2 * quarter + i] = sin(b)
                    out[base + 3 * quarter + i] = cos(b)
                }
            }
        }
        return out
    }

    /// Fresh parameters, each as `DiTLayers` declares it.
    public func initialParameters(rng: inout RandomGenerator, on device: Device = .default) -> ParameterSet {
        ParameterSet(initializing: parameterSpecs, rng: &rng, on: device)
    }

    // MARK: Forward

    /// [B, C, R, R] -> [B, N, C p p]: token (i, j) is the patch at row block i, column block j, flattened in
    /// (channel, row, column) order to match a convolution weight [D, C, p, p].
    public func patchify(_ x: Tensor) -> Tensor {
        let c = config, B = x.shape[0], g = c.grid, P = c.patch
        return x.reshaped([B, c.inChannels, g, P, g, P]).permuted([0, 2, 4, 1, 3, 5]).reshaped([B, g * g, c.patchDim])
    }

    /// [B, N, p p C] -> [B, C, R, R]: token (i, j) holds a p x p x C patch, channel last.
    public func unpatchify(_ x: Tensor) -> Tensor {
        let c = config, B = x.shape[0], g = c.grid, P = c.patch
        return x.reshaped([B, g, g, P, P, c.inChannels]).permuted([0, 5, 1, 3, 2, 4])
            .reshaped([B, c.inChannels, c.inputSize, c.inputSize])
    }

    /// Timestep embedder: [cos, sin] features of the raw value, Linear(256 -> D), SiLU, Linear(D -> D).
    func embed(_ v: Tensor, _ p: ParameterSet, _ embedder: DiTLayers.TimestepEmbedder) -> Tensor {
        let h = sinusoidalEmbedding(v, dim: DiT.frequencyDim)
        return embedder.second(embedder.first(h, p).silu(), p)
    }

    /// The conditioning vector c = e_t + e_g + e_beta + e_label (+ e_start + e_end with `guidanceInterval`), [B, D].
    public func conditioning(_ p: ParameterSet, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
        conditionEmbeddings(p, t: t, gap: gap, cond: cond).vector
    }

    /// The embedding of each condition, [B, D] each, in `DiTConfig.contextTokenCounts`' order, and their sum.
    func conditionEmbeddings(_ p: ParameterSet, t: Tensor, gap: Tensor, cond: Conditioning) -> (each: [Tensor], vector: Tensor) {
        let B = t.count, K = config.numClasses
        let beta = cond.beta ?? Tensor.ones([B], dtype: t.dtype, on: t.device)
        precondition(cond.interval == nil || layers.intervalEmbedders != nil, "a guidance interval for a DiT without guidanceInterval")
        var eInterval: (start: Tensor, end: Tensor)?
        if let embedders = layers.intervalEmbedders {
            let start = cond.interval?.start.reshaped([B]) ?? Tensor.zeros([B], dtype: t.dtype, on: t.device)
            let end = cond.interval?.end.reshaped([B]) ?? Tensor.ones([B], dtype: t.dtype, on: t.device)
            eInterval = (embed(start, p, embedders.start), embed(end, p, embedders.end))
        }
        // One-hot rows extended by a null-class column (1 where the row is all zero); a matmul with the
        // table looks the rows up differentiably.
        let labels: Tensor
        if K == 0 {
            labels = Tensor.ones([B, 1], dtype: t.dtype, on: t.device)  // only the null class exists
        } else if let onehot = cond.classes {
            precondition(onehot.shape == [B, K], "class labels have shape \(onehot.shape), expected [\(B), \(K)]")
            labels = concat([onehot, 1 - onehot.sum(axes: [1], keepDims: true)], axis: 1)
        } else {
            labels = concat([Tensor.zeros([B, K], dtype: t.dtype, on: t.device),
                             Tensor.ones([B, 1], dtype: t.dtype, on: t.device)], axis: 1)
        }
        let eLabel = labels.matmul(p[layers.labelTable.key])
        let eT = embed(t, p, layers.timeEmbedder), eGap = embed(gap, p, layers.gapEmbedder)
        let eBeta = embed(beta, p, layers.guidanceEmbedder)
        let c = eT + eGap + eBeta + eLabel
        return ([eLabel, eBeta] + (eInterval.map { [$0.start, $0.end] } ?? []) + [eT, eGap], eInterval.map { c + $0.start + $0.end } ?? c)
    }

    /// `layer`(SiLU(c)) split into `parts` modulation vectors [B, 1, D], each divided by its RMS under
    /// modulation norm.
    func modulation(_ siluC: Tensor, _ p: ParameterSet, _ layer: LinearLayer, parts: Int) -> [Tensor] {
        let B = siluC.shape[0], D = config.hidden
        var m = layer(siluC, p).reshaped([B, parts, D])
        if config.modulationNorm { m = m.rmsNormalized(eps: 1e-6) }
        // Part-major, each part a contiguous range: one copy, and the parts are views of it (`split` on the first axis).
        return m.permuted([1, 0, 2]).split(axis: 0, sizes: Array(repeating: 1, count: parts)).map { $0.reshaped([B, 1, D]) }
    }

    /// rmsNorm(x) * (1 + scale) + shift with [B, 1, D] modulation vectors: one fused pass that never stores the
    /// normalised x. Only linear layers read its result (and tangent), so under bf16 products it is kept as their
    /// bf16 operand alone.
    @inline(__always)
    func modulateNormalized(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor {
        x.rmsNormalized(eps: 1e-6, scale: 1 + scale, shift: shift, products: .only)
    }

    /// x + gate * y with a [B, 1, D] gate (one fused pass). y is a linear layer's output made with `ProductUse.only`:
    /// this pass and its derivatives read it (and its tangent) as the products would, and its cotangents go to that
    /// layer's products alone, so under bf16 products all of them are kept as bf16 operands alone (as bf16 autocast
    /// keeps a linear layer's output); the residual stream itself stays float32.
    @inline(__always)
    func gatedResidual(_ x: Tensor, gate: Tensor, _ y: Tensor) -> Tensor {
        Tensor.scaledSum(y, gate, plus: x, cotangents: .only)
    }

    /// Multi-head self-attention on [B, N, D] with q and k RMS-normalised over the head dimension. Attention
    /// reads the heads token-major ([B, N, H, Dh], the projections reshaped in place): no head permutes.
    /// q, k, v, the output and their tangents are read by the attention kernels' and the projection's products
    /// alone: under bf16 products each is kept as its bf16 operand alone.
    func attentionLayer(_ x: Tensor, _ p: ParameterSet, _ layer: DiTLayers.Attention) -> Tensor {
        let c = config, B = x.shape[0], N = x.shape[1], D = c.hidden, H = c.heads, Dh = c.headDim
        let w = p[layer.qkv.weight.key], b = p[layer.qkv.bias.key]
        // Three products with slices of the weight rather than one product and slices of its output: the
        // weight is smaller than the activations for any real batch, and the slices of the output would be copies.
        func heads(_ k: Int, norm: ParameterSpec?) -> Tensor {
            let wk = w.slice(axis: 0, start: k * D, length: D), bk = b.slice(axis: 0, start: k * D, length: D)
            // q and k before their norms are read by the norms' kernels alone, which read bf16 values, and their
            // cotangents by the linear layers' products alone: under bf16 products all are held in bf16 alone.
            let y = x.linear(wk, bias: bk, products: .only).reshaped([B, N, H, Dh])
            guard let norm else { return y }
            return y.rmsNormalized(eps: 1e-6, scale: p[norm.key], products: .only, inputCotangents: .only)
        }
        let q = heads(0, norm: layer.qNorm), k = heads(1, norm: layer.kNorm), v = heads(2, norm: nil)
        let o = attention(q, k, v, layout: .tokenMajor, products: .only).reshaped([B, N, D])
        return layer.projection(o, p, products: .only)
    }

    func block(_ x: Tensor, _ siluC: Tensor, _ p: ParameterSet, _ layer: DiTLayers.Block) -> Tensor {
        let m = modulation(siluC, p, layer.modulation, parts: 6)
        let a = attentionLayer(modulateNormalized(x, shift: m[0], scale: m[1]), p, layer.attention)
        let x1 = gatedResidual(x, gate: m[2], a)
        let h = modulateNormalized(x1, shift: m[3], scale: m[4])
        // The GELU's output (and tangent) feeds the second linear layer alone: its bf16 operand under bf16 products.
        let mlp = layer.mlpOut(layer.mlpIn.gelu(h, p, products: .only), p, products: .only)
        return gatedResidual(x1, gate: m[5], mlp)
    }

    public func callAsFunction(_ p: ParameterSet, x: Tensor, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
        let c = config, B = x.shape[0]
        precondition(x.shape == [B, c.inChannels, c.inputSize, c.inputSize],
                     "DiT input has shape \(x.shape), expected [B, \(c.inChannels), \(c.inputSize), \(c.inputSize)]")
        precondition(t.count == B && gap.count == B, "t and gap need one value per batch row")
        let patches = layers.patchEmbedding
        let wPatch = p[patches.weight.key].reshaped([c.hidden, c.patchDim])
        var h = patchify(x).linear(wPatch, bias: p[patches.bias.key]) + p[layers.positions.key].detached()
        let embeddings = conditionEmbeddings(p, t: t.reshaped([B]), gap: gap.reshaped([B]), cond: cond)
        let siluC = embeddings.vector.silu()
        if c.inContext {
            // Each condition's tokens: its learned tokens plus its embedding, ahead of the patches.
            let prefix = zip(layers.contextTokens, embeddings.each).map { spec, e in
                p[spec.key].reshaped([1, spec.shape[0], c.hidden]) + e.reshaped([B, 1, c.hidden])
            }
            h = concat(prefix + [h], axis: 1)
        }
        for block in layers.blocks { h = self.block(h, siluC, p, block) }
        if c.inContext { h = h.slice(axis: 1, start: c.contextTokens, length: c.tokens) }
        let m = modulation(siluC, p, layers.finalModulation, parts: 2)
        h = layers.finalLinear(modulateNormalized(h, shift: m[0], scale: m[1]), p)
        return unpatchify(h)
    }
}
