import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// A run asked to stop (what SIGINT and SIGTERM do in `tvm train`) ends its step, saves its checkpoint and
/// continues exactly on resume; long runs keep the grids of the first and the last few snapshots only.
final class TrainingLoopStopTests: TrainingLoopTestCase {
    func testAStopRequestSavesTheCheckpointOfTheLastStepAndResumesExactly() throws {
        let full = directory(), stopped = directory()
        let whole = try loop(plan(full, steps: 6, every: 100), Recorder())
        XCTAssertTrue(try whole.start())
        try whole.run()
        XCTAssertFalse(whole.interrupted)

        let recorder = Recorder()
        let first = try loop(plan(stopped, steps: 6, every: 100), recorder)
        // Asked before every step: the request arrives during step 4.
        first.stopRequested = { recorder.steps.count >= 4 }
        XCTAssertTrue(try first.start())
        try first.run()
        XCTAssertTrue(first.interrupted)
        XCTAssertEqual(recorder.steps, [1, 2, 3, 4])
        XCTAssertEqual(try SafetensorsFile.read(path: first.checkpointPath).metadata("step"), "4")
        XCTAssertEqual(Set(try grids(stopped)), ["samples_step4_nfe1.png", "samples_step4_nfe4.png"])

        let second = try loop(plan(stopped, steps: 6, every: 100, resume: true), Recorder())
        XCTAssertTrue(try second.start())
        try second.run()
        XCTAssertFalse(second.interrupted)
        XCTAssertEqual(try losses(stopped), try losses(full), "the stopped and resumed run is the uninterrupted one")
    }

    func testOnlyTheFirstAndTheLastGridsAreKeptAcrossAResume() throws {
        let dir = directory()
        var p = plan(dir, steps: 5, every: 1)
        p.keepGrids = 2
        let first = try loop(p, Recorder())
        XCTAssertTrue(try first.start())
        try first.run()
        func steps() throws -> Set<String> {
            Set(try grids(dir).map { String($0.split(separator: "_")[1]) })
        }
        XCTAssertEqual(try steps(), ["step1", "step4", "step5"])
        XCTAssertEqual(try grids(dir).count, 6, "1 and 4 NFE for each kept snapshot")

        p.steps = 8
        p.resume = true
        let second = try loop(p, Recorder())
        XCTAssertTrue(try second.start())
        try second.run()
        XCTAssertEqual(try steps(), ["step1", "step7", "step8"], "the earlier invocation's grids count too")
        // Other files are never touched.
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint.safetensors"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/metrics.jsonl"))
    }
}
