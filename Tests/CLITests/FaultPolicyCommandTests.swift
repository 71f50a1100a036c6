import XCTest
import Foundation
import Formats

/// `--on-fault` as a user meets it. A gradient limit far below any real norm makes every step faulty,
/// deterministically: stop ends the run with one line and keeps the checkpoint; skip logs every step and
/// ends with weights, optimizer state and both EMAs exactly as the last clean checkpoint had them.
final class FaultPolicyCommandTests: CLITestCase {
    func tensors(_ path: String) throws -> [NamedArray] { try SafetensorsFile.read(path: path).tensors }

    func logLines(_ path: String) throws -> [JSONValue] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { try JSONValue.parse(String($0)) }
    }

    /// A run of 3 clean steps in `dir`/run: the train arguments (to resume it) and its checkpoint's path.
    func trainThreeSteps(in dir: String) throws -> (train: [String], checkpoint: String) {
        let train = ["train"] + (try makeData(dir)) + ["--out", dir + "/run"]
        let r = try run(train + ["--steps", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        return (train, dir + "/run/checkpoint.safetensors")
    }

    func testStopEndsTheRunWithOneLineAndKeepsTheCheckpoint() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (train, checkpoint) = try trainThreeSteps(in: dir)
        let saved = try AtomicFile.read(path: checkpoint)

        let r = try run(train + ["--steps", "6", "--resume", "--on-fault", "stop", "--grad-limit", "1e-9"])
        XCTAssertEqual(r.status, 1, r.err)
        let errors = r.err.split(separator: "\n").filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, r.err)
        XCTAssertTrue(r.err.hasSuffix((errors.first ?? "") + "\n"), "the error is the last line: \(r.err)")
        let message = String(errors.first ?? "")
        for part in ["error: step 4: exploding gradient: norm", "above the limit 1.0e-9", "terminal-velocity term",
                     "stopping before the step updates anything (--on-fault stop)",
                     "the checkpoint of step 3 in \(checkpoint) is intact"] {
            XCTAssertTrue(message.contains(part), "\(message) should contain \(part)")
        }
        XCTAssertEqual(try AtomicFile.read(path: checkpoint), saved)
        let log = try logLines(dir + "/run/metrics.jsonl")
        XCTAssertEqual(log.map { $0["step"]?.int }, [1, 2, 3, 4])
        XCTAssertEqual(log.last?["skipped"], .bool(true))
        XCTAssertTrue(log.last?["fault"]?.string?.hasPrefix("step 4: exploding gradient") == true)
    }

    func testSkipLogsEveryFaultAndLeavesTheWeightsAndBothEMAsAsTheyWere() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (train, checkpoint) = try trainThreeSteps(in: dir)
        let saved = try tensors(checkpoint)

        let r = try run(train + ["--steps", "6", "--resume", "--on-fault", "skip", "--grad-limit", "1e-9"])
        XCTAssertEqual(r.status, 0, r.err)
        let notes = r.err.split(separator: "\n").filter { $0.contains("exploding gradient") }
        XCTAssertEqual(notes.map { $0.prefix(7) }, ["step 4:", "step 5:", "step 6:"])
        XCTAssertTrue(notes.allSatisfy { $0.hasSuffix("the step was skipped (no weights, optimizer state or EMA changed)") }, r.err)
        let log = try logLines(dir + "/run/metrics.jsonl")
        XCTAssertEqual(log.map { $0["skipped"] }, [nil, nil, nil, .bool(true), .bool(true), .bool(true)])
        XCTAssertEqual(try SafetensorsFile.read(path: checkpoint).metadata("step"), "6")
        // Student, teacher, evaluation EMA and Adam's moments: every tensor, every bit.
        XCTAssertEqual(try tensors(checkpoint), saved)
        XCTAssertEqual(try SafetensorsFile.read(path: checkpoint).metadata("optimizer_step"), "3")
    }

    func testStopOnTwoDimensionalDataEndsWithOneErrorLine() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["train", "--data", "moons", "--steps", "20", "--batch", "64", "--width", "16", "--depth", "2",
                         "--eval-samples", "100", "--on-fault", "stop", "--grad-limit", "1e-9", "--out", dir])
        XCTAssertEqual(r.status, 1, r.err)
        let errors = r.err.split(separator: "\n").filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, r.err)
        let message = String(errors.first ?? "")
        XCTAssertTrue(message.hasPrefix("error: TVM: step 1: exploding gradient: norm "), message)
        XCTAssertTrue(message.hasSuffix(" is above the limit 1.0e-9; stopping before the step updates anything (--on-fault stop)"), message)
        XCTAssertTrue(r.err.hasSuffix((errors.first ?? "") + "\n"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/results.json"), "a stopped run reports no results")
    }
}
