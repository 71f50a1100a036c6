import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// The training loop of `tvm train` on images, run in-process on a tiny DiT: snapshot cadence, exact resume with
/// the log trimmed to the checkpoint, the time budget (on a clock the test drives), and the fault policies.
final class TrainingLoopTests: TrainingLoopTestCase {
    func testSnapshotsEveryNStepsAndAfterTheLastStep() throws {
        let dir = directory(), recorder = Recorder()
        let run = try loop(plan(dir, steps: 7, every: 3), recorder)
        XCTAssertTrue(try run.start())
        try run.run()
        XCTAssertEqual(recorder.started, [7])
        XCTAssertEqual(recorder.steps, Array(1...7))
        XCTAssertEqual(try logSteps(dir), Array(1...7))
        XCTAssertEqual(Set(try grids(dir)), Set([3, 6, 7].flatMap { s in [1, 4].map { "samples_step\(s)_nfe\($0).png" } }))
        XCTAssertEqual(try SafetensorsFile.read(path: run.checkpointPath).metadata("step"), "7")
        XCTAssertEqual(recorder.notes.last, "step 7: wrote \(dir)/metrics.jsonl, \(dir)/checkpoint.safetensors and 6 sample grids "
                                            + "(last \(dir)/samples_step7_nfe4.png)")
        // 3 class rows of 10 images of 8x8 with 2-pixel padding.
        let png = try Image.readPNG(path: dir + "/samples_step7_nfe1.png")
        XCTAssertEqual([png.width, png.height, png.channels], [102, 32, 1])

        // A fresh run never overwrites a run's checkpoint.
        XCTAssertThrowsError(try loop(plan(dir, steps: 7, every: 3), Recorder())) { error in
            XCTAssertEqual("\(error)", "\(dir) already holds a training run (\(dir)/checkpoint.safetensors)")
        }
    }

    func testResumeContinuesExactlyAndTrimsTheLogToTheCheckpoint() throws {
        let full = directory(), split = directory()
        let whole = try loop(plan(full, steps: 6, every: 100), Recorder())
        XCTAssertTrue(try whole.start())
        try whole.run()

        var first = plan(split, steps: 3, every: 100)
        first.description = .object([("lr", .number(1e-3))])
        let interrupted = try loop(first, Recorder())
        XCTAssertTrue(try interrupted.start())
        try interrupted.run()
        // A run killed after logging steps 4 and 5 but before its next checkpoint.
        let log = try LineWriter(path: split + "/metrics.jsonl", append: true)
        try log.write(#"{"step":4,"loss":99}"#)
        try log.write(#"{"step":5,"loss":99}"#)

        var second = plan(split, steps: 6, every: 100, resume: true)
        second.description = .object([("lr", .number(2e-3))])
        let recorder = Recorder()
        let resumed = try loop(second, recorder)
        XCTAssertTrue(try resumed.start())
        XCTAssertEqual(try logSteps(split), [1, 2, 3], "the lines past the checkpoint are gone")
        XCTAssertEqual(recorder.notes, ["resumed from \(split)/checkpoint.safetensors at step 3",
                                        "note: training options differ from the checkpoint's: lr 0.001 -> 0.002"])
        try resumed.run()
        XCTAssertEqual(recorder.steps, [4, 5, 6])
        XCTAssertEqual(try losses(split), try losses(full))
        XCTAssertEqual(try SafetensorsFile.read(path: resumed.checkpointPath).tensors,
                       try SafetensorsFile.read(path: whole.checkpointPath).tensors)

        let done = Recorder()
        XCTAssertFalse(try loop(plan(split, steps: 6, every: 100, resume: true), done).start())
        XCTAssertEqual(done.notes.last, "already at step 6 of 6; nothing to do")
        let missing = directory()
        XCTAssertThrowsError(try loop(plan(missing, steps: 6, every: 100, resume: true), Recorder()).start()) { error in
            XCTAssertEqual("\(error)", "no checkpoint at \(missing)/checkpoint.safetensors")
        }
    }

    func testTimeBudgetEndsTheRunWithASnapshot() throws {
        let dir = directory(), recorder = Recorder()
        var budget = plan(dir, steps: nil, every: 2)
        budget.timeBudget = 2.5
        let run = try loop(budget, recorder)
        XCTAssertTrue(try run.start())
        try run.run()
        // One second a step: three steps start within 2.5 s, the fourth would not.
        XCTAssertEqual(recorder.started, [nil])
        XCTAssertEqual(recorder.steps, [1, 2, 3])
        XCTAssertEqual(try logSteps(dir), [1, 2, 3])
        XCTAssertEqual(Set(try grids(dir)), Set([2, 3].flatMap { s in [1, 4].map { "samples_step\(s)_nfe\($0).png" } }))
        XCTAssertEqual(try SafetensorsFile.read(path: run.checkpointPath).metadata("step"), "3")
    }

    func testSkipNotesEveryFaultAndStopEndsTheRunKeepingTheCheckpoint() throws {
        let dir = directory()
        let clean = try loop(plan(dir, steps: 3, every: 100), Recorder())
        XCTAssertTrue(try clean.start())
        try clean.run()
        let saved = try AtomicFile.read(path: clean.checkpointPath)

        // A gradient limit far below any real norm makes every step an exploding gradient.
        var faults = FaultDetection()
        faults.gradientNormLimit = 1e-9
        faults.policy = .stop
        let stopped = try loop(plan(dir, steps: 6, every: 100, resume: true), Recorder(), faults: faults)
        XCTAssertTrue(try stopped.start())
        XCTAssertThrowsError(try stopped.run()) { error in
            guard case let .stoppedByFault(fault, kept)? = error as? TrainingLoopError else { return XCTFail("\(error)") }
            XCTAssertEqual(fault.step, 4)
            XCTAssertEqual(fault.kind, .explodingGradient)
            XCTAssertEqual(kept, "the checkpoint of step 3 in \(dir)/checkpoint.safetensors is intact")
        }
        XCTAssertEqual(try AtomicFile.read(path: clean.checkpointPath), saved)
        XCTAssertEqual(try logSteps(dir), [1, 2, 3, 4])

        faults.policy = .skip
        let recorder = Recorder()
        let skipping = try loop(plan(dir, steps: 6, every: 100, resume: true), recorder, faults: faults)
        XCTAssertTrue(try skipping.start())
        try skipping.run()
        let notes = recorder.notes.filter { $0.contains("exploding gradient") }
        XCTAssertEqual(notes.map { $0.prefix(7) }, ["step 4:", "step 5:", "step 6:"])
        XCTAssertTrue(notes.allSatisfy { $0.hasSuffix("the step was skipped (no weights, optimizer state or EMA changed)") })
        XCTAssertEqual(try logSteps(dir), [1, 2, 3, 4, 5, 6])
        let file = try SafetensorsFile.read(path: skipping.checkpointPath)
        XCTAssertEqual(file.metadata("step"), "6")
        XCTAssertEqual(file.metadata("optimizer_step"), "3", "skipped steps never reach the optimizer")
    }
}
