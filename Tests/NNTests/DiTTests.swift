import XCTest
import TensorCore
import NN
import Formats

/// The DiT against its definition in TVM.md, piece by piece, on small models.
final class DiTTests: XCTestCase {
    static let small = DiTConfig(patch: 2, hidden: 32, depth: 2, heads: 2, inputSize: 8, inChannels: 4, numClasses: 10)

    func relErr(_ a: [Double], _ b: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += (x - y) * (x - y); den += y * y }
        return num.squareRoot() / max(den.squareRoot(), 1e-300)
    }

    /// Every parameter replaced by N(0, std) values (the zero-initialised layers would hide most of the model).
    func randomized(_ p: ParameterSet, std: Double = 0.3, seed: UInt64 = 7, dtype: DType = .float32) -> ParameterSet {
        var rng = RandomGenerator(seed: seed)
        return ParameterSet(p.pairs.map { name, t in
            if name == "pos_embed" { return (name, t.cast(dtype).detached()) }
            let v = rng.normalFloats(t.count).map { Double($0) * std + (name.hasSuffix("_norm.weight") ? 1 : 0) }
            return (name, Tensor(v, shape: t.shape, dtype: dtype))
        })
    }

    // MARK: Configs

    func testNamedConfigs() throws {
        let expected: [(String, Int, Int, Int)] = [("S/2", 384, 12, 6), ("B/2", 768, 12, 12), ("L/2", 1024, 24, 16),
                                                   ("XL/2", 1152, 28, 16), ("XL/2-18", 1152, 28, 18)]
        for (name, hidden, depth, heads) in expected {
            let c = try DiTConfig.named(name, res: 32, channels: 4, classes: 1000)
            XCTAssertEqual([c.patch, c.hidden, c.depth, c.heads, c.inputSize, c.inChannels, c.numClasses],
                           [2, hidden, depth, heads, 32, 4, 1000], name)
            XCTAssertEqual(c.mlpRatio, 4)
            XCTAssertTrue(c.modulationNorm)
            XCTAssertEqual(c.initialization, .spectral)
        }
        XCTAssertEqual(try DiTConfig.named("XL/2-18", res: 32, channels: 4, classes: 1000).headDim, 64)
        XCTAssertEqual(try DiTConfig.named("dit-b/4", res: 32, channels: 4, classes: 10).patch, 4)
        for bad in ["M/2", "XL", "S/", "S/0", "S/2-x", "", "B/2/2"] {
            XCTAssertThrowsError(try DiTConfig.named(bad, res: 32, channels: 4, classes: 10), bad) { e in
                let m = (e as? ModelError)?.message ?? ""
                XCTAssertTrue(m.contains("unknown DiT size") && m.contains("XL/2-18"), m)
            }
        }
        // A valid name at an impossible resolution fails validation instead.
        XCTAssertThrowsError(try DiTConfig.named("S/2", res: 33, channels: 4, classes: 10)) { e in
            XCTAssertTrue("\(e)".contains("not a multiple of the patch size"), "\(e)")
        }
    }

    func testConfigValidation() {
        func message(_ c: DiTConfig) -> String {
            do { try c.validate(); return "" } catch { return "\(error)" }
        }
        var c = DiTTests.small
        XCTAssertEqual(message(c), "")
        c.heads = 3
        XCTAssertTrue(message(c).contains("not divisible by 3 heads"))
        c = DiTTests.small; c.hidden = 30; c.heads = 2
        XCTAssertTrue(message(c).contains("multiple of 4"))
        c = DiTTests.small; c.inputSize = 9
        XCTAssertTrue(message(c).contains("not a multiple of the patch size"))
        c = DiTTests.small; c.patch = 0
        XCTAssertTrue(message(c).contains("patch must be at least 1"))
        c = DiTTests.small; c.depth = 0
        XCTAssertTrue(message(c).contains("depth"))
        c = DiTTests.small; c.mlpRatio = 0
        XCTAssertTrue(message(c).contains("mlp ratio"))
        c = DiTTests.small; c.numClasses = -1
        XCTAssertTrue(message(c).contains("classes"))
        c = DiTTests.small; c.inChannels = 0
        XCTAssertTrue(message(c).contains("channels"))
        XCTAssertThrowsError(try DiT(DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 5, inputSize: 8, inChannels: 4,
                                               numClasses: 0)))
    }

    /// DiT-S/2 at 32x32x4 with 1000 classes, counted from the architecture by hand.
    func testModelConfigRoundTripsThroughJSON() throws {
        let model = DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3)
        var c = model
        c.mlpRatio = 2.5
        c.initialization = .xavierUniform
        XCTAssertEqual(try DiTConfig(json: c.json), c)
        XCTAssertNil(c.firstDifference(from: c))
        XCTAssertEqual(c.firstDifference(from: model), "mlp_ratio 2.5 vs 4.0")
        c = model
        c.guidanceInterval = true
        XCTAssertEqual(try DiTConfig(json: c.json), c)
        XCTAssertEqual(c.firstDifference(from: model), "guidance_interval true vs false")
        // A checkpoint written before the interval input existed has no such key: no interval input.
        guard case .object(let fields) = model.json else { return XCTFail("a JSON object") }
        let old = JSONValue.object(fields.filter { $0.0 != "guidance_interval" })
        XCTAssertEqual(try DiTConfig(json: old), model)
    }

    /// In-context conditioning: learned tokens per condition (iMF's counts) ahead of the patches, each plus its
    /// condition's embedding; the blocks attend to them, the output keeps the patches only, rows stay independent.
    func testInContextConditioningTokens() throws {
        var config = DiTTests.small
        (config.guidanceInterval, config.inContext) = (true, true)
        let net = try DiT(config)
        let D = 32
        let tokens = net.parameterShapes.filter { $0.name.hasSuffix("_tokens") }
        XCTAssertEqual(tokens.map(\.name), ["class_tokens", "guidance_tokens", "interval_start_tokens", "interval_end_tokens",
                                            "t_tokens", "gap_tokens"])
        XCTAssertEqual(tokens.map(\.shape), [[8, D], [4, D], [2, D], [2, D], [4, D], [4, D]])
        XCTAssertEqual(config.contextTokens, 24)
        var rng = RandomGenerator(seed: 9)
        let p = randomized(net.initialParameters(rng: &rng))
        let x = Tensor.randomNormal([2, 4, 8, 8], rng: &rng)
        var onehot = [Float](repeating: 0, count: 20)
        onehot[3] = 1; onehot[17] = 1
        let classes = Tensor(onehot, shape: [2, 10]), t = Tensor([0.7, 0.3], shape: [2]), gap = Tensor([0.2, 0.1], shape: [2])
        let both = net(p, x: x, t: t, gap: gap, cond: Conditioning(classes: classes))
        XCTAssertEqual(both.shape, [2, 4, 8, 8])
        for row in 0..<2 {
            let one = net(p, x: x.slice(axis: 0, start: row, length: 1), t: t.slice(axis: 0, start: row, length: 1),
                          gap: gap.slice(axis: 0, start: row, length: 1), cond: Conditioning(classes: classes.slice(axis: 0, start: row, length: 1)))
            XCTAssertLessThan(relErr(one.doubles, both.slice(axis: 0, start: row, length: 1).doubles), 1e-5)
        }
        // The tokens reach the output through attention: other class tokens, another output.
        let moved = ParameterSet(p.pairs.map { n, v in (n, n == "class_tokens" ? v * 2 : v) })
        XCTAssertGreaterThan(relErr(net(moved, x: x, t: t, gap: gap, cond: Conditioning(classes: classes)).doubles, both.doubles), 1e-3)
        // Without them (the same other weights), the output differs too.
        var plainConfig = config
        plainConfig.inContext = false
        let plain = try DiT(plainConfig)
        let withoutTokens = ParameterSet(p.pairs.filter { !$0.0.hasSuffix("_tokens") })
        XCTAssertGreaterThan(relErr(plain(withoutTokens, x: x, t: t, gap: gap, cond: Conditioning(classes: classes)).doubles, both.doubles), 1e-3)
        var json = config
        json.guidanceInterval = false
        XCTAssertEqual(try DiTConfig(json: json.json), json)
        XCTAssertEqual(json.contextTokens, 20)
    }

    /// With `guidanceInterval` the DiT has two more timestep MLPs, the interval's start and end, whose embeddings
    /// are added to the conditioning vector; no interval given means [0, 1].
    func testGuidanceIntervalInput() throws {
        var config = DiTTests.small
        config.guidanceInterval = true
        let net = try DiT(config), plain = try DiT(DiTTests.small)
        let extra = net.parameterShapes.filter { n in !plain.parameterShapes.contains { $0.name == n.name } }
        XCTAssertEqual(extra.map(\.name), ["cfg_t_start_embedder.mlp.0.weight", "cfg_t_start_embedder.mlp.0.bias",
                                           "cfg_t_start_embedder.mlp.2.weight", "cfg_t_start_embedder.mlp.2.bias",
                                           "cfg_t_end_embedder.mlp.0.weight", "cfg_t_end_embedder.mlp.0.bias",
                                           "cfg_t_end_embedder.mlp.2.weight", "cfg_t_end_embedder.mlp.2.bias"])
        XCTAssertEqual(net.parameterCount.total - plain.parameterCount.total, 2 * (256 * 32 + 32 + 32 * 32 + 32))
        var rng = RandomGenerator(seed: 4)
        let p = randomized(net.initialParameters(rng: &rng))
        let t = Tensor([0.7, 0.3], shape: [2]), gap = Tensor([0.2, 0.1], shape: [2])
        let x = Tensor.randomNormal([2, 4, 8, 8], rng: &rng)
        func out(_ interval: (start: Tensor, end: Tensor)?) -> [Double] {
            net(p, x: x, t: t, gap: gap, cond: Conditioning(beta: Tensor([0.25, 0.5], shape: [2]), interval: interval)).doubles
        }
        let whole = out((Tensor.zeros([2]), Tensor.ones([2])))
        XCTAssertEqual(out(nil), whole)
        XCTAssertGreaterThan(relErr(out((Tensor([0.4, 0.4], shape: [2]), Tensor([0.65, 0.65], shape: [2]))), whole), 1e-3)
        // The conditioning vector gains exactly the two embeddings.
        let start = Tensor([0.4, 0.1], shape: [2]), end = Tensor([0.6, 0.9], shape: [2])
        let c = net.conditioning(p, t: t, gap: gap, cond: Conditioning(interval: (start, end)))
        func embedded(_ v: Tensor, _ key: String) -> Tensor {
            let h = sinusoidalEmbedding(v, dim: DiT.frequencyDim).linear(p[key + ".mlp.0.weight"], bias: p[key + ".mlp.0.bias"]).silu()
            return h.linear(p[key + ".mlp.2.weight"], bias: p[key + ".mlp.2.bias"])
        }
        let plainVector = plain.conditioning(ParameterSet(p.pairs.filter { n, _ in !n.hasPrefix("cfg_t_") }), t: t, gap: gap, cond: Conditioning())
        let expected = plainVector + embedded(start, "cfg_t_start_embedder") + embedded(end, "cfg_t_end_embedder")
        XCTAssertLessThan(relErr(c.doubles, expected.doubles), 1e-5)
    }

    func testParameterCounts() throws {
        let net = try DiT(try DiTConfig.named("S/2", res: 32, channels: 4, classes: 1000))
        let D = 384, C = 4, p = 2, N = 256, K = 1000, M = 4 * D, Dh = 64, depth = 12
        let patchEmbed = D * C * p * p + D
        let posEmbed = N * D
        let timestep = 3 * (256 * D + D + D * D + D)
        let labels = (K + 1) * D
        let block = (D * 6 * D + 6 * D) + (D * 3 * D + 3 * D) + 2 * Dh + (D * D + D) + (D * M + M) + (M * D + D)
        let final = (D * 2 * D + 2 * D) + (D * p * p * C + p * p * C)
        let total = patchEmbed + posEmbed + timestep + labels + depth * block + final
        XCTAssertEqual(total, 33_451_792)
        XCTAssertEqual(net.parameterCount.total, total)
        XCTAssertEqual(net.parameterCount.trainable, total - posEmbed)
        XCTAssertEqual(net.parameterCount.trainable, 33_353_488)
        XCTAssertEqual(net.parameterShapes.count, 1 + 2 + 12 + 1 + 12 * depth + 4)
        XCTAssertEqual(net.trainableNames.count, net.parameterShapes.count - 1)
        XCTAssertFalse(net.trainableNames.contains("pos_embed"))
        // The other sizes, through the same formula (depth and width only differ).
        for (name, want) in [("B/2", 768), ("XL/2-18", 1152)] {
            let c = try DiTConfig.named(name, res: 32, channels: 4, classes: 1000)
            let n = try DiT(c)
            let D = want, M = 4 * D, Dh = D / c.heads
            let block = (D * 6 * D + 6 * D) + (D * 3 * D + 3 * D) + 2 * Dh + (D * D + D) + (D * M + M) + (M * D + D)
            let t = (D * 16 + D) + N * D + 3 * (256 * D + 2 * D + D * D) + (K + 1) * D + c.depth * block
                + (2 * D * D + 2 * D) + (16 * D + 16)
            XCTAssertEqual(n.parameterCount.total, t, name)
        }
    }

    // MARK: Pieces

    func testPositionEmbeddingFormula() {
        let D = 16, g = 3, q = D / 4
        let pe = DiT.positionEmbedding(hidden: D, grid: g)
        for row in 0..<g {
            for col in 0..<g {
                for i in 0..<q {
                    let w = pow(10000.0, -Double(i) / Double(q))
                    let base = (row * g + col) * D
                    XCTAssertEqual(pe[base + i], sin(Double(col) * w), accuracy: 1e-15)
                    XCTAssertEqual(pe[base + q + i], cos(Double(col) * w), accuracy: 1e-15)
                    XCTAssertEqual(pe[base + 2 * q + i], sin(Double(row) * w), accuracy: 1e-15)
                    XCTAssertEqual(pe[base + 3 * q + i], cos(Double(row) * w), accuracy: 1e-15)
                }
            }
        }
    }

    func testPatchifyAndUnpatchifyLayouts() throws {
        let c = DiTConfig(patch: 2, hidden: 8, depth: 1, heads: 1, inputSize: 6, inChannels: 3, numClasses: 0)
        let net = try DiT(c)
        let (B, C, R, P, g) = (2, 3, 6, 2, 3)
        let values = (0..<(B * C * R * R)).map(Float.init)
        let x = Tensor(values, shape: [B, C, R, R])
        let patches = net.patchify(x)
        XCTAssertEqual(patches.shape, [B, g * g, C * P * P])
        let pv = patches.floats
        // Token (i, j), entry (c, a, b) in (C, p, p) order, is pixel (c, i p + a, j p + b).
        for b in 0..<B { for i in 0..<g { for j in 0..<g { for ch in 0..<C { for u in 0..<P { for v in 0..<P {
            let got = pv[((b * g * g) + i * g + j) * C * P * P + (ch * P + u) * P + v]
            XCTAssertEqual(got, values[((b * C + ch) * R + i * P + u) * R + j * P + v])
        } } } } } }
        // Unpatchify: token (i, j) holds a p x p x C patch, channel last.
        let tokens = (0..<(B * g * g * P * P * C)).map(Float.init)
        let img = net.unpatchify(Tensor(tokens, shape: [B, g * g, P * P * C]))
        XCTAssertEqual(img.shape, [B, C, R, R])
        let iv = img.floats
        for b in 0..<B { for i in 0..<g { for j in 0..<g { for u in 0..<P { for v in 0..<P { for ch in 0..<C {
            XCTAssertEqual(iv[((b * C + ch) * R + i * P + u) * R + j * P + v],
                           tokens[((b * g * g) + i * g + j) * P * P * C + (u * P + v) * C + ch])
        } } } } } }
        // Round trip: patchify, reorder each patch from (C, p, p) to (p, p, C), unpatchify.
        let reordered = patches.reshaped([B, g * g, C, P, P]).permuted([0, 1, 3, 4, 2]).reshaped([B, g * g, P * P * C])
        XCTAssertEqual(net.unpatchify(reordered).floats, values)
    }

    func testInitialOutputIsZeroAndShapesMatch() throws {
        let net = try DiT(DiTTests.small)
        var rng = RandomGenerator(seed: 1)
        let p = net.initialParameters(rng: &rng)
        XCTAssertEqual(p.names, net.parameterShapes.map(\.name))
        for (name, shape) in net.parameterShapes { XCTAssertEqual(p[name].shape, shape, name) }
        let x = Tensor.randomNormal([3, 4, 8, 8], rng: &rng)
        let F = net(p, x: x, t: Tensor([0.9, 0.5, 0.1], shape: [3]), gap: Tensor([0.5, 0.0, 0.1], shape: [3]),
                    cond: Conditioning())
        XCTAssertEqual(F.shape, [3, 4, 8, 8])
        XCTAssertTrue(F.floats.allSatisfy { $0 == 0 }, "zero-initialised final layer gives F = 0")
    }

    func testLabelEmbeddingNullClassAndMissingConditioning() throws {
        let net = try DiT(DiTTests.small)
        var rng = RandomGenerator(seed: 2)
        let p = randomized(net.initialParameters(rng: &rng))
        let t = Tensor([0.7, 0.7, 0.7], shape: [3]), gap = Tensor([0.2, 0.2, 0.2], shape: [3])
        var onehot = [Float](repeating: 0, count: 30)
        onehot[3] = 1; onehot[10 + 9] = 1  // rows: class 3, class 9, null
        let c = net.conditioning(p, t: t, gap: gap, cond: Conditioning(classes: Tensor(onehot, shape: [3, 10]),
                                                                         beta: Tensor.ones([3])))
        let base = net.conditioning(p, t: t, gap: gap, cond: Conditioning())  // all null class, beta 1
        let table = p["y_embedder.embedding_table.weight"].floats, D = 32
        let cv = c.floats, bv = base.floats
        for (row, cls) in [(0, 3), (1, 9), (2, 10)] {
            for d in 0..<D {
                XCTAssertEqual(cv[row * D + d] - bv[row * D + d], table[cls * D + d] - table[10 * D + d], accuracy: 1e-5)
            }
        }
        // beta enters through the guidance embedder only.
        let b2 = net.conditioning(p, t: t, gap: gap, cond: Conditioning(beta: Tensor([0.5, 0.5, 0.5], shape: [3])))
        XCTAssertGreaterThan(relErr(b2.doubles, base.doubles), 1e-3)
    }

    /// With modulation norm each modulation vector is divided by its RMS, so scaling an adaLN layer changes
    /// nothing; without it the output moves.
    func testModulationNormOnAndOff() throws {
        for norm in [true, false] {
            var c = DiTTests.small
            c.modulationNorm = norm
            let net = try DiT(c)
            var rng = RandomGenerator(seed: 3)
            let p = randomized(net.initialParameters(rng: &rng))
            let x = Tensor.randomNormal([2, 4, 8, 8], rng: &rng)
            let t = Tensor([0.8, 0.4], shape: [2]), gap = Tensor([0.3, 0.1], shape: [2])
            let F = net(p, x: x, t: t, gap: gap, cond: Conditioning())
            let scaled = ParameterSet(p.pairs.map { n, v in (n, n.contains("adaLN_modulation") ? v * 4.0 : v) })
            let F2 = net(scaled, x: x, t: t, gap: gap, cond: Conditioning())
            let e = relErr(F2.doubles, F.doubles)
            if norm { XCTAssertLessThan(e, 1e-5, "modulation norm makes the output scale-invariant in adaLN") }
            else { XCTAssertGreaterThan(e, 1e-2, "without modulation norm the adaLN scale matters") }
        }
    }

    /// The fixed position embedding gets no gradient (it is not trained upstream).
    func testPositionEmbeddingIsFixed() throws {
        let net = try DiT(DiTTests.small)
        var rng = RandomGenerator(seed: 4)
        let p = randomized(net.initialParameters(rng: &rng)).leaves()
        let x = Tensor.randomNormal([2, 4, 8, 8], rng: &rng)
        let F = net(p, x: x, t: Tensor([0.8, 0.4], shape: [2]), gap: Tensor([0.3, 0.1], shape: [2]), cond: Conditioning())
        let g = gradients(of: F.square().sum(), wrt: [p["pos_embed"], p["x_embedder.proj.bias"]])
        XCTAssertTrue(g[0].floats.allSatisfy { $0 == 0 })
        XCTAssertGreaterThan(g[1].floats.map(abs).max()!, 0)
    }

    /// Float64 finite differences of the whole network: dF/ds by forward mode, and the gradient of a loss of
    /// that tangent with respect to every parameter (reverse over forward, what TVM trains through); also with
    /// iMF's guidance-interval input and in-context tokens.
    func testJVPAndGradientThroughJVPAgainstFiniteDifferences() throws {
        for (norm, imf) in [(true, false), (false, false), (true, true)] {
            var c = DiTConfig(patch: 2, hidden: 8, depth: 1, heads: 2, inputSize: 4, inChannels: 2, numClasses: 3)
            c.modulationNorm = norm
            (c.guidanceInterval, c.inContext) = (imf, imf)
            let net = try DiT(c)
            var rng = RandomGenerator(seed: 5)
            let p = randomized(net.initialParameters(rng: &rng), std: 0.5, dtype: .float64)
            let B = 2
            let x = Tensor.randomNormal([B, 2, 4, 4], rng: &rng, dtype: .float64)
            let t = Tensor([0.9, 0.6], shape: [B], dtype: .float64), s0 = Tensor([0.3, 0.2], shape: [B], dtype: .float64)
            let cond = Conditioning(classes: Tensor([1, 0, 0, 0, 0, 0], shape: [B, 3], dtype: .float64),
                                    beta: Tensor([0.5, 1], shape: [B], dtype: .float64),
                                    interval: imf ? (Tensor([0.2, 0.4], shape: [B], dtype: .float64), Tensor([0.7, 0.6], shape: [B], dtype: .float64)) : nil)
            let w = Tensor.randomNormal([B, 2, 4, 4], rng: &rng, dtype: .float64)
            func F(_ params: ParameterSet, _ s: Tensor) -> Tensor { net(params, x: x, t: t, gap: t - s, cond: cond) }
            // Forward mode along s against a central difference.
            let (_, tan) = jvp({ [F(p, $0[0])] }, primals: [s0], tangents: [Tensor.ones([B], dtype: .float64)])
            let h = 1e-5
            let fd = (F(p, s0 + h) - F(p, s0 - h)) / (2 * h)
            XCTAssertLessThan(relErr(tan[0].doubles, fd.doubles), 1e-7, "dF/ds, modulation norm \(norm), iMF inputs \(imf)")
            // Gradient of L(theta) = sum(w * dF/ds) along a random direction of all trainable parameters.
            func L(_ params: ParameterSet) -> Tensor {
                let (_, tg) = jvp({ [F(params, $0[0])] }, primals: [s0], tangents: [Tensor.ones([B], dtype: .float64)])
                return (tg[0] * w).sum()
            }
            let leaves = p.leaves()
            let grads = gradients(of: L(leaves), wrt: leaves.all)
            var dirRNG = RandomGenerator(seed: 6)
            let u = p.pairs.map { n, v in n == "pos_embed" ? v.zerosLike() : Tensor.randomNormal(v.shape, rng: &dirRNG, dtype: .float64) }
            let analytic = zip(grads, u).reduce(0.0) { $0 + ($1.0 * $1.1).sum().item }
            func shifted(_ e: Double) -> ParameterSet {
                ParameterSet(zip(p.pairs, u).map { pair, d in (pair.0, (pair.1 + d * e).detached()) })
            }
            // Central differences at h and h/2 combined (Richardson) to cancel the O(h^2) term: the random
            // weights make the unnormalised model strongly curved.
            func central(_ e: Double) -> Double { (L(shifted(e)).item - L(shifted(-e)).item) / (2 * e) }
            let numeric = (4 * central(h / 2) - central(h)) / 3
            XCTAssertEqual(analytic, numeric, accuracy: 1e-7 * max(1, abs(numeric)), "gradient through the JVP, norm \(norm), iMF inputs \(imf)")
        }
    }

    // MARK: Initialisation

    /// Largest singular value by power iteration on W^T W in float64 from the stored float32 values.
    func topSingularValue(_ t: Tensor) -> Double {
        let rows = t.shape[0], cols = t.count / rows, w = t.doubles
        var v = (0..<cols).map { Double(($0 * 7919) % 101) / 101 + 0.5 }
        var sigma = 0.0
        for _ in 0..<5000 {
            var u = [Double](repeating: 0, count: rows)
            for r in 0..<rows { for c in 0..<cols { u[r] += w[r * cols + c] * v[c] } }
            var next = [Double](repeating: 0, count: cols)
            for r in 0..<rows { for c in 0..<cols { next[c] += w[r * cols + c] * u[r] } }
            let n = next.reduce(0) { $0 + $1 * $1 }.squareRoot()
            let estimate = n.squareRoot()  // ||W^T W v|| -> sigma^2 for unit v
            v = next.map { $0 / n }
            if abs(estimate - sigma) < 1e-13 { break }
            sigma = estimate
        }
        return sigma
    }

    func testSpectralInitialisation() throws {
        for timeSpec in [false, true] {
            var c = DiTTests.small
            c.timeSpecInit = timeSpec
            let net = try DiT(c)
            var rng = RandomGenerator(seed: 11)
            let p = net.initialParameters(rng: &rng)
            var spectral = ["x_embedder.proj.weight"]
            for k in 0..<c.depth {
                spectral += ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"].map { "blocks.\(k).\($0).weight" }
            }
            let timeWeights = ["t_embedder", "s_embedder", "guidance_embedder"].flatMap { ["\($0).mlp.0.weight", "\($0).mlp.2.weight"] }
            if timeSpec { spectral += timeWeights }
            for name in spectral {
                XCTAssertEqual(topSingularValue(p[name]), 1, accuracy: 1e-3, name)
            }
            if !timeSpec {
                for name in timeWeights { assertStd(p[name], 0.02, name) }
            }
            assertStd(p["y_embedder.embedding_table.weight"], 0.02, "label table")
            for (name, t) in p.pairs {
                if name.hasSuffix(".bias") || name.contains("adaLN_modulation") || name.hasPrefix("final_layer.") {
                    XCTAssertTrue(t.floats.allSatisfy { $0 == 0 }, "\(name) starts at zero")
                }
                if name.hasSuffix("_norm.weight") { XCTAssertTrue(t.floats.allSatisfy { $0 == 1 }, name) }
            }
            let pe = DiT.positionEmbedding(hidden: 32, grid: 4)
            XCTAssertEqual(p["pos_embed"].doubles.enumerated().map { abs($1 - pe[$0]) }.max()!, 0, accuracy: 1e-7)
        }
    }

    func testXavierUniformInitialisation() throws {
        var c = DiTTests.small
        c.initialization = .xavierUniform
        c.timeSpecInit = true  // ignored without the spectral initialisation, as upstream
        let net = try DiT(c)
        var rng = RandomGenerator(seed: 12)
        let p = net.initialParameters(rng: &rng)
        for name in ["x_embedder.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"] {
            let t = p[name], out = t.shape[0], fanIn = t.count / out
            let a = (6.0 / Double(out + fanIn)).squareRoot()
            let v = t.doubles
            XCTAssertLessThanOrEqual(v.map(abs).max()!, a, name)
            assertStd(t, a / 3.0.squareRoot(), name, tolerance: 0.1)
        }
        assertStd(p["t_embedder.mlp.0.weight"], 0.02, "t_embedder")
        assertStd(p["guidance_embedder.mlp.2.weight"], 0.02, "guidance_embedder", tolerance: 0.2)
        XCTAssertTrue(p["final_layer.linear.weight"].floats.allSatisfy { $0 == 0 })
        XCTAssertTrue(p["blocks.0.adaLN_modulation.1.weight"].floats.allSatisfy { $0 == 0 })
    }

    func assertStd(_ t: Tensor, _ std: Double, _ name: String, tolerance: Double = 0.15,
                   file: StaticString = #filePath, line: UInt = #line) {
        let v = t.doubles
        let mean = v.reduce(0, +) / Double(v.count)
        let sd = (v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(v.count)).squareRoot()
        XCTAssertEqual(sd, std, accuracy: tolerance * std, "\(name): std \(sd)", file: file, line: line)
        XCTAssertEqual(mean, 0, accuracy: 4 * std / Double(v.count).squareRoot(), "\(name): mean \(mean)", file: file, line: line)
    }

    func testUnconditionalModelWithoutClasses() throws {
        let net = try DiT(DiTConfig(patch: 2, hidden: 16, depth: 1, heads: 2, inputSize: 4, inChannels: 1, numClasses: 0))
        var rng = RandomGenerator(seed: 9)
        let p = randomized(net.initialParameters(rng: &rng))
        XCTAssertEqual(p["y_embedder.embedding_table.weight"].shape, [1, 16])
        let F = net(p, x: Tensor.randomNormal([2, 1, 4, 4], rng: &rng), t: Tensor([0.5, 0.5], shape: [2]),
                    gap: Tensor([0.1, 0.1], shape: [2]), cond: Conditioning())
        XCTAssertTrue(F.floats.allSatisfy(\.isFinite))
    }
}
