import XCTest
import Foundation
import Formats
import TensorCore
import NN
import Data
import Eval
import TVM
@testable import CLI

/// The paper's setting end to end on the CPU, as a user runs it: images -> `tvm prepare` (the cropped RGB set, then
/// the SD-VAE latent set and its statistics) -> `tvm train` on latents -> `tvm sample --vae` (decoded) -> `tvm fid`
/// against the RGB set; a killed preparation continuing; bad images, archives, VAEs and channel counts refused.
/// The VAE is `fixtures/latent/vae_small` where it is found, else a small random one made here.
final class LatentPipelineCommandsTests: CLITestCase {
    /// Six images of two classes (folders a, b) of assorted sizes and patterns, as PNGs.
    func makeImages(_ dir: String) throws -> String {
        let root = dir + "/images"
        for (k, (w, h)) in [(40, 36), (33, 47), (64, 64), (32, 32), (90, 41), (36, 70)].enumerated() {
            let folder = root + (k < 3 ? "/a" : "/b")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            var pixels = [UInt8](repeating: 0, count: w * h * 3)
            for y in 0..<h {
                for x in 0..<w {
                    for c in 0..<3 { pixels[(y * w + x) * 3 + c] = UInt8((x * (3 + k) + y * (5 + c) + 40 * c + 17 * k) % 256) }
                }
            }
            try Image(width: w, height: h, channels: 3, pixels: pixels).writePNG(path: folder + "/img\(k).png")
        }
        return root
    }

    /// The fixture's small SD-VAE, or a random one of the same structure (4 blocks: a factor of 8) made in `dir`.
    func vaeDirectory(_ dir: String) throws -> String {
        let fixture = ["TVM_FIXTURES"].compactMap { ProcessInfo.processInfo.environment[$0] }.map { $0 + "/latent/vae_small" }
            + ["/work/shared/fixtures/latent/vae_small"]
        if let found = fixture.first(where: { FileManager.default.fileExists(atPath: $0 + "/config.json") }) { return found }
        let vae = dir + "/vae"
        try FileManager.default.createDirectory(atPath: vae, withIntermediateDirectories: true)
        let config = """
            {"in_channels": 3, "out_channels": 3, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
             "latent_channels": 4, "norm_num_groups": 4,
             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
             "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}
            """
        try config.write(toFile: vae + "/config.json", atomically: true, encoding: .utf8)
        var rng = RandomGenerator(seed: 7)
        let shapes = AutoencoderKL.parameterShapes(try VAEConfig.read(path: vae + "/config.json"))
        let tensors = shapes.map { p -> NamedArray in
            let n = p.shape.reduce(1, *)
            let isNorm = p.name.contains("norm") && p.name.hasSuffix("weight")
            return NamedArray(name: p.name, shape: p.shape, floats: rng.normalFloats(n).map { isNorm ? 1 + 0.1 * $0 : 0.1 * $0 })
        }
        try SafetensorsFile(tensors: tensors).write(path: vae + "/diffusion_pytorch_model.safetensors")
        return vae
    }

    func entries(_ path: String) throws -> [String] { try ZIPArchive(path: path).entries.map(\.name) }

    func testImagesToLatentsToTrainingToDecodedSamples() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let images = try makeImages(dir), vae = try vaeDirectory(dir)

        // 1. The cropped RGB set: official names, dataset.json labels, every pixel the ADM crop of its source.
        var r = try run(["prepare", images, "--out", dir + "/rgb.zip", "--size", "32"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("0 bad images"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/rgb.zip.partial"))
        let rgb = try ZIPArchive(path: dir + "/rgb.zip")
        XCTAssertEqual(rgb.entries.map(\.name), (0..<6).map { "00000/img0000000\($0).png" } + ["dataset.json"])
        XCTAssertTrue(rgb.entries.allSatisfy { $0.method == 0 })
        let labels = try JSONValue.parse(rgb.read(named: "dataset.json"))["labels"]?.array
        XCTAssertEqual(labels?.map { $0.array?[1].int }, [0, 0, 0, 1, 1, 1])
        for k in 0..<6 {
            let source = try Image.read(path: images + (k < 3 ? "/a" : "/b") + "/img\(k).png").rgb()
            let stored = try Image.decode(rgb.read(named: "00000/img0000000\(k).png"))
            XCTAssertEqual(stored, source.width == 32 && source.height == 32 ? source : source.centerCropDhariwal(size: 32), "image \(k)")
        }

        // 2. The latent set from the RGB set: [8, 4, 4] float32 per image, the posterior of the VAE here.
        r = try run(["prepare", dir + "/rgb.zip", "--out", dir + "/latents.zip", "--vae", vae, "--size", "32", "--batch", "4",
                     "--device", "cpu"])
        XCTAssertEqual(r.status, 0, r.err)
        let latents = try LatentArchive(path: dir + "/latents.zip")
        XCTAssertEqual(latents.names, (0..<6).map { "00000/img-mean-std-0000000\($0).npy" })
        XCTAssertEqual([latents.channels, latents.height, latents.width], [4, 4, 4])
        XCTAssertEqual(latents.labels, [0, 0, 0, 1, 1, 1])
        let model = try AutoencoderKL(directory: vae, on: .cpu)
        let image = try Image.decode(rgb.read(named: "00000/img00000004.png"))
        let image5 = try Image.decode(rgb.read(named: "00000/img00000005.png"))
        var planar = [UInt8](repeating: 0, count: 3 * 32 * 32)
        for c in 0..<3 { for k in 0..<(32 * 32) { planar[c * 1024 + k] = image.pixels[k * 3 + c] } }
        let posterior = try model.encode(vaeInput(pixels: planar, shape: [1, 3, 32, 32], on: .cpu))
        let stored = try latents.posterior(4)
        let expected = posterior.mean.floats + posterior.std.floats
        let error = zip(stored, expected).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +).squareRoot()
            / expected.map { Double($0) * Double($0) }.reduce(0, +).squareRoot()
        XCTAssertLessThan(error, 1e-5, "posterior of image 4 in a batch of 4 vs alone")

        // getstats: the mean of the means per channel, printed as train options.
        let statsLine = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix("--latent-mean") })
        let fields = statsLine.split(separator: " ").map(String.init)
        let printedMean = fields[1].split(separator: ",").compactMap { Double($0) }
        var channelMeans = [Double](repeating: 0, count: 4)
        for i in 0..<6 {
            let v = try latents.posterior(i)
            for c in 0..<4 { channelMeans[c] += v[(c * 16)..<((c + 1) * 16)].map(Double.init).reduce(0, +) / 96 }
        }
        for c in 0..<4 { XCTAssertEqual(printedMean[c], channelMeans[c], accuracy: 1e-5 * max(1, abs(channelMeans[c]))) }
        let stats = try run(["prepare", "--stats", dir + "/latents.zip"])
        XCTAssertEqual(stats.status, 0, stats.err)
        XCTAssertEqual(stats.out.trimmingCharacters(in: .whitespacesAndNewlines), String(statsLine))

        // 3. Training on the latents with their statistics, grids decoded by the VAE.
        let runDir = dir + "/run"
        r = try run(["train", "--device", "cpu", "--data", dir + "/latents.zip", "--hidden", "32", "--depth", "1", "--heads", "2",
                          "--patch", "2", "--batch", "4", "--steps", "3", "--every", "3", "--out", runDir, "--vae", vae]
                         + fields)
        XCTAssertEqual(r.status, 0, r.err)
        let grid = try Image.readPNG(path: runDir + "/samples_step3_nfe1.png")
        // 2 class rows of 10 decoded 32x32 RGB images, 2 pixels apart.
        XCTAssertEqual([grid.width, grid.height, grid.channels], [342, 70, 3])
        let config = try JSONValue.parse(AtomicFile.read(path: runDir + "/config.json"))
        XCTAssertEqual(config["latent-mean"]?.string, fields[1])

        // 4. Decoded samples: uint8 NPY [n, 3, 32, 32], PNG folder, grid; classes drawn at random.
        r = try run(["sample", "--device", "cpu", "--checkpoint", runDir + "/checkpoint.safetensors", "--vae", vae, "--n", "5",
                          "--classes", "random", "--npy", dir + "/samples.npy", "--folder", dir + "/samples", "--out", dir + "/grid.png"])
        XCTAssertEqual(r.status, 0, r.err)
        let npy = try NPYArray.read(path: dir + "/samples.npy")
        XCTAssertEqual(npy.descr, "|u1")
        XCTAssertEqual(npy.shape, [5, 3, 32, 32])
        let folderImages = try FileManager.default.subpathsOfDirectory(atPath: dir + "/samples").filter { $0.hasSuffix(".png") }
        XCTAssertEqual(folderImages.count, 5)

        // 5. FID of the decoded samples against the RGB set: its images as tvm fid reads them (planar RGB), and, where
        // the Inception weights are installed, the command itself on 2 images of each (a few seconds with a BLAS).
        let reference = try readDatasetZIP(dir + "/rgb.zip")
        XCTAssertEqual([reference.count, reference.channels, reference.height, reference.width], [6, 3, 32, 32])
        XCTAssertEqual(reference.pixels[(5 * 3 + 1) * 1024 + 37], image5.pixels[37 * 3 + 1])
        if FileManager.default.fileExists(atPath: FIDFiles.defaultWeightsPath) {
            r = try run(["fid", dir + "/samples.npy", "--dataset", dir + "/rgb.zip", "--no-cache", "--device", "cpu", "--limit", "2"])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.hasPrefix("FID "), r.out)
        }
    }

    /// FID while training on latents: the samples decoded by the VAE, against the cropped RGB set. The measurement's
    /// samples are those `tvm sample --classes random --seed <seed + offset>` writes, so its FID is `tvm fid`'s of them.
    func testFIDWhileTrainingOnLatentsMeasuresTheDecodedSamples() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let images = try makeImages(dir), vae = try vaeDirectory(dir)
        var r = try run(["prepare", images, "--out", dir + "/rgb.zip", "--size", "32"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["prepare", dir + "/rgb.zip", "--out", dir + "/latents.zip", "--vae", vae, "--size", "32", "--device", "cpu"])
        XCTAssertEqual(r.status, 0, r.err)
        let statistics = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix("--latent-mean") })
            .split(separator: " ").map(String.init)
        let train = ["train", "--device", "cpu", "--data", dir + "/latents.zip", "--hidden", "32", "--depth", "1", "--heads", "2",
                     "--patch", "2", "--batch", "4", "--steps", "2", "--every", "2", "--seed", "5", "--out", dir + "/run"] + statistics

        // Refused before the run starts: no VAE to decode with, nothing RGB to compare with, two references, a bad one.
        let anyFile = ["--fid-weights", vae + "/config.json"]
        try assertCleanError(train + ["--fid-every", "2"] + anyFile + ["--fid-dataset", dir + "/rgb.zip"], contains: "give --vae DIR")
        try assertCleanError(train + ["--fid-every", "2", "--vae", vae] + anyFile, contains: "--fid-dataset RGB.zip")
        try assertCleanError(train + ["--fid-every", "2", "--vae", vae, "--fid-dataset", dir + "/rgb.zip", "--fid-ref", dir + "/rgb.zip"]
                             + anyFile, contains: "not both")
        try AtomicFile.write(path: dir + "/broken.zip", bytes: Array("PK\u{3}\u{4} not really a zip".utf8))
        try assertCleanError(train + ["--fid-every", "2", "--vae", vae, "--fid-dataset", dir + "/broken.zip"] + anyFile,
                             contains: "broken.zip")
        try assertCleanError(train + ["--fid-every", "2", "--vae", vae, "--fid-ref", dir + "/rgb.zip"] + anyFile, contains: "rgb.zip")
        try assertCleanError(train + ["--fid-dataset", dir + "/rgb.zip"], contains: "--fid-dataset goes with --fid-every N")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run"), "a refused run wrote nothing")

        let weights = try inceptionWeightsOrSkip()
        r = try run(["XDG_CACHE_HOME=" + dir, binary] + train + ["--vae", vae, "--fid-every", "2", "--fid-samples", "4", "--fid-nfe", "1",
                                                                  "--fid-dataset", dir + "/rgb.zip", "--fid-weights", weights],
                    executable: "/usr/bin/env")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("4 decoded samples at 1 NFE against the 6 images of \(dir)/rgb.zip"), r.err)
        let logged = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .map { try JSONValue.parse(String($0)) }.compactMap { $0["fid_nfe1"]?.double }
        XCTAssertEqual(logged.count, 1)
        let fid = try XCTUnwrap(logged.first)

        // The same samples, written by tvm sample and measured by tvm fid.
        r = try run(["sample", "--device", "cpu", "--checkpoint", dir + "/run/checkpoint.safetensors", "--vae", vae, "--n", "4",
                     "--classes", "random", "--seed", "\(5 + TrainingFID.fidSeedOffset)", "--nfe", "1", "--cfg", "2",
                     "--npy", dir + "/s.npy", "--out", dir + "/s.png"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["fid", dir + "/s.npy", "--dataset", dir + "/rgb.zip", "--no-cache", "--device", "cpu", "--weights", weights])
        XCTAssertEqual(r.status, 0, r.err)
        let measured = try XCTUnwrap(Double(r.out.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("FID ".count)), r.out)
        XCTAssertGreaterThan(fid, 0)
        XCTAssertEqual(fid, measured, accuracy: 1e-3 * fid + 1e-4, "FID while training vs tvm sample + tvm fid")

        // A reference ZIP is read a batch at a time, so a damaged image in it stops the measurement when its batch comes.
        let cut = try ZIPWriter(path: dir + "/cut.zip")
        let entries = try ZIPArchive(path: dir + "/rgb.zip")
        for (k, entry) in entries.entries.enumerated() {
            let bytes = try entries.read(entry)
            try cut.add(name: entry.name, bytes: k == 3 ? Array(bytes.prefix(bytes.count - 20)) : bytes)
        }
        try cut.finish()
        r = try run(["fid", dir + "/s.npy", "--dataset", dir + "/cut.zip", "--no-cache", "--device", "cpu", "--weights", weights, "--batch", "2"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertEqual(r.out, "")
        let last = try XCTUnwrap(r.err.split(separator: "\n").last)
        XCTAssertTrue(last.hasPrefix("error: ") && last.contains("cut.zip: entry \"00000/img00000003.png\""), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("error: ") }.count, 1, r.err)
    }

    func testLatentsAreDrawnAfreshAndNormalisedEveryTimeAnImageIsUsed() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Two images of 2 latent channels of 1x2: means then stds.
        let posteriors: [[Float]] = [[1, 2, 3, 4, 0.5, 0.25, 2, 1], [-1, 0, 1, 5, 1, 1, 0, 3]]
        let writer = try ZIPWriter(path: dir + "/l.zip")
        for (i, p) in posteriors.enumerated() {
            try writer.add(name: DatasetPreparation.latentName(i), bytes: NPYArray(shape: [4, 1, 2], floats: p).serialized())
        }
        try writer.add(name: "dataset.json", bytes: Array(#"{"labels": [["00000/img-mean-std-00000000.npy", 1], ["00000/img-mean-std-00000001.npy", 0]]}"#.utf8))
        try writer.finish()
        let normalization = LatentNormalization(rawMean: [0.5, -1], rawStd: [2, 4], finalStd: 1.5)
        let data = try ImageDataset.latents(dir + "/l.zip", scale: normalization.scale, bias: normalization.bias)
        XCTAssertEqual([data.count, data.channels, data.height, data.width, data.classes], [2, 2, 1, 2, 2])
        var rng = RandomGenerator(seed: 3), replay = rng
        let first = data.batchValues(indices: [1, 0, 1], flip: false, rng: &rng)
        let second = data.batchValues(indices: [1, 0, 1], flip: false, rng: &rng)
        XCTAssertEqual(first.labels, [0, 1, 0])
        XCTAssertNotEqual(first.values, second.values, "a fresh eps every time")
        XCTAssertNotEqual(Array(first.values[0..<4]), Array(first.values[8..<12]), "a fresh eps for each use in a batch")
        let eps = replay.normalFloats(12)
        for (b, i) in [1, 0, 1].enumerated() {
            for c in 0..<2 {
                for k in 0..<2 {
                    let m = posteriors[i][c * 2 + k], s = posteriors[i][4 + c * 2 + k], e = eps[b * 4 + c * 2 + k]
                    let x = m + e * s
                    XCTAssertEqual(first.values[b * 4 + c * 2 + k], x * normalization.scale[c] + normalization.bias[c])
                }
            }
        }
        // (x - raw_mean) / raw_std * final_std, as TVM.md states the map.
        XCTAssertEqual(Double(normalization.scale[1]), 1.5 / 4, accuracy: 1e-7)
        XCTAssertEqual(Double(normalization.bias[1]), 1.5 / 4, accuracy: 1e-7)
    }

    /// The presets against the official configs (configs/im256_w2.yaml, im256_w1p75.yaml, im512_w2p5.yaml, im512_w2p25.yaml),
    /// value by value.
    func testOfficialImageNetPresetsAreTheOfficialConfigs() throws {
        let common: [String: JSONValue] = [
            "model": .string("XL/2-18"), "batch": .number(2048), "lr": .number(1e-4), "betas": .string("0.9,0.95"), "eps": .number(1e-8),
            "weight-decay": .number(0), "ema": .string("0.9999"), "ema-target": .number(0.99), "label-dropout": .number(0.1),
            "bf16": .bool(true), "latent-final-mean": .number(0), "latent-final-std": .number(1)]
        let im256 = (mean: "0.86488,-0.27787343,0.21616915,0.3738409", std: "4.85503674,5.31922414,3.93725398,3.9870003")
        let im512 = (mean: "1.56,-0.695,0.483,0.729", std: "5.27,5.91,4.21,4.31")
        let expected: [(String, Double, Bool, Double?, (mean: String, std: String), scaled: Bool)] = [
            ("im256-w2", 2, true, nil, im256, true), ("im256-w1p75", 1.75, false, nil, im256, true),
            ("im512-w2p5", 2.5, false, 1, im512, false), ("im512-w2p25", 2.25, true, 1, im512, true)]
        XCTAssertEqual(trainingPresets.filter { $0.name.hasPrefix("im") }.map(\.name), expected.map(\.0))
        for (name, cfg, timeSpecInit, clipping, statistics, scaled) in expected {
            let preset = try XCTUnwrap(trainingPresets.first { $0.name == name }, name)
            var options = common
            options["cfg"] = .number(cfg)
            options["latent-mean"] = .string(statistics.mean)
            options["latent-std"] = .string(statistics.std)
            if timeSpecInit { options["time-spec-init"] = .bool(true) }
            if let clipping { options["max-grad-norm"] = .number(clipping) }
            if !scaled { options["no-scaled-param"] = .bool(true) }
            XCTAssertEqual(Dictionary(uniqueKeysWithValues: preset.options.map { ($0.0, $0.1) }), options, name)
        }
    }

    func testAKilledOrStoppedPreparationContinuesToTheSameArchive() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let images = try makeImages(dir)
        var r = try run(["prepare", images, "--out", dir + "/clean.zip", "--size", "16", "--batch", "2"])
        XCTAssertEqual(r.status, 0, r.err)

        // A truncated image stops the run under --on-bad-image stop: one line naming it, no output, the work kept.
        let bad = images + "/b/img4.png"
        let good = try AtomicFile.read(path: bad)
        try AtomicFile.write(path: bad, bytes: Array(good.prefix(60)))
        let args = ["prepare", images, "--out", dir + "/out.zip", "--size", "16", "--batch", "2"]
        try assertStopped(args + ["--on-bad-image", "stop"], at: "img4.png")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.zip"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out.zip.partial"))
        // Skipped instead: named, counted, left out.
        r = try run(["prepare", images, "--out", dir + "/skipped.zip", "--size", "16"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("prepare: skipped: ") && r.err.contains("img4.png") && r.err.contains("1 bad images skipped"), r.err)
        XCTAssertEqual(try entries(dir + "/skipped.zip").count, 6)

        // Mended, the same command continues the stopped run and ends with the archive a clean run writes.
        try AtomicFile.write(path: bad, bytes: good)
        r = try run(args)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("continuing") && r.err.contains("holds 4 of the 6 images") && r.err.contains("4 by the interrupted run"), r.err)
        XCTAssertEqual(try AtomicFile.read(path: dir + "/out.zip"), try AtomicFile.read(path: dir + "/clean.zip"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.zip.partial"))

        // A partial archive of other settings is not continued.
        let other = ["prepare", images, "--out", dir + "/mixed.zip", "--size", "16", "--on-bad-image", "stop"]
        try AtomicFile.write(path: bad, bytes: Array(good.prefix(60)))
        try assertStopped(other, at: "img4.png")
        try assertCleanError(other.map { $0 == "16" ? "8" : $0 }, contains: "other settings")
    }

    /// SIGKILL at moments spread over a preparation (many inside an entry, between its header and its data, where
    /// `TVM_TEST_WRITE_PAUSE_MS` holds the writer), each time run again: the last run ends with the archive an
    /// uninterrupted run writes, byte for byte, and `OUT` never exists half-written.
    func testSIGKILLDuringPreparationContinuesToTheSameArchive() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let images = try makeImages(dir)
        let args = ["prepare", images, "--out", dir + "/out.zip", "--size", "16", "--batch", "1"]
        var r = try run(["prepare", images, "--out", dir + "/clean.zip", "--size", "16"])
        XCTAssertEqual(r.status, 0, r.err)
        var state: UInt64 = 17, kills = 0, launches = 0
        while launches < 60 {
            launches += 1
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = args
            p.environment = ProcessInfo.processInfo.environment.merging(["TVM_TEST_WRITE_PAUSE_MS": "30"]) { $1 }
            p.standardError = FileHandle.nullDevice
            try p.run()
            // 20 to 120 ms: a launch gets through a few entries of the 6 (each holds the writer 30 ms).
            state = state &* 6364136223846793005 &+ 1442695040888963407
            usleep(UInt32(20_000 + (state >> 33) % 100_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if p.terminationReason == .exit {
                XCTAssertEqual(p.terminationStatus, 0)
                break
            }
            kills += 1
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.zip"), "a killed run left out.zip")
        }
        XCTAssertGreaterThanOrEqual(kills, 3)
        if !FileManager.default.fileExists(atPath: dir + "/out.zip") {
            r = try run(args)
            XCTAssertEqual(r.status, 0, r.err)
        }
        XCTAssertEqual(try AtomicFile.read(path: dir + "/out.zip"), try AtomicFile.read(path: dir + "/clean.zip"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.zip.partial"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.zip.partial-settings"))
    }

    /// A run stopped by a bad image: after its progress lines, one `error:` line naming the image; non-zero exit.
    func assertStopped(_ args: [String], at image: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args)
        XCTAssertEqual(r.status, 1, r.err, file: file, line: line)
        let lines = r.err.split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("error: ") }.count, 1, r.err, file: file, line: line)
        XCTAssertTrue(lines.last?.hasPrefix("error: ") == true && lines.last!.contains(image) && lines.last!.contains("stop"), r.err,
                      file: file, line: line)
    }

    func testBadInputIsOneLineNamingTheFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let images = try makeImages(dir), vae = try vaeDirectory(dir)

        // A corrupt ZIP as the source.
        try AtomicFile.write(path: dir + "/broken.zip", bytes: Array("PK\u{3}\u{4} not really a zip".utf8))
        try assertCleanError(["prepare", dir + "/broken.zip", "--out", dir + "/x.zip"], contains: "broken.zip")
        // A VAE whose config does not describe its weights.
        let wrong = dir + "/wrong-vae"
        try FileManager.default.createDirectory(atPath: wrong, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: vae + "/diffusion_pytorch_model.safetensors", toPath: wrong + "/diffusion_pytorch_model.safetensors")
        let config = try String(contentsOfFile: vae + "/config.json", encoding: .utf8)
        try config.replacingOccurrences(of: "\"latent_channels\": 4", with: "\"latent_channels\": 8")
            .write(toFile: wrong + "/config.json", atomically: true, encoding: .utf8)
        try assertCleanError(["prepare", images, "--out", dir + "/x.zip", "--vae", wrong, "--device", "cpu"],
                             contains: "diffusion_pytorch_model.safetensors")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.zip"))

        // Latents of 8 channels: a normalisation of 4 values, and a VAE of 4 latent channels, are refused.
        let writer = try ZIPWriter(path: dir + "/wide.zip")
        for i in 0..<4 {
            try writer.add(name: DatasetPreparation.latentName(i),
                           bytes: NPYArray(shape: [16, 4, 4], floats: (0..<256).map { Float(($0 + i) % 7) / 7 }).serialized())
        }
        try writer.finish()
        let tiny = ["train", "--device", "cpu", "--data", dir + "/wide.zip", "--hidden", "32", "--depth", "1", "--heads", "2",
                    "--patch", "2", "--batch", "2", "--steps", "1"]
        try assertCleanError(tiny + ["--out", dir + "/r0"], contains: "wide.zip: the latents have 8 channels")
        let eight = ["--latent-mean", "0,0,0,0,0,0,0,0", "--latent-std", "1,1,1,1,1,1,1,1"]
        try assertCleanError(tiny + eight + ["--out", dir + "/r1", "--vae", vae], contains: "config.json: the VAE has 4 latent channels")
        let r = try run(tiny + eight + ["--out", dir + "/r2"])
        XCTAssertEqual(r.status, 0, r.err)
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", dir + "/r2/checkpoint.safetensors", "--vae", vae, "--n", "2",
                              "--out", dir + "/g.png"], contains: "config.json: the VAE has 4 latent channels")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/g.png"))

        // The rest of the list wherever the pipeline reads such a file: one line naming the file (or the entry) and the
        // problem, no output, nothing changed.
        let jpeg = try AtomicFile.read(path: Self.resources + "/progressive422.jpg")
        let jpegImages = dir + "/jpegs"
        for (name, bytes) in [("a/whole.jpg", jpeg), ("b/cut.JPEG", Array(jpeg.prefix(jpeg.count / 2)))] {
            try FileManager.default.createDirectory(atPath: jpegImages + "/" + name.prefix(1), withIntermediateDirectories: true)
            try AtomicFile.write(path: jpegImages + "/" + name, bytes: bytes)
        }
        let notJPEG = dir + "/notjpeg"
        try FileManager.default.createDirectory(atPath: notJPEG + "/a", withIntermediateDirectories: true)
        try AtomicFile.write(path: notJPEG + "/a/photo.jpg", bytes: [0xFF, 0xD8, 0xFF, 0xE0] + Array("not the rest of a JPEG".utf8))
        // A data set ZIP whose second PNG is cut short, and a latent set cut in the middle of its entries.
        let png = try Image(width: 8, height: 8, channels: 3, pixels: (0..<192).map { UInt8($0) }).pngBytes()
        let cutPNG = try ZIPWriter(path: dir + "/cut-png.zip")
        try cutPNG.add(name: DatasetPreparation.pngName(0), bytes: png)
        try cutPNG.add(name: DatasetPreparation.pngName(1), bytes: Array(png.prefix(png.count - 20)))
        try cutPNG.add(name: "dataset.json", bytes: Array(#"{"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 1]]}"#.utf8))
        try cutPNG.finish()
        let whole = try AtomicFile.read(path: dir + "/wide.zip")
        try AtomicFile.write(path: dir + "/cut-latents.zip", bytes: Array(whole.prefix(whole.count / 2)))
        // Latents of 4 channels, and the checkpoint r2 of a model of 8.
        let narrow = try ZIPWriter(path: dir + "/narrow.zip")
        for i in 0..<2 {
            try narrow.add(name: DatasetPreparation.latentName(i),
                           bytes: NPYArray(shape: [8, 4, 4], floats: (0..<128).map { Float($0 % 5) / 5 }).serialized())
        }
        try narrow.finish()
        let generated = dir + "/generated.npy"
        try NPYArray.write(path: generated, shape: [2, 3, 8, 8], bytes: (0..<384).map { UInt8($0 % 256) })
        // FID refuses these inputs before it reads the weights (a damaged image in a reference ZIP is found when its
        // batch is read: testFIDWhileTrainingOnLatentsMeasuresTheDecodedSamples).
        let weights = ["--weights", dir + "/wide.zip", "--device", "cpu"]
        let latentTrain = ["train", "--device", "cpu", "--hidden", "32", "--depth", "1", "--heads", "2", "--patch", "2", "--batch", "2",
                           "--steps", "1", "--out", dir + "/r3"]
        // The JPEG cases need libjpeg-turbo (without it the one line names the missing library instead).
        let jpegCases: [(args: [String], names: [String])] = JPEG.isAvailable ? [
            (["prepare", jpegImages, "--out", dir + "/j1.zip", "--size", "16", "--on-bad-image", "stop"], ["cut.JPEG", "stop"]),
            (["prepare", notJPEG, "--out", dir + "/j2.zip", "--size", "16", "--on-bad-image", "stop"], ["photo.jpg", "stop"]),
        ] : []
        var cases: [(args: [String], names: [String])] = jpegCases + [
            (["prepare", dir + "/cut-png.zip", "--out", dir + "/p.zip", "--size", "8", "--on-bad-image", "stop"], ["img00000001.png", "stop"]),
            (["fid", dir + "/cut-png.zip", "--dataset", generated] + weights, ["cut-png.zip", "img00000001.png"]),
            (["fid", generated, "--dataset", dir + "/broken.zip"] + weights, ["broken.zip"]),
            (["fid", generated, "--ref", dir + "/broken.zip"] + weights, ["broken.zip"]),
            (["prepare", "--stats", dir + "/broken.zip"], ["broken.zip"]),
            (["prepare", "--stats", dir + "/cut-latents.zip"], ["cut-latents.zip"]),
            (latentTrain + eight + ["--data", dir + "/broken.zip"], ["broken.zip"]),
            (latentTrain + eight + ["--data", dir + "/cut-latents.zip"], ["cut-latents.zip"]),
            (latentTrain + eight + ["--data", dir + "/wide.zip", "--vae", wrong], ["diffusion_pytorch_model.safetensors"]),
            (["sample", "--device", "cpu", "--checkpoint", dir + "/r2/checkpoint.safetensors", "--vae", wrong, "--n", "2",
              "--out", dir + "/g.png"], ["diffusion_pytorch_model.safetensors"]),
            (["train", "--device", "cpu", "--data", dir + "/narrow.zip", "--batch", "2", "--steps", "2", "--out", dir + "/r3",
              "--resume-from", dir + "/r2/checkpoint.safetensors"], ["r2/checkpoint.safetensors", "4x4x8"]),
        ]
        // With the fixture's diffusers outputs beside it, the mismatched VAE goes through reference-check too.
        if FileManager.default.fileExists(atPath: vae + "/reference.safetensors") {
            try FileManager.default.copyItem(atPath: vae + "/reference.safetensors", toPath: wrong + "/reference.safetensors")
            cases.append((["reference-check", wrong, "--device", "cpu"], ["diffusion_pytorch_model.safetensors"]))
        }
        let before = try files(dir)
        for c in cases {
            let r = try run(c.args)
            let shown = c.args.map { $0.replacingOccurrences(of: dir + "/", with: "") }.joined(separator: " ")
            XCTAssertTrue([1, 2].contains(r.status), "tvm \(shown) exited with \(r.status)")
            let errors = r.err.split(separator: "\n").filter { $0.hasPrefix("error: ") }
            XCTAssertEqual(errors.count, 1, "tvm \(shown): \(r.err)")
            XCTAssertTrue(r.err.split(separator: "\n").last?.hasPrefix("error: ") == true, "tvm \(shown): \(r.err)")
            for name in c.names { XCTAssertTrue(errors.first?.contains(name) == true, "tvm \(shown): \(r.err) should name \(name)") }
            XCTAssertEqual(r.out, "", "tvm \(shown) printed a result")
        }
        // A stopped preparation keeps its work in OUT.partial for the next run; nothing else appeared or changed.
        let after = try files(dir).filter { !$0.key.hasSuffix(".partial") && !$0.key.hasSuffix(".partial-settings") }
        XCTAssertEqual(after, before)
    }

    /// Every regular file under `dir` and its bytes.
    func files(_ dir: String) throws -> [String: [UInt8]] {
        var found: [String: [UInt8]] = [:]
        for name in try FileManager.default.subpathsOfDirectory(atPath: dir) {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + name, isDirectory: &isDirectory), !isDirectory.boolValue {
                found[name] = try AtomicFile.read(path: dir + "/" + name)
            }
        }
        return found
    }

    static let resources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Resources/pil-images").path
}
