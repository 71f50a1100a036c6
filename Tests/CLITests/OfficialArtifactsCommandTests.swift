import XCTest
import Foundation
import Formats
import TVM
import Eval

/// The official files through the commands (issue 18, part 2): `tvm sample` from the official network pickle
/// reproduces the official sampler, `tvm import` writes checkpoints `tvm sample` and `tvm train` read, `tvm train
/// --resume-from` continues an official training state, and `tvm fid --ref` takes published statistics.
final class OfficialArtifactsCommandTests: CLITestCase {
    let pickle = "official/official_snapshot_small.pkl"
    let trainingState = "official/official_training_state_small.pt"

    /// The official sampler's noise as an .npy, its labels as --classes, and its outputs by step count.
    func officialSamples(_ dir: String) throws -> (noise: String, classes: String, outputs: [Int: NamedArray], cfg: String) {
        let path = try ReferenceCheckCommandTests.sharedFixture("official/official_snapshot_small_samples.safetensors")
        let file = try SafetensorsFile.read(path: path)
        let noise = try XCTUnwrap(file["noise"]), labels = try XCTUnwrap(file["labels"])
        try NPYArray.write(path: dir + "/noise.npy", shape: noise.shape, floats: noise.floats())
        let outputs = Dictionary(uniqueKeysWithValues: [1, 2, 4].compactMap { n in file["sample_\(n)step"].map { (n, $0) } })
        XCTAssertEqual(outputs.count, 3)
        return (dir + "/noise.npy", labels.doubles().map { String(Int($0)) }.joined(separator: ","), outputs,
                try XCTUnwrap(file.metadata("cfg_scale")))
    }

    func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        XCTAssertEqual(a.count, b.count)
        var d = 0.0, r = 0.0
        for (x, y) in zip(a, b) { d += Double(x - y) * Double(x - y); r += Double(y) * Double(y) }
        return (d / r).squareRoot()
    }

    func testSampleFromTheOfficialPickleReproducesTheOfficialSampler() throws {
        let pkl = try ReferenceCheckCommandTests.sharedFixture(pickle)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (noise, classes, outputs, cfg) = try officialSamples(dir)
        // The same network imported: the checkpoint samples to the same bytes as the pickle.
        let r = try run(["import", pkl, "--out", dir + "/imported.safetensors"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("hidden 64, depth 2, 4 heads, 8x8x4, 10 classes"), r.err)
        for (steps, reference) in outputs.sorted(by: { $0.key < $1.key }) {
            var produced: [[Float]] = []
            for checkpoint in [pkl, dir + "/imported.safetensors"] {
                let out = dir + "/out\(steps).npy"
                let s = try run(["sample", "--device", "cpu", "--checkpoint", checkpoint, "--noise", noise, "--classes", classes,
                                 "--nfe", "\(steps)", "--cfg", cfg, "--npy", out, "--out", dir + "/grid.png"])
                XCTAssertEqual(s.status, 0, s.err)
                let array = try NPYArray.read(path: out)
                XCTAssertEqual(array.shape, reference.shape)
                produced.append(array.floats)
            }
            let error = relativeError(produced[0], reference.floats())
            print("tvm sample from the official pickle, \(steps) steps: relative error \(error)")
            XCTAssertLessThanOrEqual(error, 1e-4, "\(steps) steps")
            XCTAssertEqual(produced[0], produced[1], "\(steps) steps: pickle and imported checkpoint differ")
        }
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", pkl, "--noise", noise, "--n", "3"], contains: "--noise")
        try NPYArray.write(path: dir + "/nan.npy", shape: [1, 4, 8, 8], floats: [Float](repeating: .nan, count: 256))
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", pkl, "--noise", dir + "/nan.npy"], contains: "non-finite")
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", pkl, "--weights", "ema:power:8"], contains: "no extra EMA")
    }

    func testImportedTrainingStateKeepsEveryPartAndTrainingContinuesFromIt() throws {
        let pt = try ReferenceCheckCommandTests.sharedFixture(trainingState)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/state.safetensors"
        let r = try run(["import", pt, "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let ck = try TrainingCheckpoint.read(path: out, on: .cpu)
        let state = try OfficialTrainingState.read(path: pt, on: .cpu)
        XCTAssertEqual(ck.step, state.optimizerStep)
        XCTAssertEqual(ck.optimizerStep, state.optimizerStep)
        XCTAssertEqual(ck.model, state.config)
        for (part, set) in [(TrainingCheckpoint.Part.student, state.student.parameters), (.teacher, state.teacher.parameters),
                            (.ema, state.ema.parameters), (.adamM, state.adamM), (.adamV, state.adamV)] {
            for name in set.names { XCTAssertEqual(ck[part][name].floats, set[name].floats, "\(part).\(name)") }
        }
        XCTAssertEqual(ck.training["lr"]?.double, state.learningRate)
        // One network of it, as from a pickle: student, teacher and EMA are the file's net; AdamW starts afresh.
        XCTAssertEqual(try run(["import", pt, "--network", "net", "--out", dir + "/net.safetensors"]).status, 0)
        let net = try TrainingCheckpoint.read(path: dir + "/net.safetensors", on: .cpu)
        XCTAssertEqual(net.step, 0)
        for part in [TrainingCheckpoint.Part.student, .teacher, .ema] {
            XCTAssertEqual(net[part]["blocks.1.mlp.fc2.weight"].floats, state.student.parameters["blocks.1.mlp.fc2.weight"].floats)
        }
        XCTAssertTrue(net[.adamV]["blocks.1.mlp.fc2.weight"].floats.allSatisfy { $0 == 0 })

        // Data that fits the model (8x8, 4 channels, 10 classes); two steps on from the file's step.
        let n = 20
        try NPYArray.write(path: dir + "/x.npy", shape: [n, 4, 8, 8], floats: (0..<(n * 256)).map { Float(($0 * 29) % 255) / 127.5 - 1 })
        try NPYArray.write(path: dir + "/y.npy", shape: [n], floats: (0..<n).map { Float($0 % 10) })
        let train = ["train", "--device", "cpu", "--data", dir + "/x.npy", "--labels", dir + "/y.npy", "--batch", "4", "--every", "100"]
        let target = state.optimizerStep + 2
        for (source, run) in [(pt, "from-pt"), (out, "from-import")] {
            let t = try self.run(train + ["--resume-from", source, "--steps", "\(target)", "--out", dir + "/" + run])
            XCTAssertEqual(t.status, 0, t.err)
            XCTAssertTrue(t.err.contains("at step \(state.optimizerStep)"), t.err)
            let after = try TrainingCheckpoint.read(path: dir + "/\(run)/checkpoint.safetensors", on: .cpu)
            XCTAssertEqual(after.step, target)
            XCTAssertEqual(after.optimizerStep, target)
            XCTAssertNotEqual(after[.student]["blocks.0.attn.qkv.weight"].floats, state.student.parameters["blocks.0.attn.qkv.weight"].floats)
        }
        // The same state through the file or its import trains identically.
        let fromFile = try losses(dir + "/from-pt/metrics.jsonl")
        XCTAssertEqual(fromFile.count, 2)
        XCTAssertEqual(fromFile, try losses(dir + "/from-import/metrics.jsonl"))
        // A pickle's network starts at step 0.
        let p = try run(train + ["--resume-from", try ReferenceCheckCommandTests.sharedFixture(pickle), "--steps", "1", "--out", dir + "/from-pkl"])
        XCTAssertEqual(p.status, 0, p.err)
        let fromPickle = try TrainingCheckpoint.read(path: dir + "/from-pkl/checkpoint.safetensors", on: .cpu)
        XCTAssertEqual(fromPickle.step, 1)
        // Student and EMA target started as the one network, and each moved its own way (no shared storage).
        let qkv = "blocks.0.attn.qkv.weight"
        XCTAssertNotEqual(fromPickle[.student][qkv].floats, fromPickle[.teacher][qkv].floats)

        try assertCleanError(train + ["--resume-from", pt, "--hidden", "32", "--out", dir + "/bad"], contains: "--hidden")
        try assertCleanError(train + ["--resume-from", pt, "--no-scaled-param", "--out", dir + "/bad"], contains: "scaled parameterization")
        try assertCleanError(train + ["--resume-from", dir + "/none.pt", "--out", dir + "/bad"], contains: "none.pt")
        try NPYArray.write(path: dir + "/gray.npy", shape: [n, 8, 8], floats: [Float](repeating: 0, count: n * 64))
        try assertCleanError(["train", "--device", "cpu", "--data", dir + "/gray.npy", "--labels", dir + "/y.npy", "--resume-from", pt,
                              "--out", dir + "/bad"], contains: "8x8x4 images of 10 classes")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad/checkpoint.safetensors"))
    }

    func testImportRefusesBadInputWithOneLine() throws {
        let pkl = try ReferenceCheckCommandTests.sharedFixture(pickle)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try assertCleanError(["import", pkl], contains: "--out")
        try assertCleanError(["import", pkl, "--out", dir + "/a.safetensors", "--network", "student"], contains: "--network")
        try assertCleanError(["import", pkl, "--out", dir + "/a.safetensors", "--network", "net"], contains: "no network \"net\"")
        try assertCleanError(["import", dir + "/none.pkl", "--out", dir + "/a.safetensors"], contains: "none.pkl")
        try assertCleanError(["import", pkl, "--out", dir + "/missing/a.safetensors"], contains: "missing")
        try AtomicFile.write(path: dir + "/text.pkl", bytes: Array("hello\n".utf8))
        try assertCleanError(["import", dir + "/text.pkl", "--out", dir + "/a.safetensors"], contains: "text.pkl")
        // The pickle cut short.
        try AtomicFile.write(path: dir + "/cut.pkl", bytes: Array(try AtomicFile.read(path: pkl).prefix(50_000)))
        try assertCleanError(["import", dir + "/cut.pkl", "--out", dir + "/a.safetensors"], contains: "cut.pkl")
        try assertCleanError(["sample", "--device", "cpu", "--checkpoint", dir + "/cut.pkl"], contains: "cut.pkl")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/a.safetensors"))
    }

    func testFIDTakesPublishedStatistics() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try NPYArray.write(path: dir + "/a.npy", shape: [3, 1, 12, 12], floats: (0..<432).map { Float(($0 * 37) % 255) / 127.5 - 1 })
        let fid = ["fid", dir + "/a.npy", "--device", "cpu"]
        try AtomicFile.write(path: dir + "/text.pkl", bytes: Array("hello\n".utf8))
        try assertCleanError(fid + ["--ref", dir + "/text.pkl"], contains: "text.pkl")
        try assertCleanError(fid + ["--ref", dir + "/text.pkl", "--dataset", dir + "/a.npy"], contains: "not both")
        let small = try ZIPWriter(path: dir + "/small.npz")
        try small.add(name: "mu.npy", bytes: NPYArray(shape: [2], doubles: [0, 1]).serialized())
        try small.add(name: "sigma.npy", bytes: NPYArray(shape: [2, 2], doubles: [1, 0, 0, 1]).serialized())
        try small.finish()
        try assertCleanError(fid + ["--ref", dir + "/small.npz"], contains: "2 features")

        let weights = try inceptionWeightsOrSkip()
        // The images' own statistics, published as ADM does: FID 0.
        let first = try run(fid + ["--dataset", dir + "/a.npy", "--weights", weights, "--no-cache", "--save-features", dir + "/f.npy"])
        XCTAssertEqual(first.status, 0, first.err)
        let stats = try FeatureStatistics(features: try NPYArray.read(path: dir + "/f.npy").floats, dimension: 2048)
        let npz = try ZIPWriter(path: dir + "/ref.npz")
        try npz.add(name: "mu.npy", bytes: NPYArray(shape: [2048], doubles: stats.mean).serialized())
        try npz.add(name: "sigma.npy", bytes: NPYArray(shape: [2048, 2048], doubles: stats.covariance).serialized())
        try npz.finish()
        let r = try run(fid + ["--ref", dir + "/ref.npz", "--weights", weights])
        XCTAssertEqual(r.status, 0, r.err)
        let value = try XCTUnwrap(Double(r.out.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("FID ".count)))
        XCTAssertEqual(value, 0, accuracy: 1e-3)
    }
}
