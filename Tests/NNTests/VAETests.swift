import XCTest
import TensorCore
import NN
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// Parity of AutoencoderKL with diffusers on `fixtures/latent/vae_small` (float32, CPU), both attention key
/// schemes, the reference check of a fixture folder, and every way a config and its weights can disagree.
final class VAETests: XCTestCase {
    /// `$TVM_FIXTURES/latent/vae_small`, else `<package>/../shared/fixtures/latent/vae_small` (the main
    /// checkout's neighbour), else `/work/shared/fixtures/latent/vae_small` (where a worktree elsewhere finds it).
    static var fixtureDirectory: String? {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let roots: [String?] = [ProcessInfo.processInfo.environment["TVM_FIXTURES"],
                     package.deletingLastPathComponent().appendingPathComponent("shared/fixtures").path,
                     "/work/shared/fixtures"]
        return roots.compactMap { $0.map { $0 + "/latent/vae_small" } }
            .first { FileManager.default.fileExists(atPath: $0 + "/" + VAEReferenceCheck.referenceFileName) }
    }

    func fixture() throws -> String {
        guard let dir = Self.fixtureDirectory else { throw XCTSkip("fixture folder latent/vae_small not found (set TVM_FIXTURES)") }
        return dir
    }

    func fixtureFiles() throws -> (config: VAEConfig, weights: SafetensorsFile, reference: SafetensorsFile) {
        let dir = try fixture()
        return (try VAEConfig.read(path: dir + "/" + AutoencoderKL.configFileName),
                try SafetensorsFile.read(path: dir + "/" + AutoencoderKL.weightsFileName),
                try SafetensorsFile.read(path: dir + "/" + VAEReferenceCheck.referenceFileName))
    }

    func testConfigOfTheFixture() throws {
        let (config, _, _) = try fixtureFiles()
        XCTAssertEqual(config, VAEConfig(blockOutChannels: [32, 32, 64, 64], layersPerBlock: 2, normGroups: 8))
        XCTAssertEqual(config.downsamplingFactor, 8)
    }

    /// Every output within 1e-4 relative of diffusers' (measured: about 1e-6; printed).
    func testParityWithDiffusers() throws {
        let results = try VAEReferenceCheck.run(directory: try fixture(), on: .cpu)
        XCTAssertEqual(results.map(\.name), ["posterior_mean", "posterior_std", "posterior_logvar", "roundtrip", "decoded"])
        print("VAE parity with diffusers (||out - ref|| / ||ref||):")
        for r in results {
            print("  \(r.name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(r.relativeError)")
            XCTAssertTrue(r.passed, "\(r.name): \(r.relativeError)")
        }
    }

    /// The same weights under the old attention names (query, key, value, proj_attn) give the same model.
    func testOldAttentionKeySchemeGivesTheSameOutputs() throws {
        let (config, weights, reference) = try fixtureFiles()
        let renames = ["to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"]
        var old = weights
        var renamed = 0
        for i in old.tensors.indices {
            for (current, legacy) in renames where old.tensors[i].name.contains(".attentions.0.\(current).") {
                old.tensors[i].name = old.tensors[i].name.replacingOccurrences(of: ".\(current).", with: ".\(legacy).")
                renamed += 1
            }
        }
        XCTAssertEqual(renamed, 16, "two attention layers of four projections with weight and bias")
        let current = try AutoencoderKL(config: config, weights: weights, source: "current", on: .cpu)
        let legacy = try AutoencoderKL(config: config, weights: old, source: "old", on: .cpu)
        let images = Tensor(reference["images"]!.floats(), shape: reference["images"]!.shape, on: .cpu)
        XCTAssertEqual(try legacy.encode(images).mean.floats, try current.encode(images).mean.floats)
        let results = try VAEReferenceCheck.compare(legacy, reference: reference, source: "reference", on: .cpu)
        XCTAssertEqual(results.count, 5)
        for r in results { XCTAssertTrue(r.passed, "\(r.name): \(r.relativeError)") }
    }

    /// Encoding twice gives the same bits (the CPU products and reductions have a fixed order).
    func testEncodingIsDeterministic() throws {
        let (config, weights, reference) = try fixtureFiles()
        let vae = try AutoencoderKL(config: config, weights: weights, source: "fixture", on: .cpu)
        let images = Tensor(reference["images"]!.floats(), shape: reference["images"]!.shape, on: .cpu)
        XCTAssertEqual(try vae.encode(images).std.floats, try vae.encode(images).std.floats)
        XCTAssertEqual(try vae.decode(vae.encode(images).mean).floats, try vae.decode(vae.encode(images).mean).floats)
    }

    /// Folders made by scripts/vae_reference.py (other widths and block counts, the old key scheme, no mid-block
    /// attention or quant convs): set TVM_VAE_REFERENCE_DIRS to a colon-separated list of them.
    func testExtraReferenceFolders() throws {
        guard let list = ProcessInfo.processInfo.environment["TVM_VAE_REFERENCE_DIRS"] else {
            throw XCTSkip("set TVM_VAE_REFERENCE_DIRS to folders made by scripts/vae_reference.py")
        }
        for dir in list.split(separator: ":").map(String.init) {
            let results = try VAEReferenceCheck.run(directory: dir, on: .cpu)
            XCTAssertEqual(results.count, 5, dir)
            for r in results {
                print("  \(dir): \(r.name) \(r.relativeError)")
                XCTAssertTrue(r.passed, "\(dir) \(r.name): \(r.relativeError)")
            }
        }
    }

    // MARK: - A config and weights that disagree

    func loadError(_ config: VAEConfig, _ weights: SafetensorsFile) -> String {
        do {
            _ = try AutoencoderKL(config: config, weights: weights, source: "w.safetensors", on: .cpu)
            return "no error"
        } catch { return "\(error)" }
    }

    func testConfigThatDoesNotMatchItsWeightsNamesTheTensor() throws {
        let (config, weights, _) = try fixtureFiles()
        var threeBlocks = config
        threeBlocks.blockOutChannels = [32, 64, 64]
        XCTAssertEqual(loadError(threeBlocks, weights),
                       #"w.safetensors: tensor "encoder.down_blocks.1.resnets.0.conv1.weight" has shape [32, 32, 3, 3], but the config implies [64, 32, 3, 3]"#)
        var oneLayer = config
        oneLayer.layersPerBlock = 1
        XCTAssertTrue(loadError(oneLayer, weights).hasPrefix(#"w.safetensors: unexpected tensor "decoder.up_blocks.0.resnets.2."#),
                      loadError(oneLayer, weights))
        var noAttention = config
        noAttention.midBlockAttention = false
        XCTAssertTrue(loadError(noAttention, weights).contains(#"unexpected tensor "decoder.mid_block.attentions.0."#))
        var moreLatents = config
        moreLatents.latentChannels = 8
        XCTAssertEqual(loadError(moreLatents, weights),
                       #"w.safetensors: tensor "encoder.conv_out.weight" has shape [8, 64, 3, 3], but the config implies [16, 64, 3, 3]"#)

        var missing = weights
        missing.tensors.removeAll { $0.name == "quant_conv.bias" }
        XCTAssertEqual(loadError(config, missing), #"w.safetensors: missing tensor "quant_conv.bias" of shape [8] (the config implies it)"#)
        var both = weights
        let query = both.tensors.first { $0.name == "encoder.mid_block.attentions.0.to_q.weight" }!
        both.tensors.append(NamedArray(name: "encoder.mid_block.attentions.0.query.weight", shape: query.shape, dtype: query.dtype, bytes: query.bytes))
        XCTAssertEqual(loadError(config, both), "w.safetensors: tensors \"encoder.mid_block.attentions.0.to_q.weight\" and "
                       + "\"encoder.mid_block.attentions.0.query.weight\" are the same parameter")
        var poisoned = weights
        let i = poisoned.tensors.firstIndex { $0.name == "decoder.conv_out.bias" }!
        poisoned.tensors[i] = NamedArray(name: "decoder.conv_out.bias", shape: [3], floats: [0, .nan, 0])
        XCTAssertEqual(loadError(config, poisoned), #"w.safetensors: tensor "decoder.conv_out.bias" holds a non-finite value at flat index 1"#)
    }

    func testConfigFileErrors() {
        func error(_ text: String) -> String {
            do { _ = try VAEConfig.parse(Array(text.utf8), source: "c.json"); return "no error" } catch { return "\(error)" }
        }
        XCTAssertEqual(error(#"{"block_out_channels": [32, 48], "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#),
                       "c.json: norm_num_groups 32 does not divide the block width 48")
        XCTAssertEqual(error(#"{"block_out_channels": [64, 64]}"#),
                       #"c.json: "down_block_types" has 1 blocks but "block_out_channels" has 2"#)
        XCTAssertEqual(error(#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#),
                       #"c.json: "down_block_types" holds "AttnDownEncoderBlock2D"; only DownEncoderBlock2D is supported"#)
        XCTAssertEqual(error(#"{"act_fn": "gelu"}"#), #"c.json: "act_fn" is "gelu"; only "silu" (or its alias "swish") is supported"#)
        XCTAssertEqual(error(#"{"layers_per_block": 1.5}"#), #"c.json: "layers_per_block" must be a whole number, got 1.5"#)
        XCTAssertEqual(error(#"{"_class_name": "UNet2DModel"}"#), #"c.json: _class_name is "UNet2DModel", expected "AutoencoderKL""#)
        XCTAssertEqual(error("[1]"), "c.json: not a JSON object")
        XCTAssertTrue(error("{").hasPrefix("c.json: not valid JSON"))
        // Absent and null fields take diffusers' defaults.
        XCTAssertEqual(try VAEConfig.parse(Array(#"{"latents_mean": null, "use_quant_conv": null}"#.utf8), source: "c.json"),
                       VAEConfig(blockOutChannels: [64], layersPerBlock: 1, normGroups: 32))
    }

    func testInputsOfTheWrongShapeAreErrors() throws {
        let (config, weights, _) = try fixtureFiles()
        let vae = try AutoencoderKL(config: config, weights: weights, source: "fixture", on: .cpu)
        XCTAssertThrowsError(try vae.encode(Tensor.zeros([1, 3, 4, 8], on: .cpu))) { e in
            XCTAssertEqual("\(e)", "images of shape [1, 3, 4, 8] do not fit this VAE, which encodes [N, 3, H, W] with H and W at least 8")
        }
        XCTAssertThrowsError(try vae.decode(Tensor.zeros([1, 8, 4, 4], on: .cpu))) { e in
            XCTAssertEqual("\(e)", "latents of shape [1, 8, 4, 4] do not fit this VAE, which decodes [N, 4, H, W]")
        }
    }

    /// The reference check refuses what it cannot compare, naming the file and the tensor.
    func testReferenceCheckRefusesBadReferences() throws {
        let (config, weights, reference) = try fixtureFiles()
        let vae = try AutoencoderKL(config: config, weights: weights, source: "fixture", on: .cpu)
        func error(_ file: SafetensorsFile) -> String {
            do { _ = try VAEReferenceCheck.compare(vae, reference: file, source: "r.safetensors", on: .cpu); return "no error" }
            catch { return "\(error)" }
        }
        var extra = reference
        extra.tensors.append(NamedArray(name: "posterior_sample", shape: [1], floats: [0]))
        XCTAssertTrue(error(extra).hasPrefix(#"r.safetensors: unexpected tensor "posterior_sample" (known: "#), error(extra))
        var noImages = reference
        noImages.tensors.removeAll { $0.name == "images" }
        XCTAssertEqual(error(noImages), #"r.safetensors: tensor "posterior_mean" needs the input "images", which is missing"#)
        var cropped = reference
        let d = cropped.tensors.firstIndex { $0.name == "decoded" }!
        cropped.tensors[d] = NamedArray(name: "decoded", shape: [2, 3, 16, 16], floats: [Float](repeating: 0, count: 2 * 3 * 256))
        XCTAssertEqual(error(cropped), #"r.safetensors: tensor "decoded" has shape [2, 3, 16, 16], but the model gives [2, 3, 32, 32]"#)
        var nan = reference
        let l = nan.tensors.firstIndex { $0.name == "latents" }!
        var values = nan.tensors[l].floats()
        values[5] = .infinity
        nan.tensors[l] = NamedArray(name: "latents", shape: nan.tensors[l].shape, floats: values)
        XCTAssertEqual(error(nan), #"r.safetensors: tensor "latents" holds a non-finite value at flat index 5"#)
        XCTAssertEqual(error(SafetensorsFile(tensors: [])),
                       "r.safetensors: holds none of the outputs posterior_mean, posterior_std, posterior_logvar, roundtrip, decoded")
    }

    func testMissingFolderFilesAreNamed() {
        XCTAssertThrowsError(try VAEReferenceCheck.run(directory: "/nonexistent-vae-folder", on: .cpu)) { e in
            XCTAssertTrue("\(e)".hasPrefix("/nonexistent-vae-folder/config.json: cannot open"), "\(e)")
        }
    }
}
