import XCTest
import Foundation
import Formats
import TVM

/// `tvm train` on images and `tvm sample`, run as the built binary on a tiny synthetic NPY data set.
final class ImageCommandsTests: CLITestCase {
    func testImageTrainingWritesGridsMetricsAndCheckpointAndResumesExactly() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir)

        let full = dir + "/full"
        var r = try run(["train"] + base + ["--steps", "6", "--every", "3", "--out", full])
        XCTAssertEqual(r.status, 0, r.err)
        for step in [3, 6] {
            for nfe in [1, 4] {
                let png = try Image.readPNG(path: full + "/samples_step\(step)_nfe\(nfe).png")
                // 3 class rows of 10 images of 8x8 with 2-pixel padding.
                XCTAssertEqual([png.width, png.height, png.channels], [102, 32, 1])
            }
        }
        let lines = try String(contentsOfFile: full + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 6)
        let first = try JSONValue.parse(String(lines[0]))
        for key in ["step", "loss", "terminal", "fm", "grad_norm", "it/s", "elapsed"] {
            XCTAssertNotNil(first[key]?.double, "metrics key \(key) in \(lines[0])")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: full + "/checkpoint.safetensors"))

        // Stopped at 3, resumed to 6: the same losses and the same final checkpoint tensors.
        let split = dir + "/split"
        r = try run(["train"] + base + ["--steps", "3", "--every", "100", "--out", split])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["train"] + base + ["--steps", "6", "--every", "100", "--out", split, "--resume"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try losses(split + "/metrics.jsonl"), try losses(full + "/metrics.jsonl"))
        let a = try SafetensorsFile.read(path: split + "/checkpoint.safetensors")
        let b = try SafetensorsFile.read(path: full + "/checkpoint.safetensors")
        XCTAssertEqual(a.tensors, b.tensors)
        XCTAssertEqual(a.metadata("step"), "6")

        // Another model size is refused with one line naming the difference.
        try assertCleanError(["train"] + base + ["--hidden", "64", "--steps", "8", "--out", split, "--resume"],
                                 contains: "hidden 32 vs 64")
        try assertCleanError(["train"] + base + ["--steps", "8", "--out", dir + "/none", "--resume"],
                                 contains: "no checkpoint")
    }

    func testFlowMatchingBaselineTrainsAndSamples() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let runDir = dir + "/fm"
        var r = try run(["train"] + (try makeData(dir)) + ["--method", "fm", "--steps", "3", "--out", runDir])
        XCTAssertEqual(r.status, 0, r.err)
        let losses = try losses(runDir + "/metrics.jsonl")
        XCTAssertEqual(losses.count, 3)
        XCTAssertTrue(losses.allSatisfy { $0.isFinite && $0 > 0 })
        let ck = try AtomicFile.read(path: runDir + "/checkpoint.safetensors")
        XCTAssertTrue(String(decoding: ck.prefix(20_000), as: UTF8.self).contains("fm"))
        r = try run(["sample", "--device", "cpu", "--checkpoint", runDir + "/checkpoint.safetensors", "--n", "4", "--nfe", "3",
                     "--out", dir + "/fm.png", "--npy", dir + "/fm.npy"])
        XCTAssertEqual(r.status, 0, r.err)
        let npy = try NPYArray.read(path: dir + "/fm.npy")
        XCTAssertEqual(npy.shape, [4, 1, 8, 8])
        XCTAssertTrue(npy.floats.allSatisfy(\.isFinite))
        try assertCleanError(["train"] + (try makeData(dir)) + ["--method", "sit", "--steps", "1", "--out", dir + "/x"], contains: "--method")
    }

    /// MeanFlow and iMF on images: they train, sample at 1/2/4 NFE with their own guidance input, and resume exactly.
    func testMeanFlowAndIMFTrainSampleAndResume() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeData(dir)
        // MeanFlow trains one guidance scale (--cfg), iMF a range of them (--cfg-range, as the data's options say).
        XCTAssertEqual(data.suffix(2), ["--cfg-range", "1,3"])
        for method in ["meanflow", "imf"] {
            // iMF's grids with guidance inside an interval (its DiT takes the interval as a condition), and with
            // in-context tokens.
            let base = method == "meanflow" ? Array(data.dropLast(2)) + ["--cfg", "2", "--cfg-kappa", "0.25"]
                : data + ["--sample-cfg-interval", "0.2,0.8", "--in-context"]
            let full = dir + "/" + method
            var r = try run(["train"] + base + ["--method", method, "--steps", "4", "--every", "100", "--out", full])
            XCTAssertEqual(r.status, 0, r.err)
            let fullLosses = try losses(full + "/metrics.jsonl")
            XCTAssertEqual(fullLosses.count, 4)
            XCTAssertTrue(fullLosses.allSatisfy { $0.isFinite && $0 > 0 })
            let config = try JSONValue.parse(String(decoding: try AtomicFile.read(path: full + "/config.json"), as: UTF8.self))
            XCTAssertEqual(config["method"]?.string, method)
            for nfe in ["1", "2", "4"] {
                let npy = dir + "/\(method)\(nfe).npy"
                r = try run(["sample", "--device", "cpu", "--checkpoint", full + "/checkpoint.safetensors", "--n", "3", "--nfe", nfe,
                             "--cfg", "3", "--out", dir + "/\(method)\(nfe).png", "--npy", npy])
                XCTAssertEqual(r.status, 0, r.err)
                let samples = try NPYArray.read(path: npy)
                XCTAssertEqual(samples.shape, [3, 1, 8, 8])
                XCTAssertTrue(samples.floats.allSatisfy(\.isFinite))
            }
            let split = dir + "/" + method + "-split"
            r = try run(["train"] + base + ["--method", method, "--steps", "2", "--every", "100", "--out", split])
            XCTAssertEqual(r.status, 0, r.err)
            r = try run(["train"] + base + ["--method", method, "--steps", "4", "--every", "100", "--out", split, "--resume"])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertEqual(try losses(split + "/metrics.jsonl"), fullLosses)
            XCTAssertEqual(try SafetensorsFile.read(path: split + "/checkpoint.safetensors").tensors,
                           try SafetensorsFile.read(path: full + "/checkpoint.safetensors").tensors)
        }
        // MeanFlow's guidance is trained in: another --cfg gives the same samples; iMF's is a condition: it does not.
        for (method, same) in [("meanflow", true), ("imf", false)] {
            let ck = dir + "/" + method + "/checkpoint.safetensors"
            for cfg in ["1.5", "6"] {
                let r = try run(["sample", "--device", "cpu", "--checkpoint", ck, "--n", "3", "--cfg", cfg,
                                 "--out", dir + "/g.png", "--npy", dir + "/\(method)-cfg\(cfg).npy"])
                XCTAssertEqual(r.status, 0, r.err)
            }
            let a = try NPYArray.read(path: dir + "/\(method)-cfg1.5.npy").floats, b = try NPYArray.read(path: dir + "/\(method)-cfg6.npy").floats
            XCTAssertEqual(a == b, same, method)
        }
        // iMF's DiT has the guidance-interval input, which tvm sample --cfg-interval sets (MeanFlow's has none).
        let imf = dir + "/imf/checkpoint.safetensors"
        XCTAssertTrue(try TrainingCheckpoint.read(path: imf).model.guidanceInterval)
        XCTAssertTrue(try TrainingCheckpoint.read(path: imf).model.inContext)
        XCTAssertFalse(try TrainingCheckpoint.read(path: dir + "/meanflow/checkpoint.safetensors").model.guidanceInterval)
        let r = try run(["sample", "--device", "cpu", "--checkpoint", imf, "--n", "3", "--cfg", "6", "--cfg-interval", "0.3,0.7",
                         "--out", dir + "/g.png", "--npy", dir + "/imf-interval.npy"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertNotEqual(try NPYArray.read(path: dir + "/imf-interval.npy").floats, try NPYArray.read(path: dir + "/imf-cfg6.npy").floats)
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", dir + "/meanflow/checkpoint.safetensors", "--cfg-interval", "0.3,0.7",
                              "--out", dir + "/g.png"], contains: "--cfg-interval")
    }

    /// --time-sampler reaches each method's draw: other parameters give other gradients from the same seed (the
    /// first loss does not move: the DiT's zero output layer makes it independent of the times), and the checkpoint
    /// records the draw (the defaults too).
    func testTimeSamplerReachesEachMethod() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeData(dir)
        let cases = [("tvm", "0.5,0.5,0.5,0.5", "-0.4,1.0,-0.8,1.0", "0.5,0.5,0.5,0.5"),
                     ("meanflow", "0.5,0.5,0.25", "-0.4,1.0,0.75", "0.5,0.5,0.25"),
                     ("imf", "0.5,0.5", "-0.4,1.0,0.5", "0.5,0.5,0.5"),
                     ("fm", "0.5,0.5", "-0.4,1.0", "0.5,0.5")]
        for (method, option, recordedDefault, recordedOption) in cases {
            let base = method == "meanflow" ? Array(data.dropLast(2)) + ["--cfg", "2"] : data
            var runs: [[Double]] = []
            for (extra, recorded) in [([String](), recordedDefault), (["--time-sampler", option], recordedOption)] {
                let out = dir + "/\(method)\(runs.count)"
                let r = try run(["train"] + base + ["--method", method, "--steps", "2", "--every", "100", "--out", out] + extra)
                XCTAssertEqual(r.status, 0, r.err)
                runs.append(try figures("grad_norm", out + "/metrics.jsonl"))
                let training = try TrainingCheckpoint.read(path: out + "/checkpoint.safetensors").training
                XCTAssertEqual(training["time_sampler"]?.string, recorded, method)
                let options = try JSONValue.parse(String(decoding: try AtomicFile.read(path: out + "/config.json"), as: UTF8.self))
                XCTAssertEqual(options["time-sampler"]?.string, extra.last ?? recordedDefault, method)
            }
            XCTAssertEqual(runs[0].count, 2)
            XCTAssertNotEqual(runs[0], runs[1], method)
        }
    }

    func testSampleWritesGridNPYAndFolder() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir)
        let runDir = dir + "/run"
        var r = try run(["train"] + base + ["--steps", "2", "--out", runDir])
        XCTAssertEqual(r.status, 0, r.err)
        let ckpt = runDir + "/checkpoint.safetensors"
        r = try run(["sample", "--device", "cpu", "--checkpoint", ckpt, "--n", "12", "--nfe", "2", "--cfg", "2",
                         "--classes", "0,2", "--out", dir + "/grid.png", "--npy", dir + "/s.npy", "--folder", dir + "/pngs"])
        XCTAssertEqual(r.status, 0, r.err)
        let png = try Image.readPNG(path: dir + "/grid.png")
        XCTAssertEqual([png.width, png.height, png.channels], [102, 22, 1])
        let npy = try NPYArray.read(path: dir + "/s.npy")
        XCTAssertEqual(npy.shape, [12, 1, 8, 8])
        XCTAssertTrue(npy.floats.allSatisfy(\.isFinite))
        let folders = try FileManager.default.contentsOfDirectory(atPath: dir + "/pngs").sorted()
        XCTAssertEqual(folders, ["0_0", "2_2"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/pngs/0_0").count, 6)

        // The student weights too, deterministic for a seed.
        r = try run(["sample", "--device", "cpu", "--checkpoint", ckpt, "--n", "3", "--weights", "student",
                         "--out", dir + "/g2.png", "--npy", dir + "/t.npy"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try NPYArray.read(path: dir + "/t.npy").shape, [3, 1, 8, 8])

        // Without --cfg, the run's own sampling guidance (--sample-cfg): what its grids used.
        let guided = dir + "/guided"
        r = try run(["train"] + base + ["--steps", "2", "--sample-cfg", "3.5", "--out", guided])
        XCTAssertEqual(r.status, 0, r.err)
        var byCFG: [String: [Float]] = [:]
        for cfg in ["", "3.5", "2"] {
            r = try run(["sample", "--device", "cpu", "--checkpoint", guided + "/checkpoint.safetensors", "--n", "3",
                         "--out", dir + "/g3.png", "--npy", dir + "/cfg.npy"] + (cfg.isEmpty ? [] : ["--cfg", cfg]))
            XCTAssertEqual(r.status, 0, r.err)
            byCFG[cfg] = try NPYArray.read(path: dir + "/cfg.npy").floats
        }
        XCTAssertEqual(byCFG[""], byCFG["3.5"])
        XCTAssertNotEqual(byCFG[""], byCFG["2"])

        // Damaged checkpoints and bad options: one clear line.
        let bytes = try AtomicFile.read(path: ckpt)
        try AtomicFile.write(path: dir + "/trunc.safetensors", bytes: Array(bytes.prefix(bytes.count - 100)))
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", dir + "/trunc.safetensors"], contains: "trunc.safetensors")
        var flipped = bytes
        flipped[bytes.count - 5] ^= 0x10
        try AtomicFile.write(path: dir + "/flip.safetensors", bytes: flipped)
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", dir + "/flip.safetensors"], contains: "CRC")
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", ckpt, "--classes", "3"], contains: "--classes")
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", ckpt, "--weights", "best"], contains: "--weights")
        try assertCleanError(["sample", "--device", "cpu"], contains: "--checkpoint")
    }

    func testExtraEMAsAreSavedAndSampledByName() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir)
        let runDir = dir + "/run", ckpt = dir + "/run/checkpoint.safetensors"
        let r = try run(["train"] + base + ["--steps", "3", "--ema", "power:7,power:32,0.5", "--out", runDir])
        XCTAssertEqual(r.status, 0, r.err)
        let file = try SafetensorsFile.read(path: ckpt)
        XCTAssertEqual(file.metadata("extra_emas"), "power:32,0.5")
        XCTAssertEqual(try JSONValue.parse(file.metadata("training_config") ?? "")["ema"]?.string, "power:7,power:32,0.5")
        // Each set holds its own average: the extra EMAs differ from the evaluation EMA and from each other.
        let name = "final_layer.linear.bias"
        let sets = ["ema.", "ema_power:32.", "ema_0.5.", "student."].map { file[$0 + name]!.floats() }
        XCTAssertEqual(Set(sets.map { $0.map(\.bitPattern) }).count, 4)

        func samples(_ weights: String) throws -> [Float] {
            let npy = dir + "/\(weights.replacingOccurrences(of: ":", with: "_")).npy"
            let r = try run(["sample", "--device", "cpu", "--checkpoint", ckpt, "--n", "3", "--weights", weights,
                             "--out", dir + "/g.png", "--npy", npy])
            XCTAssertEqual(r.status, 0, r.err)
            return try NPYArray.read(path: npy).floats
        }
        // power:32.0 names the same set as power:32; every named set gives its own samples.
        XCTAssertEqual(try samples("ema:power:32.0"), try samples("ema:power:32"))
        XCTAssertEqual(Set([try samples("ema"), try samples("ema:power:32"), try samples("ema:0.5")].map { $0.map(\.bitPattern) }).count, 3)
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", ckpt, "--weights", "ema:power:9"],
                             contains: "keeps power:32, 0.5")
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", ckpt, "--weights", "ema:wide"], contains: "--weights")
        try assertCleanError(["train"] + base + ["--steps", "1", "--ema", "power:7,power:7.0", "--out", dir + "/dup"],
                             contains: "twice")
        try assertCleanError(["train"] + base + ["--steps", "1", "--ema", "power:7,", "--out", dir + "/empty"], contains: "--ema")
    }
}
