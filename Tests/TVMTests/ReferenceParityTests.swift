import XCTest
import TensorCore
import NN
import TVM
import Formats

/// Parity with the official PyTorch implementation on `shared/fixtures/tvm_reference_small.safetensors`:
/// DiT output, flow map and its s-derivative, per-row TVM loss terms, the gradient of the mean loss for every
/// parameter (through the JVP) and the 1/2/4-step samples, each to a relative error of at most 1e-4.
final class ReferenceParityTests: XCTestCase {
    /// `<package>/../shared/fixtures/tvm_reference_small.safetensors` (or $TVM_REFERENCE_FIXTURE).
    static var fixturePath: String {
        if let p = ProcessInfo.processInfo.environment["TVM_REFERENCE_FIXTURE"] { return p }
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return package.deletingLastPathComponent().appendingPathComponent("shared/fixtures/tvm_reference_small.safetensors").path
    }

    func fixture() throws -> SafetensorsFile {
        let path = ReferenceParityTests.fixturePath
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("reference fixture not found at \(path)") }
        return try SafetensorsFile.read(path: path)
    }

    func testParityWithOfficialImplementation() throws {
        let file = try fixture()
        let results = try ReferenceCheck.run(file, source: "fixture")
        print("reference parity (relative error ||out - ref|| / ||ref||):")
        for r in results {
            print("  \(r.name.padding(toLength: 46, withPad: " ", startingAt: 0)) \(r.relErr)")
            XCTAssertLessThanOrEqual(r.relErr, ReferenceCheck.tolerance, r.name)
        }
        // Everything the file holds was compared: 6 outputs, one gradient per trainable parameter, 3 samplers.
        let names = Set(results.map(\.name))
        XCTAssertTrue(["outputs.F", "outputs.f_st", "outputs.df_ds", "outputs.loss", "outputs.terminal_loss",
                       "outputs.fm_loss", "outputs.sample_1step", "outputs.sample_2step", "outputs.sample_4step"]
            .allSatisfy(names.contains))
        let grads = file.tensors.filter { $0.name.hasPrefix("grads.") }.map(\.name)
        XCTAssertEqual(grads.count, 43)
        XCTAssertTrue(grads.allSatisfy(names.contains))
        XCTAssertEqual(results.count, 6 + grads.count + 3)
    }

    /// The fixture has no gradient for pos_embed (upstream does not train it); its stored value is the formula.
    func testPositionEmbeddingIsTheFixedSinCos() throws {
        let file = try fixture()
        XCTAssertNil(file["grads.pos_embed"])
        let config = try ReferenceCheck.Config.parse(file.metadata("config")!)
        let pe = DiT.positionEmbedding(hidden: config.hidden, grid: config.res / config.patch)
        for prefix in ["params.", "teacher."] {
            let stored = file[prefix + "pos_embed"]!
            XCTAssertEqual(stored.shape, [1, (config.res / config.patch) * (config.res / config.patch), config.hidden])
            let err = zip(stored.floats(), pe).map { abs(Double($0) - $1) }.max()!
            print("\(prefix)pos_embed max abs difference from the formula: \(err)")
            XCTAssertLessThan(err, 1e-6)
        }
    }

    /// The same figures computed through the public API directly (not through ReferenceCheck), for the
    /// loss terms and one gradient, so the shared helper cannot hide a mistake in both.
    func testDirectComputationMatches() throws {
        let file = try fixture()
        let config = try ReferenceCheck.Config.parse(file.metadata("config")!)
        let net = try DiT(config.dit)
        let student = try net.parameters(from: file, prefix: "params.", allowExtra: true).leaves()
        let teacher = try net.parameters(from: file, prefix: "teacher.", allowExtra: true)
        func t(_ n: String) -> Tensor { Tensor(file[n]!.floats(), shape: file[n]!.shape) }
        let objective = TVMObjective(guidance: GuidanceConfig(scale: .constant(config.sampleCFG), labelDropout: 0,
                                                              scaledParameterization: config.scaleParam))
        let terms = objective.terms(network: net, student: student, teacher: teacher,
                                    .init(x0: t("inputs.images"), noise: t("inputs.noise"), t: t("inputs.t"), s: t("inputs.s"),
                                          sPrime: t("inputs.s_prime"),
                                          cond: Conditioning(classes: t("inputs.class_labels"), beta: t("inputs.beta_scale"))))
        XCTAssertEqual(terms.terminal.floats[1], 0, "row 1 has s == t")
        XCTAssertEqual(terms.nanRows, 0)
        XCTAssertLessThan(ReferenceCheck.relativeError(terms.loss, t("outputs.loss")), 1e-4)
        let g = gradients(of: terms.mean, wrt: [student["blocks.1.attn.qkv.weight"]])[0]
        XCTAssertLessThan(ReferenceCheck.relativeError(g, t("grads.blocks.1.attn.qkv.weight")), 1e-4)
        let B = 6
        let x = sampleFlowMap(network: net, params: student, noise: t("inputs.latents"), steps: 2,
                              cond: Conditioning(classes: t("inputs.sample_class_labels"),
                                                 beta: Tensor.full(1 / config.sampleCFG, shape: [B])),
                              kappa: config.scaleParam ? config.sampleCFG : 1)
        XCTAssertLessThan(ReferenceCheck.relativeError(x, t("outputs.sample_2step")), 1e-4)
    }

    func testConfigParsing() throws {
        let c = try ReferenceCheck.Config.parse(#"{"patch": 4, "hidden": 48, "depth": 3, "heads": 3, "res": 8, "channels": 3, "classes": 0, "scale_param": false, "batch": 5, "sample_cfg": 1.5, "mlp_ratio": 2.0, "name": "extra keys are ignored"}"#)
        XCTAssertEqual(c.dit, DiTConfig(patch: 4, hidden: 48, depth: 3, heads: 3, mlpRatio: 2, inputSize: 8, inChannels: 3,
                                        numClasses: 0))
        XCTAssertEqual(c.dit.mlpHidden, 96)
        XCTAssertFalse(c.scaleParam)
        XCTAssertEqual(c.sampleCFG, 1.5)
        XCTAssertEqual(try ReferenceCheck.Config.parse(#"{"patch": 2, "hidden": 64, "depth": 2, "heads": 4, "res": 8, "channels": 4, "classes": 10, "scale_param": true, "batch": 6, "sample_cfg": 2.0}"#).mlpRatio, 4)
        for (text, fragment) in [("[1]", "not a JSON object"), (#"{"patch": 2}"#, "no \"hidden\""),
                                 (#"{"patch": 2.5, "hidden": 64}"#, "\"patch\" must be a whole number"),
                                 (#"{"patch": 2, "hidden": 64, "depth": 2, "heads": 4, "res": 8, "channels": 4, "classes": 10, "scale_param": "yes", "batch": 6, "sample_cfg": 2.0}"#, "true or false"),
                                 (#"{"patch": 2, "hidden": 64, "depth": 2, "heads": 4, "res": 8, "channels": 4, "classes": 10, "scale_param": true, "batch": 6, "sample_cfg": -1}"#, "positive number")] {
            XCTAssertThrowsError(try ReferenceCheck.Config.parse(text)) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(e) lacks \(fragment)")
            }
        }
    }

    // MARK: The checker catches mistakes and malformed files

    func replacing(_ file: SafetensorsFile, _ name: String, with new: NamedArray?) -> SafetensorsFile {
        var f = file
        f.tensors = file.tensors.compactMap { $0.name == name ? new : $0 }
        return f
    }

    func withConfig(_ file: SafetensorsFile, _ edit: (inout [(String, JSONValue)]) -> Void) throws -> SafetensorsFile {
        var f = file
        var members = try JSONValue.parse(file.metadata("config")!).object!
        edit(&members)
        f.metadata = f.metadata.map { $0.0 == "config" ? ($0.0, JSONValue.object(members).serialized()) : $0 }
        return f
    }

    func assertFailure(_ file: SafetensorsFile, contains fragment: String, line: UInt = #line) {
        do {
            _ = try ReferenceCheck.run(file, source: "bad")
            XCTFail("expected a failure containing \(fragment)", line: line)
        } catch let e as ReferenceCheck.Failure {
            XCTAssertTrue(e.message.contains(fragment), "\"\(e.message)\" lacks \"\(fragment)\"", line: line)
            XCTAssertFalse(e.message.contains("\n"), line: line)
        } catch {
            XCTFail("unexpected error \(error)", line: line)
        }
    }

    func testDetectsWrongReferenceValues() throws {
        let file = try fixture()
        // A reference output off by 1e-3 is reported for that tensor alone.
        let F = file["outputs.F"]!
        let bad = replacing(file, "outputs.F", with: NamedArray(name: "outputs.F", shape: F.shape,
                                                                   floats: F.floats().map { $0 * 1.001 }))
        let results = try ReferenceCheck.run(bad)
        XCTAssertEqual(results.filter { !$0.passed }.map(\.name), ["outputs.F"])
        XCTAssertEqual(results.first { $0.name == "outputs.F" }!.relErr, 1e-3 / 1.001, accuracy: 1e-5)
        // Turning the scaled parameterisation off changes the flow map, loss, gradients and samples.
        let unscaled = try withConfig(file) { m in m = m.map { $0.0 == "scale_param" ? ($0.0, .bool(false)) : $0 } }
        let failed = Set(try ReferenceCheck.run(unscaled).filter { !$0.passed }.map(\.name))
        XCTAssertTrue(failed.isSuperset(of: ["outputs.f_st", "outputs.df_ds", "outputs.loss", "outputs.sample_1step"]))
        XCTAssertFalse(failed.contains("outputs.F"), "the raw network output does not depend on kappa")
    }

    func testRefusesMalformedFiles() throws {
        let file = try fixture()
        assertFailure(replacing(file, "grads.blocks.1.mlp.fc2.bias", with: nil), contains: "missing tensor \"grads.blocks.1.mlp.fc2.bias\"")
        assertFailure(replacing(file, "teacher.final_layer.linear.weight", with: nil), contains: "teacher.final_layer.linear.weight")
        assertFailure(replacing(file, "inputs.t", with: NamedArray(name: "inputs.t", shape: [5], floats: [0.5, 0.5, 0.5, 0.5, 0.5])),
                      contains: "tensor \"inputs.t\" has shape [5], expected [6]")
        assertFailure(try withConfig(file) { m in m = m.map { $0.0 == "hidden" ? ($0.0, .number(32)) : $0 } },
                      contains: "has shape [1, 16, 64] but the model expects [1, 16, 32]")
        assertFailure(try withConfig(file) { m in m = m.map { $0.0 == "batch" ? ($0.0, .number(5)) : $0 } },
                      contains: "expected [5, 4, 8, 8]")
        assertFailure(try withConfig(file) { m in m = m.map { $0.0 == "heads" ? ($0.0, .number(3)) : $0 } },
                      contains: "not divisible by 3 heads")
        assertFailure(try withConfig(file) { m in m.removeAll { $0.0 == "sample_cfg" } }, contains: "no \"sample_cfg\"")
        assertFailure(try withConfig(file) { m in m = m.map { $0.0 == "res" ? ($0.0, .string("8")) : $0 } },
                      contains: "\"res\" must be a whole number")
        var noConfig = file
        noConfig.metadata = []
        assertFailure(noConfig, contains: "no \"config\" entry")
        var badJSON = file
        badJSON.metadata = [("config", "{\"patch\": 2,")]
        assertFailure(badJSON, contains: "not valid JSON")
        // Values: NaN, a label row with two classes, s after t, non-positive beta, unknown tensors.
        let noise = file["inputs.noise"]!
        var v = noise.floats(); v[3] = .nan
        assertFailure(replacing(file, "inputs.noise", with: NamedArray(name: "inputs.noise", shape: noise.shape, floats: v)),
                      contains: "NaN")
        var labels = file["inputs.class_labels"]!.floats(); labels[0] = 1; labels[1] = 1
        assertFailure(replacing(file, "inputs.class_labels", with: NamedArray(name: "inputs.class_labels", shape: [6, 10], floats: labels)),
                      contains: "not one-hot")
        assertFailure(replacing(file, "inputs.s", with: NamedArray(name: "inputs.s", shape: [6], floats: [0.95, 0.7, 0.1, 0, 0.25, 0.35])),
                      contains: "is after t")
        assertFailure(replacing(file, "inputs.beta_scale", with: NamedArray(name: "inputs.beta_scale", shape: [6], floats: [0.5, 0, 1, 0.4, 1, 0.6])),
                      contains: "must be positive")
        var extra = file
        extra.tensors.append(NamedArray(name: "outputs.mystery", shape: [1], floats: [0]))
        assertFailure(extra, contains: "unexpected tensor \"outputs.mystery\"")
        extra = file
        extra.tensors.append(NamedArray(name: "outputs.sample_xstep", shape: [1], floats: [0]))
        assertFailure(extra, contains: "outputs.sample_<steps>step")
    }
}
