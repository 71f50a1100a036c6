import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// A tiny DiT on 12 random 8x8 images, run directories that are removed afterwards, and a recorder for what the
/// loop tells the user: what the tests of the training loop share.
class TrainingLoopTestCase: XCTestCase {
    let model = DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3)

    /// What the loop told the user, and a clock that moves one second per step.
    final class Recorder: TrainingObserver {
        var notes: [String] = []
        var started: [Int?] = []
        var steps: [Int] = []
        var seconds = 0.0
        func note(_ line: String) { notes.append(line) }
        func starting(at step: Int, steps: Int?, seconds: Double?) { started.append(steps) }
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

    /// A loop over `dataset()` with `config(faults)`, changed by `adjust`.
    func loop(_ plan: TrainingLoop.Plan, _ recorder: Recorder, faults: FaultDetection = FaultDetection(),
              adjust: (inout TrainConfig) -> Void = { _ in }) throws -> TrainingLoop {
        var c = config(faults)
        adjust(&c)
        return try TrainingLoop(model: model, config: c, data: try dataset(), plan: plan, observer: recorder,
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
}
