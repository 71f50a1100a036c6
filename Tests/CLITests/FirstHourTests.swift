import XCTest
import Foundation
import Formats

/// What a new user met in the first hour (issue 20): data set names against folders, the help texts, bare
/// `tvm train`, files of the wrong kind, the ranges of sampled and loaded images, rates after a resume, and a run
/// stopped by a signal.
final class FirstHourTests: CLITestCase {
    /// A 2-D run of a few milliseconds.
    let tinyToy = ["--steps", "3", "--batch", "16", "--width", "8", "--depth", "1", "--eval-samples", "20", "--nfe", "1"]

    func testADataSetNameWinsOverAFolderOfThatName() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The first run leaves the folder `moons`; the second used to take it for an image folder.
        for _ in 0..<2 {
            let r = try run(["train", "--data", "moons", "--out", "moons"] + tinyToy, in: dir)
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("W2@1"), r.out)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/moons/samples_tvm_nfe1.npy"))
        // ./moons names the folder, which holds no class folders of images.
        let r = try run(["train", "--data", "./moons", "--device", "cpu"], in: dir)
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("no class subfolders"), r.err)
    }

    func testHelpNamesTheFilesAndAlignsItsTable() throws {
        let train = try run(["help", "train"]).out
        XCTAssertTrue(train.contains("DIR/samples_<method>_nfe<N>.npy"), train)
        XCTAssertFalse(train.contains("samples_nfe<N>"), train)

        let usage = try run(["help"]).out
        let table = usage.split(separator: "\n").drop { $0 != "commands:" }.dropFirst().prefix { $0.hasPrefix("  ") }
        XCTAssertEqual(table.count, HelpAndVersionTests.names.count + 1, usage)  // and `help` itself
        // Every summary starts in the same column, past the longest name.
        let columns = Set(table.map { line in line.dropFirst(2).drop { $0 != " " }.prefix { $0 == " " }.count
                                               + line.dropFirst(2).prefix { $0 != " " }.count })
        XCTAssertEqual(columns.count, 1, usage)
    }

    func testBareTrainPrintsItsUsageAndStartsNothing() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["train"], in: dir)
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.out, try run(["help", "train"]).out)
        XCTAssertEqual(r.err, "")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "no run folder")
    }

    func testATextFileIsNotASafetensorsFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = dir + "/notes.txt"
        try String(repeating: "these are notes, not weights\n", count: 20).write(toFile: text, atomically: true, encoding: .utf8)
        try assertCleanError(["sample", "--checkpoint", text, "--device", "cpu"], contains: "not a safetensors file")
    }

    func testFloatImagesInZeroOneAreRefusedWithTheFix() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var args = try makeData(dir)
        // torchvision's ToTensor convention: every value in [0, 1].
        try NPYArray.write(path: dir + "/unit.npy", shape: [12, 8, 8], floats: (0..<(12 * 64)).map { Float(($0 * 37) % 255) / 255 })
        args[args.firstIndex(of: dir + "/x.npy")!] = dir + "/unit.npy"
        try assertCleanError(["train"] + args + ["--steps", "1", "--out", dir + "/run"], contains: "x * 2 - 1")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/checkpoint.safetensors"))
    }

    func testFlowMatchingIsLabelledAndSampledValuesAreKeptAsSampled() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let train = try run(["train"] + (try makeData(dir)) + ["--method", "fm", "--steps", "2", "--out", dir + "/run"])
        XCTAssertEqual(train.status, 0, train.err)
        XCTAssertTrue(train.err.contains("Flow matching on "), train.err)
        XCTAssertTrue(train.err.split(separator: "\n").contains { $0.hasPrefix("Flow matching ") && $0.contains("step 2/2") }, train.err)
        XCTAssertFalse(train.err.contains("TVM"), train.err)

        let sample = try run(["sample", "--checkpoint", dir + "/run/checkpoint.safetensors", "--n", "30", "--nfe", "1",
                              "--out", dir + "/grid.png", "--npy", dir + "/s.npy", "--device", "cpu"])
        XCTAssertEqual(sample.status, 0, sample.err)
        let values = try NPYArray.read(path: dir + "/s.npy").floats
        XCTAssertEqual(values.count, 30 * 64)
        // An untrained network's outputs overshoot [-1, 1]: the NPY keeps them (the sampler's own values, as the
        // help says), the grid clips them to black and white.
        XCTAssertTrue(values.contains { abs($0) > 1 })
        XCTAssertTrue(values.allSatisfy { $0.isFinite })
        let help = try run(["help", "sample"]).out
        XCTAssertTrue(help.contains("not clamped"), help)
    }

    func testRateAfterAResumeCountsOnlyThisInvocation() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let args = ["train"] + (try makeData(dir)) + ["--out", dir + "/run", "--every", "1000"]
        XCTAssertEqual(try run(args + ["--steps", "40"]).status, 0)
        let r = try run(args + ["--steps", "43", "--resume"])
        XCTAssertEqual(r.status, 0, r.err)
        // The bar's last line against the log's own rate (steps of this invocation over its seconds).
        let bar = try XCTUnwrap(r.err.split(separator: "\n").last { $0.contains("step 43/43") })
        let words = bar.split(separator: " ")
        let barRate = try XCTUnwrap(Double(words[try XCTUnwrap(words.firstIndex(of: "it/s")) - 1]))
        let lines = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let logRate = try XCTUnwrap(JSONValue.parse(String(lines.last!))["it/s"]?.double)
        // Counting the 40 earlier steps as run now would show about 14 times the rate.
        XCTAssertLessThan(barRate, 3 * logRate, bar.description)
        XCTAssertGreaterThan(barRate, logRate / 3, bar.description)
    }

    func testASignalEndsTheStepSavesTheCheckpointAndSaysSo() throws {
        for (signal, status, name) in [(SIGTERM, Int32(143), "SIGTERM"), (SIGINT, Int32(130), "SIGINT")] {
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["train"] + (try makeData(dir)) + ["--steps", "1000000", "--every", "1000000", "--out", dir + "/run"]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let metrics = dir + "/run/metrics.jsonl"
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline, ((try? String(contentsOfFile: metrics, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 3 {
                usleep(20_000)
            }
            kill(p.processIdentifier, signal)
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .exit, text)
            XCTAssertEqual(p.terminationStatus, status, text)
            let steps = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
            let last = try XCTUnwrap(JSONValue.parse(String(steps.last!))["step"]?.int)
            XCTAssertEqual(try SafetensorsFile.read(path: dir + "/run/checkpoint.safetensors").metadata("step"), "\(last)")
            XCTAssertTrue(text.hasSuffix("stopped by \(name) after step \(last), checkpoint saved: add --resume to continue\n"), text)
            let resumed = try run(["train"] + (try makeData(dir)) + ["--steps", "\(last + 2)", "--out", dir + "/run", "--resume"])
            XCTAssertEqual(resumed.status, 0, resumed.err)
        }
    }

    func testDemoChecksItsFolderBeforeTraining() throws {
        // /proc exists but takes no new files, even for root.
        let started = Date()
        try assertCleanError(["demo", "--out", "/proc"], contains: "/proc")
        XCTAssertLessThan(Date().timeIntervalSince(started), 30, "refused before training")
    }
}
