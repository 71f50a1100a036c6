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

    public init(_ config: DiTConfig) throws {
        try config.validate()
        self.config = config
    }

    /// Frequency-feature width of the timestep embedders (cos and sin of 128 frequencies).
    public static let frequencyDim = 256
    public static let fixedParameterNames: Set<String> = ["pos_embed"]

    // MARK: Parameters

    /// Every tensor of the model in state-dict order, with its shape.
    public var parameterShapes: [(name: String, shape: [Int])] {
        let c = config, D = c.hidden
        var s: [(String, [Int])] = [
            ("pos_embed", [1, c.tokens, D]),
            ("x_embedder.proj.weight", [D, c.inChannels, c.patch, c.patch]),
            ("x_embedder.proj.bias", [D]),
        ]
        for e in ["t_embedder", "s_embedder", "guidance_embedder"] {
            s += [("\(e).mlp.0.weight", [D, DiT.frequencyDim]), ("\(e).mlp.0.bias", [D]),
                  ("\(e).mlp.2.weight", [D, D]), ("\(e).mlp.2.bias", [D])]
        }
        s.append(("y_embedder.embedding_table.weight", [c.numClasses + 1, D]))
        for k in 0..<c.depth {
            let b = "blocks.\(k)."
            s += [(b + "attn.qkv.weight", [3 * D, D]), (b + "attn.qkv.bias", [3 * D]),
                  (b + "attn.q_norm.weight", [c.headDim]), (b + "attn.k_norm.weight", [c.headDim]),
                  (b + "attn.proj.weight", [D, D]), (b + "attn.proj.bias", [D]),
                  (b + "mlp.fc1.weight", [c.mlpHidden, D]), (b + "mlp.fc1.bias", [c.mlpHidden]),
                  (b + "mlp.fc2.weight", [D, c.mlpHidden]), (b + "mlp.fc2.bias", [D]),
                  (b + "adaLN_modulation.1.weight", [6 * D, D]), (b + "adaLN_modulation.1.bias", [6 * D])]
        }
        s += [("final_layer.linear.weight", [c.patchDim, D]), ("final_layer.linear.bias", [c.patchDim]),
              ("final_layer.adaLN_modulation.1.weight", [2 * D, D]), ("final_layer.adaLN_modulation.1.bias", [2 * D])]
        return s
    }

    /// Names of the parameters an optimizer trains (all but the fixed position embedding).
    public var trainableNames: [String] {
        parameterShapes.map(\.name).filter { !DiT.fixedParameterNames.contains($0) }
    }

    /// Total number of scalars (fixed position embedding included) and trainable ones.
    public var parameterCount: (total: Int, trainable: Int) {
        var total = 0, trainable = 0
        for (n, s) in parameterShapes {
            let k = Shape.count(s)
            total += k
            if !DiT.fixedParameterNames.contains(n) { trainable += k }
        }
        return (total, trainable)
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

    /// Fresh parameters: TVM.md's spectral initialisation (or Xavier-uniform), biases 0, q/k norm weights 1,
    /// label table N(0, 0.02), timestep MLPs N(0, 0.02) (spectral with `timeSpecInit` under `.spectral`), adaLN output Linears
    /// and the final Linear zero, and the fixed position embedding.
    public func initialParameters(rng: inout RandomGenerator, on device: Device = .default) -> ParameterSet {
        let c = config
        let p = ParameterSet()
        func put(_ name: String, _ values: [Double], _ shape: [Int]) {
            p[name] = Tensor(values, shape: shape, dtype: .float32, on: device)
        }
        func zeros(_ name: String, _ shape: [Int]) { p[name] = Tensor.zeros(shape, on: device) }
        func layer(_ out: Int, _ fanIn: Int) -> [Double] {
            switch c.initialization {
            case .spectral: return Init.spectral(out: out, in: fanIn, rng: &rng)
            case .xavierUniform: return Init.xavierUniform(out: out, in: fanIn, rng: &rng)
            }
        }
        for (name, shape) in parameterShapes {
            let count = Shape.count(shape)
            if name == "pos_embed" {
                put(name, DiT.positionEmbedding(hidden: c.hidden, grid: c.grid), shape)
            } else if name.hasSuffix(".bias") || name.hasPrefix("final_layer.") || name.contains("adaLN_modulation") {
                zeros(name, shape)
            } else if name.hasSuffix("_norm.weight") {
                p[name] = Tensor.ones(shape, on: device)
            } else if name == "y_embedder.embedding_table.weight" {
                put(name, Init.normal(count, std: 0.02, rng: &rng), shape)
            } else if name.hasPrefix("t_embedder.") || name.hasPrefix("s_embedder.") || name.hasPrefix("guidance_embedder.") {
                // As upstream, time_specinit only takes effect with the spectral initialisation.
                let spectral = c.timeSpecInit && c.initialization == .spectral
                put(name, spectral ? Init.spectral(out: shape[0], in: shape[1], rng: &rng)
                                   : Init.normal(count, std: 0.02, rng: &rng), shape)
            } else {
                // Linear weights [out, in]; the patch embedding as the matrix [D, C p p].
                put(name, layer(shape[0], count / shape[0]), shape)
            }
        }
        return p
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
    func embed(_ v: Tensor, _ p: ParameterSet, _ name: String) -> Tensor {
        let h = sinusoidalEmbedding(v, dim: DiT.frequencyDim)
        return linear(linear(h, p, name + ".mlp.0").silu(), p, name + ".mlp.2")
    }

    /// The conditioning vector c = e_t + e_g + e_beta + e_label, [B, D].
    public func conditioning(_ p: ParameterSet, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
        let B = t.count, K = config.numClasses
        let beta = cond.beta ?? Tensor.ones([B], dtype: t.dtype, on: t.device)
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
        let eLabel = labels.matmul(p["y_embedder.embedding_table.weight"])
        return embed(t, p, "t_embedder") + embed(gap, p, "s_embedder") + embed(beta, p, "guidance_embedder") + eLabel
    }

    /// Linear(SiLU(c)) split into `parts` modulation vectors [B, 1, D], each divided by its RMS under
    /// modulation norm.
    func modulation(_ siluC: Tensor, _ p: ParameterSet, _ name: String, parts: Int) -> [Tensor] {
        let B = siluC.shape[0], D = config.hidden
        var m = linear(siluC, p, name).reshaped([B, parts, D])
        if config.modulationNorm { m = m.rmsNormalized(eps: 1e-6) }
        return m.split(axis: 1, sizes: Array(repeating: 1, count: parts))
    }

    /// rmsNorm(x) * (1 + scale) + shift with [B, 1, D] modulation vectors: one fused pass that never stores the
    /// normalised x. Its result always feeds a Linear.
    @inline(__always)
    func modulateNormalized(_ x: Tensor, shift: Tensor, scale: Tensor) -> Tensor {
        x.rmsNormalized(eps: 1e-6, scale: 1 + scale, shift: shift, feedsProducts: true)
    }

    /// x + gate * y with a [B, 1, D] gate (one fused pass).
    @inline(__always)
    func gatedResidual(_ x: Tensor, gate: Tensor, _ y: Tensor) -> Tensor {
        Tensor.scaledSum(y, gate, plus: x)
    }

    /// Multi-head self-attention on [B, N, D] with q and k RMS-normalised over the head dimension. Attention
    /// reads the heads token-major ([B, N, H, Dh], the projections reshaped in place): no head permutes.
    func attentionLayer(_ x: Tensor, _ p: ParameterSet, _ name: String) -> Tensor {
        let c = config, B = x.shape[0], N = x.shape[1], D = c.hidden, H = c.heads, Dh = c.headDim
        let w = p[name + ".qkv.weight"], b = p[name + ".qkv.bias"]
        // Three products with slices of the weight rather than one product and slices of its output: the
        // weight is smaller than the activations for any real batch, and the slices of the output would be copies.
        func heads(_ k: Int, norm: String?) -> Tensor {
            let wk = w.slice(axis: 0, start: k * D, length: D), bk = b.slice(axis: 0, start: k * D, length: D)
            let h = x.linear(wk, bias: bk).reshaped([B, N, H, Dh])
            guard let norm else { return h }
            return h.rmsNormalized(eps: 1e-6, scale: p[name + "." + norm + ".weight"])
        }
        let q = heads(0, norm: "q_norm"), k = heads(1, norm: "k_norm"), v = heads(2, norm: nil)
        let o = attention(q, k, v, layout: .tokenMajor).reshaped([B, N, D])
        return linear(o, p, name + ".proj")
    }

    func block(_ x: Tensor, _ siluC: Tensor, _ p: ParameterSet, _ k: Int) -> Tensor {
        let b = "blocks.\(k)."
        let m = modulation(siluC, p, b + "adaLN_modulation.1", parts: 6)
        let a = attentionLayer(modulateNormalized(x, shift: m[0], scale: m[1]), p, b + "attn")
        let x1 = gatedResidual(x, gate: m[2], a)
        let h = modulateNormalized(x1, shift: m[3], scale: m[4])
        let mlp = linear(linearGELU(h, p, b + "mlp.fc1"), p, b + "mlp.fc2")
        return gatedResidual(x1, gate: m[5], mlp)
    }

    public func callAsFunction(_ p: ParameterSet, x: Tensor, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
        let c = config, B = x.shape[0]
        precondition(x.shape == [B, c.inChannels, c.inputSize, c.inputSize],
                     "DiT input has shape \(x.shape), expected [B, \(c.inChannels), \(c.inputSize), \(c.inputSize)]")
        precondition(t.count == B && gap.count == B, "t and gap need one value per batch row")
        let wPatch = p["x_embedder.proj.weight"].reshaped([c.hidden, c.patchDim])
        var h = patchify(x).linear(wPatch, bias: p["x_embedder.proj.bias"]) + p["pos_embed"].detached()
        let siluC = conditioning(p, t: t.reshaped([B]), gap: gap.reshaped([B]), cond: cond).silu()
        for k in 0..<c.depth { h = block(h, siluC, p, k) }
        let m = modulation(siluC, p, "final_layer.adaLN_modulation.1", parts: 2)
        h = linear(modulateNormalized(h, shift: m[0], scale: m[1]), p, "final_layer.linear")
        return unpatchify(h)
    }
}
