import XCTest
import TensorCore
import NN
@testable import TVM
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// The official code's own files, read without running them: a network pickle sampled to the official sampler's
/// outputs, a `torch.save` training state mapped to this project's trainer, and pickles that would run code.
final class OfficialCheckpointTests: XCTestCase {
    /// `<package>/../shared/fixtures/official/<name>` (from a worktree, `/work/shared/fixtures/official/<name>`).
    static func fixture(_ name: String) throws -> String {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let candidates = [package.deletingLastPathComponent().appendingPathComponent("shared/fixtures/official/\(name)").path,
                          "/work/shared/fixtures/official/\(name)"]
        guard let path = candidates.first(where: FileManager.default.fileExists) else {
            throw XCTSkip("official fixture not found at \(candidates[0])")
        }
        return path
    }

    func temporaryDirectory() throws -> String {
        var template = Array("/tmp/official-tests-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { throw ModelError("mkdtemp failed") }
        let dir = String(cString: p)
        addTeardownBlock { _ = try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Part 3 of issue 18: this project's sampler on the pickled network reproduces the official sampler.
    func testSamplesMatchTheOfficialSampler() throws {
        let path = try Self.fixture("official_snapshot_small.pkl")
        let results = try OfficialSampleCheck.run(picklePath: path)
        XCTAssertEqual(results.map(\.name), ["sample_1step", "sample_2step", "sample_4step"])
        for r in results {
            print("official pickle parity \(r.name): relative error \(r.relErr)")
            XCTAssertLessThanOrEqual(r.relErr, ReferenceCheck.tolerance, r.name)
        }
    }

    func testConfigurationComesFromTheConstructorArguments() throws {
        let network = try OfficialNetwork.load(path: try Self.fixture("official_snapshot_small.pkl"))
        XCTAssertEqual(network.config, DiTConfig(patch: 2, hidden: 64, depth: 2, heads: 4, mlpRatio: 4, inputSize: 8, inChannels: 4,
                                                 numClasses: 10, modulationNorm: true, init: .spectral, timeSpecInit: true))
        XCTAssertTrue(network.scaledParameterization)
        XCTAssertEqual(network.key, "ema")
        XCTAssertEqual(network.summary, "DiT (patch 2, hidden 64, depth 2, 4 heads, 8x8x4, 10 classes)")
        // net.parameters() order: the DiT's own pos_embed, then its modules as registered (s_embedder first).
        XCTAssertEqual(network.parameterOrder.prefix(3), ["pos_embed", "s_embedder.mlp.0.weight", "s_embedder.mlp.0.bias"])
        XCTAssertEqual(Set(network.parameterOrder), Set(network.parameters.names))
    }

    /// The released networks record no latent statistics; those of the paper's two settings come from the official
    /// configs, so that `tvm sample --vae` decodes them; other shapes get none.
    func testThePapersSettingsGetTheOfficialLatentStatistics() throws {
        func recorded(_ res: Int, _ channels: Int) throws -> JSONValue {
            let model = try DiTConfig.named("S/2", res: res, channels: channels, classes: 1000)
            return TrainingCheckpoint.officialDescription(source: "x.pkl", network: "ema", scaled: true, model: model)
        }
        let im256 = try recorded(32, 4), im512 = try recorded(64, 4)
        XCTAssertEqual(im256["latent_mean"]?.array?.compactMap(\.double), LatentNormalization.imageNet256Statistics.mean)
        XCTAssertEqual(im256["latent_std"]?.array?.compactMap(\.double), LatentNormalization.imageNet256Statistics.std)
        XCTAssertEqual(im512["latent_mean"]?.array?.compactMap(\.double), [1.56, -0.695, 0.483, 0.729])
        XCTAssertEqual(im512["latent_std"]?.array?.compactMap(\.double), [5.27, 5.91, 4.21, 4.31])
        XCTAssertEqual(im512["latent_final_mean"]?.double, 0)
        XCTAssertEqual(im512["latent_final_std"]?.double, 1)
        XCTAssertNil(try recorded(32, 3)["latent_mean"])
        XCTAssertNil(try recorded(16, 4)["latent_mean"])
    }

    func testMissingNetworkNamesWhatTheFileHolds() throws {
        let path = try Self.fixture("official_snapshot_small.pkl")
        XCTAssertThrowsError(try OfficialNetwork.load(path: path, key: "net")) { error in
            XCTAssertEqual("\(error)", "\(path): no network \"net\"; the file holds \"ema\", \"dataset_kwargs\"")
        }
    }

    /// The snapshot rewritten as a training loop under `torch.compile` would save it: under "net", inside an
    /// `OptimizedModule` whose only child is `_orig_mod`. The pickle's own memo numbering is kept (the wrapper's
    /// opcodes memoize nothing), so the network's bytes are used unchanged.
    func compiledUnderNet(_ original: [UInt8]) throws -> [UInt8] {
        let key: [UInt8] = [0x8C, 0x03] + Array("ema".utf8) + [0x94]
        guard Array(original[14..<20]) == key else { throw XCTSkip("the snapshot does not start as expected") }
        let rest = Array("dataset_kwargs".utf8)
        guard let end = (0..<(original.count - 16)).reversed().first(where: {
            original[$0] == 0x8C && original[$0 + 1] == 14 && Array(original[($0 + 2)..<($0 + 16)]) == rest
        }) else { throw XCTSkip("no dataset_kwargs key in the snapshot") }
        var b = PickleWriter()
        b.bytes += [0x80, 4, 0x7D, 0x94, 0x28, 0x8C, 0x03] + Array("net".utf8) + [0x94]
        b.bytes += [0x63] + Array("torch._dynamo.eval_frame\nOptimizedModule\n".utf8) + [0x29, 0x81]  // GLOBAL, (), NEWOBJ
        b.bytes += [0x7D, 0x28]
        for name in ["_parameters", "_buffers"] { b.string(name); b.bytes.append(0x7D) }
        b.string("_modules")
        b.bytes += [0x7D, 0x28]
        b.string("_orig_mod")
        b.bytes += Array(original[20..<end]) + [0x75, 0x75, 0x62]  // SETITEMS, SETITEMS, BUILD
        return b.bytes + Array(original[end...])
    }

    func testCompiledNetworkUnderAnotherKeyMatchesToo() throws {
        let path = try Self.fixture("official_snapshot_small.pkl")
        let dir = try temporaryDirectory()
        let compiled = dir + "/compiled.pkl"
        try AtomicFile.write(path: compiled, bytes: try compiledUnderNet(try AtomicFile.read(path: path)))
        var samples = try SafetensorsFile.read(path: OfficialSampleCheck.samplesPath(for: path))
        samples.metadata = samples.metadata.map { $0.0 == "weights_key" ? ($0.0, "net") : $0 }
        try samples.write(path: dir + "/compiled_samples.safetensors")
        let results = try OfficialSampleCheck.run(picklePath: compiled)
        XCTAssertEqual(results.count, 3)
        for r in results { XCTAssertLessThanOrEqual(r.relErr, ReferenceCheck.tolerance, r.name) }
        let network = try OfficialNetwork.load(path: compiled, key: "net")
        let original = try OfficialNetwork.load(path: path)
        XCTAssertEqual(network.parameters.names, original.parameters.names)
        XCTAssertEqual(network.parameters["blocks.1.mlp.fc2.weight"].floats, original.parameters["blocks.1.mlp.fc2.weight"].floats)
    }

    /// Another architecture (patch 1, hidden 8, MLP ratio 2) in float16, bfloat16 and float32 storages, as a pickle
    /// and as a torch.save archive: the fuzz seeds `scripts/pickle_fuzz_seeds.py` writes.
    func testTinyMixedPrecisionNetworkInBothFormats() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/pickle").path
        let pickled = try OfficialNetwork.load(path: corpus + "/tiny-official-snapshot.pkl")
        let archived = try OfficialNetwork.load(path: corpus + "/tiny-training-state.pt")
        XCTAssertEqual(pickled.config, DiTConfig(patch: 1, hidden: 8, depth: 1, heads: 2, mlpRatio: 2, inputSize: 2, inChannels: 1,
                                                 numClasses: 2, modulationNorm: true, init: .spectral, timeSpecInit: false))
        XCTAssertEqual(archived.config, pickled.config)
        XCTAssertTrue(pickled.scaledParameterization)
        for name in pickled.parameters.names {
            XCTAssertEqual(pickled.parameters[name].floats, archived.parameters[name].floats, name)
            // Every stored value is a multiple of 1/64 in [-6/64, 6/64], exact in all three dtypes.
            XCTAssertTrue(pickled.parameters[name].floats.allSatisfy { ($0 * 64).rounded() == $0 * 64 && abs($0) <= 6 / 64 }, name)
        }
        // A subclass the reader does not know, whose sizes are not among its recorded arguments: read off the tensors.
        let custom = try OfficialNetwork.load(path: corpus + "/tiny-unknown-subclass.pkl", key: "net")
        XCTAssertEqual(custom.config, pickled.config)
        XCTAssertEqual(custom.summary, "DiT_custom (patch 1, hidden 8, depth 1, 2 heads, 2x2x1, 2 classes; patch_size 1 from the tensors, "
                       + "hidden_size 8 from the tensors, depth 1 from the tensors, num_heads 2 from the tensors, num_classes 2 from the "
                       + "tensors, in_channels 1 from the tensors, mlp_ratio 2.0 from the tensors)")
        let x = sampleFlowMap(network: try DiT(pickled.config), params: pickled.parameters, noise: Tensor.ones([2, 1, 2, 2]), steps: 2,
                              cond: Conditioning(classes: Tensor([1, 0, 0, 1], shape: [2, 2]), beta: Tensor.full(0.5, shape: [2])),
                              kappa: 2)
        XCTAssertTrue(x.floats.allSatisfy(\.isFinite))
    }

    func testSamplesFileProblemsAreOneLine() throws {
        let path = try Self.fixture("official_snapshot_small.pkl")
        let dir = try temporaryDirectory()
        let copy = dir + "/snap.pkl"
        try AtomicFile.write(path: copy, bytes: try AtomicFile.read(path: path))
        func expectFailure(_ edit: (inout SafetensorsFile) -> Void, _ fragment: String, line: UInt = #line) throws {
            var samples = try SafetensorsFile.read(path: OfficialSampleCheck.samplesPath(for: path))
            edit(&samples)
            try samples.write(path: dir + "/snap_samples.safetensors")
            XCTAssertThrowsError(try OfficialSampleCheck.run(picklePath: copy), line: line) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(error)", line: line)
                XCTAssertFalse("\(error)".contains("\n"), line: line)
            }
        }
        XCTAssertThrowsError(try OfficialSampleCheck.run(picklePath: copy)) { XCTAssertTrue("\($0)".contains("snap_samples.safetensors")) }
        try expectFailure({ $0.metadata = $0.metadata.filter { $0.0 != "cfg_scale" } }, "metadata \"cfg_scale\" must be a positive number")
        try expectFailure({ $0.metadata = $0.metadata.map { $0.0 == "config" ? ($0.0, "{\"hidden\": 96}") : $0 } },
                          "metadata config says hidden 96, the pickle's network has 64")
        try expectFailure({ $0.metadata = $0.metadata.map { $0.0 == "steps" ? ($0.0, "1,8") : $0 } }, "tensor \"sample_8step\"")
        try expectFailure({ $0.tensors = $0.tensors.map { $0.name == "labels" ? NamedArray(name: "labels", shape: [4], floats: [0, 1, 2, 10], dtype: .i64) : $0 } },
                          "label 10.0 of row 3 is not a class index below 10")
        try expectFailure({ $0.metadata = $0.metadata.map { $0.0 == "weights_key" ? ($0.0, "ema_target") : $0 } }, "no network \"ema_target\"")
    }

    // MARK: Training state

    func testTrainingStateMapsEveryTensorAndTheAdamWState() throws {
        let state = try OfficialTrainingState.read(path: try Self.fixture("official_training_state_small.pt"))
        XCTAssertEqual(state.config, try OfficialNetwork.load(path: try Self.fixture("official_snapshot_small.pkl")).config)
        let shapes = try DiT(state.config).parameterShapes
        for set in [state.student.parameters, state.ema.parameters, state.teacher.parameters, state.adamM, state.adamV] {
            XCTAssertEqual(set.names, shapes.map(\.name))
            for (name, shape) in shapes { XCTAssertEqual(set[name].shape, shape, name) }
        }
        XCTAssertEqual(state.optimizerStep, 1)
        XCTAssertEqual([state.learningRate, state.beta1, state.beta2, state.eps, state.weightDecay], [1e-4, 0.9, 0.95, 1e-8, 0])
        // The fixture's ema and ema_target are one other network (stored twice), the student a step away from it.
        let qkv = "blocks.0.attn.qkv.weight"
        XCTAssertFalse(state.student.parameters[qkv].floats == state.ema.parameters[qkv].floats)
        XCTAssertTrue(state.ema.parameters[qkv].floats == state.teacher.parameters[qkv].floats)
        // pos_embed has no gradient, so AdamW kept no state for it.
        XCTAssertTrue(state.adamM["pos_embed"].floats.allSatisfy { $0 == 0 })
        // After AdamW's first step m = (1 - b1) g and v = (1 - b2) g^2, so m^2 = v (1 - b1)^2 / (1 - b2) = 0.2 v for every
        // element: each moment landed on its own parameter, m and v not swapped.
        var checked = 0
        for name in state.adamM.names where name != "pos_embed" {
            let m = state.adamM[name].floats, v = state.adamV[name].floats
            XCTAssertTrue(m.contains { $0 != 0 }, name)
            for (a, b) in zip(m, v) where b > 0 {
                XCTAssertEqual(Double(a) * Double(a), 0.2 * Double(b), accuracy: 1e-5 * Double(b), name)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 200_000)
    }

    func testTrainingContinuesFromTheOfficialState() throws {
        let state = try OfficialTrainingState.read(path: try Self.fixture("official_training_state_small.pt"), on: .cpu)
        var config = TrainConfig()
        config.batch = 4
        config.lr = state.learningRate
        config.guidance = GuidanceConfig(scale: .constant(2), labelDropout: 0.1, scaledParameterization: true)
        let trainer = Trainer(network: try DiT(state.config), config: config, on: .cpu)
        try state.restore(into: trainer)
        XCTAssertEqual(trainer.step, 1)
        XCTAssertEqual(trainer.optimizer.step, 1)
        XCTAssertEqual(trainer.student["final_layer.linear.weight"].floats, state.student.parameters["final_layer.linear.weight"].floats)
        XCTAssertEqual(trainer.teacher["t_embedder.mlp.2.bias"].floats, state.teacher.parameters["t_embedder.mlp.2.bias"].floats)
        XCTAssertEqual(trainer.optimizer.v["blocks.1.attn.proj.weight"].floats, state.adamV["blocks.1.attn.proj.weight"].floats)
        var rng = RandomGenerator(seed: 3)
        let x0 = Tensor(rng.normalFloats(4 * 4 * 8 * 8), shape: [4, 4, 8, 8], on: .cpu)
        let cond = config.guidance.conditioning(labels: [0, 3, 5, 9], classes: 10, rng: &rng, on: .cpu)
        let stats = trainer.train(x0: x0, cond: cond)
        XCTAssertTrue(stats.loss.isFinite)
        XCTAssertFalse(stats.skipped)
        XCTAssertEqual(trainer.optimizer.step, 2)

        config.guidance.scaledParameterization = false
        XCTAssertThrowsError(try state.restore(into: Trainer(network: try DiT(state.config), config: config, on: .cpu))) {
            XCTAssertTrue("\($0)".contains("do_scale_param on"), "\($0)")
        }
    }

    // MARK: Files that would run code

    /// `{'ema': os.system('touch MARKER')}` (protocol 4) and `builtins.eval("__import__('os').system('touch MARKER')")`
    /// (protocol 2), as Python pickles them: refused by the name of the global, and nothing runs.
    func testPicklesThatWouldRunCodeAreRefusedByName() throws {
        let marker = "/tmp/terminalvelocity-pickle-test-ran"
        unlink(marker)
        let dir = try temporaryDirectory()
        let system = "8004954f000000000000007d948c03656d61948c05706f736978948c0673797374656d9493948c2b746f756368202f746d702f7465"
            + "726d696e616c76656c6f636974792d7069636b6c652d746573742d72616e9485945294732e"
        let eval = "8002635f5f6275696c74696e5f5f0a6576616c0a710058460000005f5f696d706f72745f5f28276f7327292e73797374656d2827746f75"
            + "6368202f746d702f7465726d696e616c76656c6f636974792d7069636b6c652d746573742d72616e272971018571025271032e"
        let cases = [(system, "\(dir)/system.pkl: ema: a call of \"posix.system\" is not a PyTorch module"),
                     (eval, "\(dir)/eval.pkl: holds a call of \"__builtin__.eval\", not a dict of networks")]
        for (hex, message) in cases {
            let path = dir + (hex == system ? "/system.pkl" : "/eval.pkl")
            try AtomicFile.write(path: path, bytes: hexBytes(hex))
            XCTAssertThrowsError(try OfficialNetwork.load(path: path)) { XCTAssertTrue("\($0)".hasPrefix(message), "\($0)") }
            XCTAssertThrowsError(try OfficialTrainingState.read(path: path))
        }
        XCTAssertEqual(access(marker, F_OK), -1, "nothing ran: the marker file was not created")
    }
}

/// Pickle bytes for the test above (a subset of FormatsTests' builder).
struct PickleWriter {
    var bytes: [UInt8] = []
    mutating func string(_ s: String) {
        let n = s.utf8.count
        bytes += [0x58] + (0..<4).map { UInt8(truncatingIfNeeded: n >> (8 * $0)) } + Array(s.utf8)
    }
}

func hexBytes(_ hex: String) -> [UInt8] {
    let digits = hex.utf8.map { $0 <= 0x39 ? $0 - 0x30 : $0 - 0x61 + 10 }
    return stride(from: 0, to: digits.count - 1, by: 2).map { digits[$0] << 4 | digits[$0 + 1] }
}
