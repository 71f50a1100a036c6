import XCTest
import Foundation
import Formats
import NN
import TVM
@testable import CLI

/// `tvm train --config` and `--preset`, config.json, the optimizer options, TensorBoard files of both kinds of
/// `train`, and `tvm models`, run as the built binary on tiny CPU runs.
final class RunConfigCommandsTests: CLITestCase {
    func json(_ path: String) throws -> JSONValue { try JSONValue.parse(try AtomicFile.read(path: path)) }

    func eventFiles(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("events.out.tfevents.") }
    }

    func testConfigJSONRepeatsTheRunAndTheCommandLineOverridesIt() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir)
        let first = dir + "/first"
        var r = try run(["train"] + base + ["--steps", "4", "--every", "2", "--lr", "1e-3", "--warmup", "2", "--schedule", "cosine",
                                             "--max-grad-norm", "0.05", "--weight-decay", "0.01", "--betas", "0.8,0.99", "--eps", "1e-6",
                                             "--out", first])
        XCTAssertEqual(r.status, 0, r.err)
        // Every option the run read, defaults included; none of another kind of data (--pad is IDX-only), no --resume.
        let config = try json(first + "/config.json")
        XCTAssertEqual(config["schedule"]?.string, "cosine")
        XCTAssertEqual(config["steps"]?.int, 4)
        XCTAssertEqual(config["flip"]?.bool, true)
        XCTAssertEqual(config["cfg-range"]?.string, "1,3")
        XCTAssertEqual(config["ema-target"]?.double, 0.99)
        XCTAssertEqual(config["model"]?.string, "S/2")
        XCTAssertEqual(config["hidden"]?.int, 32)
        XCTAssertEqual(config["keep-best"]?.bool, false)
        for absent in ["pad", "cfg", "resume", "device", "data-dir"] { XCTAssertNil(config[absent], absent) }
        XCTAssertFalse(try eventFiles(first).isEmpty, "TensorBoard event files in the run folder")
        // The checkpoint records the optimizer with the schedule resolved (cosine to --steps).
        let training = try TrainingCheckpoint.read(path: first + "/checkpoint.safetensors").training
        XCTAssertEqual(training["schedule"]?.string, "cosine:4")
        XCTAssertEqual(training["warmup"]?.int, 2)
        XCTAssertEqual(training["max_grad_norm"]?.double, 0.05)
        XCTAssertEqual(training["weight_decay"]?.double, 0.01)
        XCTAssertEqual(training["eps"]?.double, 1e-6)
        XCTAssertEqual(training["beta1"]?.double, 0.8)

        // The file alone repeats the run bit for bit.
        let again = dir + "/again"
        r = try run(["train", "--device", "cpu", "--config", first + "/config.json", "--out", again])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try losses(again + "/metrics.jsonl"), try losses(first + "/metrics.jsonl"))
        XCTAssertEqual(try SafetensorsFile.read(path: again + "/checkpoint.safetensors").tensors,
                       try SafetensorsFile.read(path: first + "/checkpoint.safetensors").tensors)

        // The command line overrides the file, a switch included.
        let shorter = dir + "/shorter"
        r = try run(["train", "--device", "cpu", "--config", first + "/config.json", "--out", shorter, "--steps", "3", "--flip=false"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try losses(shorter + "/metrics.jsonl").count, 3)
        XCTAssertEqual(try json(shorter + "/config.json")["flip"]?.bool, false)
        // A run folder is not overwritten by repeating its own config; --resume continues it instead.
        try assertCleanError(["train", "--device", "cpu", "--config", first + "/config.json"], contains: "already holds a training run")
        r = try run(["train", "--device", "cpu", "--config", first + "/config.json", "--resume", "--steps", "5", "--schedule", "cosine:4"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try losses(first + "/metrics.jsonl").count, 5)
        XCTAssertEqual(try json(first + "/config.json")["steps"]?.int, 5)
    }

    func testTwoDimensionalTrainingWritesItsConfigAndTensorBoardToo() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let args = ["--data", "moons", "--steps", "5", "--batch", "32", "--width", "16", "--depth", "2", "--eval-samples", "50",
                    "--nfe", "1", "--schedule", "rsqrt:2"]
        var r = try run(["train"] + args + ["--out", dir + "/a"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try json(dir + "/a/config.json")["nfe"]?.string, "1")
        XCTAssertFalse(try eventFiles(dir + "/a").isEmpty)
        let rates = try String(contentsOfFile: dir + "/a/losses.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONValue.parse(String($0))["lr"]?.double)
        }
        XCTAssertEqual(rates, (1...5).map { 2e-3 * (2 / Double(max($0, 2))).squareRoot() })
        r = try run(["train", "--config", dir + "/a/config.json", "--out", dir + "/b"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try losses(dir + "/b/losses.jsonl"), try losses(dir + "/a/losses.jsonl"))
    }

    func testBadConfigFilesAndOptionsGetOneLineNamingTheProblem() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir)
        func file(_ name: String, _ text: String) throws -> String {
            let path = dir + "/" + name
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let out = ["--out", dir + "/run", "--steps", "1"]
        let unknown = try file("unknown.json", #"{"lr": 0.001, "learning-rate": 2}"#)
        try assertCleanError(["train", "--config", unknown] + base + out, contains: "\(unknown): unknown key \"learning-rate\"")
        let pointsKey = try file("points.json", #"{"width": 64}"#)
        try assertCleanError(["train", "--config", pointsKey] + base + out, contains: "\(pointsKey): unknown key \"width\"")
        let switchNumber = try file("switch.json", #"{"flip": 1}"#)
        try assertCleanError(["train", "--config", switchNumber] + base + out, contains: "\"flip\" is a switch: true or false")
        let twice = try file("twice.json", #"{"lr": 0.001, "lr": 0.002}"#)
        try assertCleanError(["train", "--config", twice] + base + out, contains: "the key \"lr\" appears twice")
        let list = try file("list.json", "[1, 2]")
        try assertCleanError(["train", "--config", list] + base + out, contains: "must be one JSON object")
        let broken = try file("broken.json", #"{"lr": "#)
        try assertCleanError(["train", "--config", broken] + base + out, contains: "\(broken): not valid JSON")
        let nested = try file("nested.json", #"{"lr": {"peak": 1}}"#)
        try assertCleanError(["train", "--config", nested] + base + out, contains: "\"lr\" must be a number, a string or a list")
        try assertCleanError(["train", "--config", dir + "/none.json"] + base + out, contains: "no such config file")
        let huge = try file("huge.json", "{\"lr\": 0.001" + String(repeating: " ", count: 1 << 20) + "}")
        try assertCleanError(["train", "--config", huge] + base + out, contains: "too large for a config file")
        try assertCleanError(["train", "--config", list, "--config", list] + base + out, contains: "give --config once")
        try assertCleanError(["train", "--preset", "nope"] + base + out, contains: "unknown preset 'nope'")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run"), "nothing was started")

        try assertCleanError(["train"] + base + ["--out", dir + "/run", "--schedule", "cosine", "--time-budget", "5"],
                             contains: "--schedule cosine needs the step it ends at")
        for (flags, message) in [(["--schedule", "cosine:2", "--warmup", "3"], "must end after the 3 warm-up steps"),
                                 (["--schedule", "rsqrt"], "--schedule rsqrt needs the step its decay starts at"),
                                 (["--schedule", "linear"], "--schedule must be constant, cosine[:END] or rsqrt[:REF]"),
                                 (["--betas", "0.9"], "--betas must be B1,B2"), (["--max-grad-norm", "0"], "--max-grad-norm must be a positive"),
                                 (["--flip=maybe"], "--flip is a switch")] {
            try assertCleanError(["train"] + base + out + flags, contains: message)
        }
    }

    func testPresetsAreOptionsUnderTheFileAndTheCommandLine() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The preset's data, model, batch and --cfg give way to the command line's (its --cfg-range drops --cfg).
        let r = try run(["train", "--preset", "fashion-mnist-390s"] + (try makeData(dir)) + ["--steps", "2", "--out", dir + "/run"])
        XCTAssertEqual(r.status, 0, r.err)
        let config = try json(dir + "/run/config.json")
        XCTAssertEqual(config["ema"]?.string, "power:16,power:64,power:32,power:8,power:4")
        XCTAssertEqual(config["time-budget"]?.double, 390)
        XCTAssertEqual(config["batch"]?.int, 5)
        XCTAssertEqual(config["cfg-range"]?.string, "1,3")
        XCTAssertNil(config["cfg"])
        // Every preset names only options of tvm train on images.
        for preset in trainingPresets {
            for (key, _) in preset.options {
                XCTAssertTrue(imageTrainingOptionNames.options.contains(key) || imageTrainingOptionNames.switches.contains(key),
                              "\(preset.name): \(key)")
            }
        }
    }

    func testModelsListsSizesWithParameterCountsAndThePresets() throws {
        let r = try run(["models"])
        XCTAssertEqual(r.status, 0, r.err)
        for name in DiTConfig.knownNames {
            let line = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix("  \(name) ") }, name)
            for input in ModelsCommand.inputs {
                let config = try DiTConfig.named(name, res: input.res, channels: input.channels, classes: input.classes)
                XCTAssertTrue(line.contains(ModelsCommand.millions(try DiT(config).parameterCount.trainable)), "\(line)")
            }
        }
        XCTAssertTrue(r.out.contains("fashion-mnist-390s: class-conditional TVM on Fashion-MNIST"), r.out)
        XCTAssertEqual(ModelsCommand.millions(675_129_632), "675M")
        XCTAssertEqual(ModelsCommand.millions(32_950_000), "33.0M")
    }
}
