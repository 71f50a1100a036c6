import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// The training loop of `tvm train` on images, run in-process on a tiny DiT: snapshot cadence, exact resume with
/// the log trimmed to the checkpoint, the time budget (on a clock the test drives), and the fault policies.
final class TrainingLoopTests: XCTestCase {
    let model = DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3)

    /// What the loop told the user, and a clock that moves one second per step.
    final class Recorder: TrainingObserver {
        var notes: [String] = []
        var started: [Int?] = []
        var steps: [Int] = []
        var seconds = 0.0
        func note(_ line: String) { notes.append(line) }
        func starting(steps: Int?) { started.append(steps) }
        func stepped(_ stats: StepStats, rate: Double, elapsed: Double) {
            steps.append(stats.step)
            seconds += 1
        }
    }

    var directories: [String] = []

    override func tearDown() {
        for d in directories { try? FileManager.default.removeItem(atPath: d) }
    }

    func directory() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("tvm-loop-\(UUID().uuidString)").path
        directories.append(d)
        return d
    }

    func dataset() throws -> ImageDataset {
        var rng = RandomGenerator(seed: 42)
        let n = 12
        return try ImageDataset(images: rng.uniformFloats(n * 64).map { 2 * $0 - 1 }, labels: (0..<n).map { $0 % 3 },
                                channels: 1, height: 8, width: 8, classes: 3)
    }

    func config(_ faults: FaultDetection = FaultDetection()) -> TrainConfig {
        var c = TrainConfig()
        c.batch = 5
        c.lr = 1e-3
        c.seed = 7
        c.guidance = GuidanceConfig(scale: .uniform(1, 3), labelDropout: 0.1)
        c.faults = faults
        return c
    }

    func plan(_ directory: String, steps: Int?, every: Int, resume: Bool = false) -> TrainingLoop.Plan {
        var p = TrainingLoop.Plan(directory: directory)
        p.steps = steps
        p.snapshotEvery = every
        p.resume = resume
        p.flip = true
        return p
    }

    func loop(_ plan: TrainingLoop.Plan, _ recorder: Recorder, faults: FaultDetection = FaultDetection()) throws -> TrainingLoop {
        try TrainingLoop(model: model, config: config(faults), data: try dataset(), plan: plan, observer: recorder,
                         clock: { recorder.seconds })
    }

    func logSteps(_ dir: String) throws -> [Int] {
        try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONValue.parse(String($0))["step"]?.int)
        }
    }

    func losses(_ dir: String) throws -> [Double] {
        try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONValue.parse(String($0))["loss"]?.double)
        }
    }

    func grids(_ dir: String) throws -> [String] {
        try FileSystem.list(dir).filter { $0.hasPrefix("samples_step") }
    }

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
