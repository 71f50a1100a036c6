import XCTest
import TensorCore
import NN

/// The parameters as the models declare them (`ParameterSpec`, `LinearLayer`): the DiT's keys in the official
/// state-dict order, and an initialisation equal, bit for bit and draw for draw, to the official rules written
/// out by name.
final class ParameterSpecTests: XCTestCase {
    /// Upstream's `initialize_weights` for the TVM DiT, stated by name as upstream states it, in state-dict order.
    func officialInitialisation(_ c: DiTConfig, _ shapes: [(name: String, shape: [Int])], rng: inout RandomGenerator) -> ParameterSet {
        let p = ParameterSet()
        for (name, shape) in shapes {
            let count = Shape.count(shape), out = shape[0]
            let values: [Double]
            if name == "pos_embed" {
                values = DiT.positionEmbedding(hidden: c.hidden, grid: c.grid)
            } else if name.hasSuffix(".bias") || name.hasPrefix("final_layer.") || name.contains("adaLN_modulation") {
                values = [Double](repeating: 0, count: count)
            } else if name.hasSuffix("_norm.weight") {
                values = [Double](repeating: 1, count: count)
            } else if name == "y_embedder.embedding_table.weight" {
                values = Init.normal(count, std: 0.02, rng: &rng)
            } else if ["t_embedder.", "s_embedder.", "guidance_embedder."].contains(where: name.hasPrefix) {
                values = c.timeSpecInit && c.initialization == .spectral ? Init.spectral(out: out, in: count / out, rng: &rng)
                                                                        : Init.normal(count, std: 0.02, rng: &rng)
            } else if c.initialization == .spectral {
                values = Init.spectral(out: out, in: count / out, rng: &rng)
            } else {
                values = Init.xavierUniform(out: out, in: count / out, rng: &rng)
            }
            p[name] = Tensor(values, shape: shape, dtype: .float32, on: .cpu)
        }
        return p
    }

    func assertBitIdentical(_ a: ParameterSet, _ b: ParameterSet, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.names, b.names, what, file: file, line: line)
        for name in a.names where b.contains(name) {
            XCTAssertEqual(a[name].shape, b[name].shape, "\(what) \(name)", file: file, line: line)
            XCTAssertEqual(a[name].floats.map(\.bitPattern), b[name].floats.map(\.bitPattern), "\(what) \(name)", file: file, line: line)
        }
    }

    func testDiTKeysAreTheOfficialStateDictInOrder() throws {
        let net = try DiT(DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3))
        let embedders = ["t_embedder", "s_embedder", "guidance_embedder"].flatMap { e in
            ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"].map { "\(e).\($0)" }
        }
        let block = ["attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
                     "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                     "adaLN_modulation.1.weight", "adaLN_modulation.1.bias"].map { "blocks.0.\($0)" }
        let keys = ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias"] + embedders
            + ["y_embedder.embedding_table.weight"] + block
            + ["final_layer.linear.weight", "final_layer.linear.bias", "final_layer.adaLN_modulation.1.weight",
               "final_layer.adaLN_modulation.1.bias"]
        XCTAssertEqual(net.parameterSpecs.map(\.key), keys)
        XCTAssertEqual(net.parameterSpecs.filter { !$0.trainable }.map(\.key), ["pos_embed"])
        XCTAssertEqual(net.parameterSpecs.first { $0.key == "x_embedder.proj.weight" }?.shape, [32, 1, 2, 2])
    }

    func testDiTInitialisationIsTheOfficialOneBitForBit() throws {
        let configs = [
            DiTConfig(patch: 2, hidden: 32, depth: 2, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3),
            DiTConfig(patch: 2, hidden: 32, depth: 2, heads: 2, inputSize: 8, inChannels: 3, numClasses: 0, init: .xavierUniform),
            DiTConfig(patch: 4, hidden: 48, depth: 3, heads: 3, mlpRatio: 2.5, inputSize: 16, inChannels: 4, numClasses: 5,
                      modulationNorm: false, timeSpecInit: true),
            DiTConfig(patch: 1, hidden: 16, depth: 1, heads: 4, inputSize: 4, inChannels: 2, numClasses: 2, init: .xavierUniform,
                      timeSpecInit: true),
        ]
        for (i, c) in configs.enumerated() {
            let net = try DiT(c)
            var declared = RandomGenerator(seed: 17 + UInt64(i)), official = declared
            let p = net.initialParameters(rng: &declared, on: .cpu)
            assertBitIdentical(p, officialInitialisation(c, net.parameterShapes, rng: &official), "config \(i)")
            XCTAssertEqual(declared.offset, official.offset, "config \(i): the same number of random draws")
        }
    }

    func testMLPInitialisationIsPyTorchsLinearDefault() {
        let net = MLPFlowMap(dataDim: 3, width: 20, depth: 2, embeddingDim: 8)
        var declared = RandomGenerator(seed: 4), official = declared
        let p = net.initialParameters(rng: &declared, on: .cpu)
        let expected = ParameterSet()
        for (i, (fanIn, out)) in [(3 + 16, 20), (20, 20), (20, 3)].enumerated() {
            let bound = 1 / Double(fanIn).squareRoot()
            expected["layers.\(i).weight"] = Tensor(Init.uniform(out * fanIn, bound: bound, rng: &official), shape: [out, fanIn],
                                                    dtype: .float32, on: .cpu)
            expected["layers.\(i).bias"] = Tensor(Init.uniform(out, bound: bound, rng: &official), shape: [out], dtype: .float32,
                                                  on: .cpu)
        }
        assertBitIdentical(p, expected, "MLP")
    }

    /// The initialiser is the one declared; the key plays no part in choosing it.
    func testTheDeclaredInitialiserDecidesNotTheName() {
        var rng = RandomGenerator(seed: 1)
        let p = ParameterSet(initializing: [ParameterSpec("head.bias", [3], .ones),
                                            ParameterSpec("final_layer.adaLN_modulation.1.weight", [4, 2], .normal(std: 1)),
                                            ParameterSpec("q_norm.weight", [2, 2], .uniform(bound: 0.5)),
                                            ParameterSpec("grid", [1, 4, 8], .sinCosPositions(grid: 2))],
                             rng: &rng, on: .cpu)
        XCTAssertEqual(p["head.bias"].floats, [1, 1, 1])
        XCTAssertTrue(p["final_layer.adaLN_modulation.1.weight"].floats.contains { $0 != 0 })
        XCTAssertTrue(p["q_norm.weight"].floats.allSatisfy { abs($0) <= 0.5 && $0 != 1 })
        XCTAssertEqual(p["grid"].doubles, DiT.positionEmbedding(hidden: 8, grid: 2).map { Double(Float($0)) })
        XCTAssertNil(ParameterSpec("w", [2, 2], .spectral).fixedTensor(on: .cpu), "a random initialiser has no fixed values")
    }
}
