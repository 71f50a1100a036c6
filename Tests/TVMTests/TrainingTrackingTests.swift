import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// What a run records besides its checkpoint (config.json, TensorBoard event files), FID while training with the
/// best checkpoint kept (with a stand-in FID, so no Inception weights are needed), and the optimizer's schedule and
/// clipping across a resume.
final class TrainingTrackingTests: TrainingLoopTestCase {
    /// Warm-up, a cosine to zero at step 6, clipping far below the gradient norms, weight decay, other betas and
    /// epsilon: every knob away from its default.
    static func tuned(_ c: inout TrainConfig) {
        c.schedule = LearningRateSchedule(warmup: 2, decay: .cosine(end: 6))
        c.maxGradNorm = 0.05
        c.weightDecay = 0.01
        (c.beta1, c.beta2, c.eps) = (0.8, 0.99, 1e-6)
    }

    func metrics(_ dir: String) throws -> [JSONValue] {
        try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { try JSONValue.parse(String($0)) }
    }

    func eventFiles(_ dir: String) throws -> [String] {
        try FileSystem.list(dir).filter { $0.hasPrefix("events.out.tfevents.") }.sorted().map { dir + "/" + $0 }
    }

    func testScheduleAndClippingResumeBitForBit() throws {
        let full = directory(), split = directory()
        let whole = try loop(plan(full, steps: 6, every: 100), Recorder(), adjust: Self.tuned)
        XCTAssertTrue(try whole.start())
        try whole.run()
        let interrupted = try loop(plan(split, steps: 3, every: 100), Recorder(), adjust: Self.tuned)
        XCTAssertTrue(try interrupted.start())
        try interrupted.run()
        let resumed = try loop(plan(split, steps: 6, every: 100, resume: true), Recorder(), adjust: Self.tuned)
        XCTAssertTrue(try resumed.start())
        try resumed.run()

        func withoutTimings(_ lines: [JSONValue]) -> [JSONValue] {
            lines.map { .object(($0.object ?? []).filter { !["it/s", "elapsed"].contains($0.0) }) }
        }
        XCTAssertEqual(withoutTimings(try metrics(split)), withoutTimings(try metrics(full)), "losses, norms and rates")
        XCTAssertEqual(try losses(split), try losses(full))
        let a = try SafetensorsFile.read(path: resumed.checkpointPath), b = try SafetensorsFile.read(path: whole.checkpointPath)
        XCTAssertEqual(a.tensors, b.tensors, "weights, EMAs and Adam's moments equal bit for bit")
        XCTAssertEqual(a.metadata("optimizer_step"), "6")

        // The logged rates are the schedule's: half of the peak at step 1 of 2 warm-up steps, then the cosine to 0.
        let config = whole.trainer.config
        let rates = try metrics(full).map { try XCTUnwrap($0["lr"]?.double) }
        XCTAssertEqual(rates, (1...6).map { config.learningRate(step: $0) })
        XCTAssertEqual(rates[0], 0.5e-3)
        XCTAssertEqual(rates[1], 1e-3)
        XCTAssertEqual(rates[5], 0)
        // Clipping acted at every step, and it changes the weights.
        XCTAssertTrue(try metrics(full).allSatisfy { try XCTUnwrap($0["grad_norm"]?.double) > 0.05 })
        let unclipped = try loop(plan(directory(), steps: 6, every: 100), Recorder()) {
            Self.tuned(&$0)
            $0.maxGradNorm = nil
        }
        XCTAssertTrue(try unclipped.start())
        try unclipped.run()
        XCTAssertNotEqual(try SafetensorsFile.read(path: unclipped.checkpointPath).tensors, b.tensors)
    }

    func testFIDOnScheduleLoggedAndTheBestCheckpointKeptAcrossAResume() throws {
        let dir = directory()
        // A stand-in FID by step, the 4-NFE figure lower (values exact in binary). Step 4 stays the best: 6 and 7 do not beat it.
        let byStep: [Int: Double] = [2: 30, 4: 20, 5: 25, 6: 22, 7: 21]
        var calls: [[Int]] = []
        func tracking() -> FIDTracking {
            FIDTracking(every: 2, nfes: [1, 4], keepBest: true) { trainer, nfe in
                calls.append([trainer.step, nfe])
                return byStep[trainer.step]! - Double(nfe) / 4
            }
        }
        var first = plan(dir, steps: 5, every: 100)
        first.options = .object([("lr", .number(1e-3)), ("flip", .bool(true))])
        let recorder = Recorder()
        let run = try loop(first, recorder)
        XCTAssertTrue(try run.start())
        XCTAssertEqual(try String(contentsOfFile: run.configPath, encoding: .utf8), "{\n  \"lr\": 0.001,\n  \"flip\": true\n}\n")
        run.fid = tracking()
        try run.run()

        // Every 2 steps and after the last one, at both NFEs.
        XCTAssertEqual(calls, [[2, 1], [2, 4], [4, 1], [4, 4], [5, 1], [5, 4]])
        let fidLines = try metrics(dir).filter { $0["fid_nfe1"] != nil }
        XCTAssertEqual(fidLines.map { $0["step"]?.int }, [2, 4, 5])
        XCTAssertEqual(fidLines.map { $0["fid_nfe4"]?.double }, [29, 19, 24])
        XCTAssertEqual(try logSteps(dir), [1, 2, 2, 3, 4, 4, 5, 5], "one line per step and one per FID measurement")
        XCTAssertTrue(recorder.notes.contains("step 4: FID 19.75 at 1 NFE, 19.0 at 4 NFE, the best so far: wrote \(run.bestCheckpointPath)"))
        XCTAssertTrue(recorder.notes.contains("step 5: FID 24.75 at 1 NFE, 24.0 at 4 NFE (best 19.75 at step 4)"))
        let best = try SafetensorsFile.read(path: run.bestCheckpointPath)
        XCTAssertEqual(best.metadata("step"), "4")
        XCTAssertEqual(best.metadata("best_fid"), #"{"step":4,"nfe":1,"fid":19.75}"#)
        XCTAssertEqual(try TrainingCheckpoint.read(path: run.checkpointPath).bestFID, FIDMeasurement(step: 4, nfe: 1, fid: 19.75))
        let bestBytes = try AtomicFile.read(path: run.bestCheckpointPath)

        // Resumed, the run still knows its best: steps 6 and 7 (21.75, 20.75) do not replace step 4's checkpoint.
        let resumed = try loop(plan(dir, steps: 7, every: 100, resume: true), Recorder())
        XCTAssertTrue(try resumed.start())
        resumed.fid = tracking()
        try resumed.run()
        XCTAssertEqual(calls.suffix(4), [[6, 1], [6, 4], [7, 1], [7, 4]])
        XCTAssertEqual(try AtomicFile.read(path: run.bestCheckpointPath), bestBytes)
        XCTAssertEqual(try TrainingCheckpoint.read(path: resumed.checkpointPath).bestFID?.step, 4)

        // TensorBoard: one file per invocation; the second restarts after step 5, where the first one's checkpoint was.
        let files = try eventFiles(dir)
        XCTAssertEqual(files.count, 2)
        let before = try EventFileReader.events(path: files[0]), after = try EventFileReader.events(path: files[1])
        XCTAssertEqual(before.first, LoggedEvent(step: 0, tag: "", kind: .sessionStart))
        XCTAssertEqual(after.first, LoggedEvent(step: 6, tag: "", kind: .sessionStart))
        XCTAssertEqual(before.filter { $0.tag == "config" }.map(\.kind), [.text("```json\n{\n  \"lr\": 0.001,\n  \"flip\": true\n}\n```")])
        func steps(_ events: [LoggedEvent], _ tag: String) -> [Int] { events.filter { $0.tag == tag }.map(\.step) }
        for tag in ["loss/total", "loss/terminal", "loss/flow_matching", "optimizer/grad_norm", "optimizer/learning_rate",
                    "throughput/images_per_second", "faults/skipped", "faults/nan_rows"] {
            XCTAssertEqual(steps(before, tag), [1, 2, 3, 4, 5], tag)
            XCTAssertEqual(steps(after, tag), [6, 7], tag)
        }
        XCTAssertEqual(before.filter { $0.tag == "fid/nfe4" }.map(\.kind), [29, 19, 24].map { .scalar(Float($0)) })
        XCTAssertEqual(steps(after, "fid/nfe1"), [6, 7])
        // The grids of the last snapshot: 3 class rows of 10 images of 8x8 with 2-pixel padding.
        XCTAssertEqual(before.filter { $0.tag.hasPrefix("samples/") }, [
            LoggedEvent(step: 5, tag: "samples/nfe1", kind: .image(width: 102, height: 32)),
            LoggedEvent(step: 5, tag: "samples/nfe4", kind: .image(width: 102, height: 32)),
        ])
        let losses = try metrics(dir).compactMap { $0["loss"]?.double }
        XCTAssertEqual(before.filter { $0.tag == "loss/total" }.map(\.kind), losses.prefix(5).map { .scalar(Float($0)) })
    }

    func testWithoutKeepBestNoBestFileAndANonFiniteFIDNeverWins() throws {
        let dir = directory()
        let run = try loop(plan(dir, steps: 4, every: 100), Recorder())
        XCTAssertTrue(try run.start())
        run.fid = FIDTracking(every: 1, nfes: [2], keepBest: false) { trainer, _ in [1: .nan, 2: 8, 3: 9, 4: 7][trainer.step]! }
        try run.run()
        XCTAssertFalse(FileSystem.exists(run.bestCheckpointPath))
        XCTAssertEqual(try TrainingCheckpoint.read(path: run.checkpointPath).bestFID, FIDMeasurement(step: 4, nfe: 2, fid: 7))
        XCTAssertEqual(try metrics(dir).filter { $0["fid_nfe2"] != nil }.map { $0["fid_nfe2"]! }, [.null, .number(8), .number(9), .number(7)])
    }
}
