/// Every parameter of the DiT, declared once with its official key, its shape and its initialiser (TVM.md's
/// spectral initialisation, or Xavier-uniform; biases 0; q/k norm weights 1; the label table and, without
/// `timeSpecInit`, the timestep MLPs N(0, 0.02); the adaLN output Linears and the final layer 0; the fixed
/// position embedding). `parameters` lists them in state-dict order, which is also the order in which the
/// initialisation draws their random numbers; the forward pass looks its tensors up through these specs.
struct DiTLayers: Sendable {
    /// The timestep MLP of one scalar input: Linear(256 -> D), SiLU, Linear(D -> D).
    struct TimestepEmbedder: Sendable {
        let first: LinearLayer, second: LinearLayer
        var parameters: [ParameterSpec] { first.parameters + second.parameters }
    }

    struct Attention: Sendable {
        let qkv: LinearLayer
        let qNorm: ParameterSpec, kNorm: ParameterSpec
        let projection: LinearLayer
        var parameters: [ParameterSpec] { qkv.parameters + [qNorm, kNorm] + projection.parameters }
    }

    struct Block: Sendable {
        let attention: Attention
        let mlpIn: LinearLayer, mlpOut: LinearLayer
        /// Six modulation vectors (shift, scale, gate of attention, then of the MLP) from SiLU(c).
        let modulation: LinearLayer
        var parameters: [ParameterSpec] { attention.parameters + mlpIn.parameters + mlpOut.parameters + modulation.parameters }
    }

    let positions: ParameterSpec
    let patchEmbedding: LinearLayer
    let timeEmbedder: TimestepEmbedder, gapEmbedder: TimestepEmbedder, guidanceEmbedder: TimestepEmbedder
    /// The guidance interval's start and end (iMF's names), with `guidanceInterval` only.
    let intervalEmbedders: (start: TimestepEmbedder, end: TimestepEmbedder)?
    /// The learned in-context tokens of each condition, [count, D], in `DiTConfig.contextTokenCounts`' order
    /// (empty without `inContext`).
    let contextTokens: [ParameterSpec]
    /// One row per class and a last one for the null class.
    let labelTable: ParameterSpec
    let blocks: [Block]
    let finalLinear: LinearLayer
    /// Shift and scale of the final norm.
    let finalModulation: LinearLayer

    init(_ c: DiTConfig) {
        let D = c.hidden
        let weights: Initializer = c.initialization == .spectral ? .spectral : .xavierUniform
        // As upstream, time_specinit only takes effect with the spectral initialisation.
        let timeWeights: Initializer = c.timeSpecInit && c.initialization == .spectral ? .spectral : .normal(std: 0.02)
        func timestep(_ key: String) -> TimestepEmbedder {
            TimestepEmbedder(first: LinearLayer(key + ".mlp.0", in: DiT.frequencyDim, out: D, weight: timeWeights),
                             second: LinearLayer(key + ".mlp.2", in: D, out: D, weight: timeWeights))
        }
        positions = ParameterSpec("pos_embed", [1, c.tokens, D], .sinCosPositions(grid: c.grid), trainable: false)
        patchEmbedding = LinearLayer("x_embedder.proj", in: c.patchDim, out: D, weightShape: [D, c.inChannels, c.patch, c.patch],
                                     weight: weights)
        timeEmbedder = timestep("t_embedder")
        gapEmbedder = timestep("s_embedder")
        guidanceEmbedder = timestep("guidance_embedder")
        intervalEmbedders = c.guidanceInterval ? (timestep("cfg_t_start_embedder"), timestep("cfg_t_end_embedder")) : nil
        // N(0, 1/D) as the official tokens.
        contextTokens = c.contextTokenCounts.map { ParameterSpec("\($0.condition)_tokens", [$0.count, D], .normal(std: 1 / Double(D).squareRoot())) }
        labelTable = ParameterSpec("y_embedder.embedding_table.weight", [c.numClasses + 1, D], .normal(std: 0.02))
        blocks = (0..<c.depth).map { k in
            let b = "blocks.\(k)."
            return Block(attention: Attention(qkv: LinearLayer(b + "attn.qkv", in: D, out: 3 * D, weight: weights),
                                              qNorm: ParameterSpec(b + "attn.q_norm.weight", [c.headDim], .ones),
                                              kNorm: ParameterSpec(b + "attn.k_norm.weight", [c.headDim], .ones),
                                              projection: LinearLayer(b + "attn.proj", in: D, out: D, weight: weights)),
                         mlpIn: LinearLayer(b + "mlp.fc1", in: D, out: c.mlpHidden, weight: weights),
                         mlpOut: LinearLayer(b + "mlp.fc2", in: c.mlpHidden, out: D, weight: weights),
                         modulation: LinearLayer(b + "adaLN_modulation.1", in: D, out: 6 * D, weight: .zeros))
        }
        finalLinear = LinearLayer("final_layer.linear", in: D, out: c.patchDim, weight: .zeros)
        finalModulation = LinearLayer("final_layer.adaLN_modulation.1", in: D, out: 2 * D, weight: .zeros)
    }

    var parameters: [ParameterSpec] {
        [positions] + patchEmbedding.parameters + timeEmbedder.parameters + gapEmbedder.parameters
            + guidanceEmbedder.parameters + (intervalEmbedders.map { $0.start.parameters + $0.end.parameters } ?? [])
            + [labelTable] + contextTokens + blocks.flatMap(\.parameters) + finalLinear.parameters + finalModulation.parameters
    }
}
