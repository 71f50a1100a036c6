import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Formats

/// Image-training checkpoints: an interrupted and resumed run is bit-identical to an uninterrupted one, and
/// damaged or foreign checkpoints are refused with one clear line.
final class TrainingCheckpointTests: XCTestCase {
    let model = DiTConfig(patch: 2, hidden: 32, depth: 1, heads: 2, inputSize: 8, inChannels: 1, numClasses: 3)

    func dataset() throws -> ImageDataset {
        var rng = RandomGenerator(seed: 42)
        let n = 10
        let images = rng.uniformFloats(n * 64).map { 2 * $0 - 1 }
        return try ImageDataset(images: images, labels: (0..<n).map { $0 % 3 }, channels: 1, height: 8, width: 8, classes: 3)
    }

    func trainConfig() -> TrainConfig {
        var c = TrainConfig()
        c.batch = 4
        c.lr = 1e-3
        c.seed = 3
        c.guidance = GuidanceConfig(scale: .uniform(1, 3), labelDropout: 0.2, scaledParameterization: true)
        return c
    }

    func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("tvm-ckpt-\(UUID().uuidString)-\(name)").path
    }

    let training = JSONValue.object([("test", .bool(true))])

    func assertSameValues(_ a: ParameterSet, _ b: ParameterSet, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.names, b.names, what, file: file, line: line)
        for name in a.names where a[name].floats != b[name].floats {
            XCTFail("\(what): \(name) differs", file: file, line: line)
        }
    }

    func testResumedRunMatchesUninterruptedRunExactly() throws {
        let data = try dataset()
        let net = try DiT(model)
        let seed: UInt64 = 99

        let full = Trainer(network: net, config: trainConfig(), on: .cpu)
        var fullSampler = BatchSampler(count: data.count, seed: seed)
        var fullLosses: [Double] = []
        for _ in 0..<6 {
            fullLosses.append(imageTrainingStep(full, data: data, sampler: &fullSampler, flip: true, on: .cpu).loss)
        }

        let first = Trainer(network: net, config: trainConfig(), on: .cpu)
        var sampler = BatchSampler(count: data.count, seed: seed)
        var losses: [Double] = []
        for _ in 0..<3 { losses.append(imageTrainingStep(first, data: data, sampler: &sampler, flip: true, on: .cpu).loss) }
        let path = temporaryPath("resume.safetensors")
        defer { unlink(path) }
        try TrainingCheckpoint(trainer: first, samplerState: sampler.state, training: training).write(path: path)

        // A fresh process: a new trainer (fresh initialisation) and sampler, everything from the file.
        let second = Trainer(network: net, config: trainConfig(), on: .cpu)
        let ck = try TrainingCheckpoint.read(path: path, expecting: model, on: .cpu)
        XCTAssertEqual(ck.step, 3)
        XCTAssertEqual(ck.optimizerStep, 3)
        XCTAssertEqual(ck.training, training)
        try ck.restore(into: second)
        // Restored sets are packed again, so the resumed run's updates stay one pass each.
        for set in [second.student, second.teacher, second.ema, second.optimizer.m, second.optimizer.v] {
            XCTAssertNotNil(set.packed, "a restored set is packed")
        }
        var resumedSampler = try ck.sampler(count: data.count)
        XCTAssertEqual(resumedSampler.state, sampler.state)
        XCTAssertEqual(second.rng, first.rng)
        for _ in 0..<3 {
            losses.append(imageTrainingStep(second, data: data, sampler: &resumedSampler, flip: true, on: .cpu).loss)
        }

        XCTAssertEqual(losses, fullLosses)
        XCTAssertEqual(second.step, 6)
        XCTAssertEqual(second.optimizer.step, 6)
        XCTAssertEqual(second.rng, full.rng)
        XCTAssertEqual(resumedSampler.state, fullSampler.state)
        assertSameValues(second.student, full.student, "student")
        assertSameValues(second.teacher, full.teacher, "teacher")
        assertSameValues(second.ema, full.ema, "ema")
        assertSameValues(second.optimizer.m, full.optimizer.m, "adam m")
        assertSameValues(second.optimizer.v, full.optimizer.v, "adam v")
        XCTAssertEqual(second.faultMonitor, full.faultMonitor, "the fault checks' history")
        XCTAssertEqual(second.faultMonitor.seen, 6)
    }

    /// An extra EMA is exactly the evaluation EMA a run with that schedule would have had, and it is saved and
    /// resumed with the rest; a schedule the checkpoint lacks starts from the student.
    func testExtraEMAsTrackTheirSchedulesAndResume() throws {
        let data = try dataset()
        let net = try DiT(model)
        var config = trainConfig()
        config.evalEMA = .power(gamma: 7, max: 0.9999)
        config.extraEMAs = [.power(gamma: 32, max: 0.9999), .fixed(0.5)]
        var alone = trainConfig()
        alone.evalEMA = .fixed(0.5)

        let withExtras = Trainer(network: net, config: config, on: .cpu)
        let single = Trainer(network: net, config: alone, on: .cpu)
        var samplerA = BatchSampler(count: data.count, seed: 5), samplerB = BatchSampler(count: data.count, seed: 5)
        for _ in 0..<3 {
            _ = imageTrainingStep(withExtras, data: data, sampler: &samplerA, flip: false, on: .cpu)
            _ = imageTrainingStep(single, data: data, sampler: &samplerB, flip: false, on: .cpu)
        }
        assertSameValues(withExtras.extraEMAs[1], single.ema, "the 0.5 extra EMA and a run whose evaluation EMA is 0.5")
        assertSameValues(withExtras.student, single.student, "students (extra EMAs do not change training)")

        let path = temporaryPath("extra.safetensors")
        defer { unlink(path) }
        try TrainingCheckpoint(trainer: withExtras, samplerState: samplerA.state, training: training).write(path: path)
        let ck = try TrainingCheckpoint.read(path: path, on: .cpu)
        XCTAssertEqual(ck.extraEMANames, ["power:32", "0.5"])
        assertSameValues(ck.extraEMAs["power:32"]!, withExtras.extraEMAs[0], "power:32 read back")

        // Resumed by a run that keeps 0.5 (saved) and 0.9 (new): 0.5 continues, 0.9 starts from the student.
        var changed = config
        changed.extraEMAs = [.fixed(0.5), .fixed(0.9)]
        let resumed = Trainer(network: net, config: changed, on: .cpu)
        try ck.restore(into: resumed)
        assertSameValues(resumed.extraEMAs[0], withExtras.extraEMAs[1], "0.5 restored")
        assertSameValues(resumed.extraEMAs[1], withExtras.student, "0.9 from the student")

        XCTAssertThrowsError(try TrainingCheckpoint.read(path: path, extraEMAs: ["power:9"], on: .cpu)) { error in
            XCTAssertTrue("\(error)".contains("keeps power:32, 0.5"), "\(error)")
        }
        let withoutExtras = try TrainingCheckpoint.read(path: path, extraEMAs: [], on: .cpu)
        XCTAssertThrowsError(try withoutExtras.restore(into: Trainer(network: net, config: config, on: .cpu)))
    }

    func testDamagedOrForeignCheckpointsAreRefusedWithOneLine() throws {
        let net = try DiT(model)
        let trainer = Trainer(network: net, config: trainConfig(), on: .cpu)
        let path = temporaryPath("good.safetensors")
        defer { unlink(path) }
        try TrainingCheckpoint(trainer: trainer, samplerState: BatchSampler(count: 10, seed: 1).state, training: training)
            .write(path: path)
        let bytes = try AtomicFile.read(path: path)

        func refusal(_ bytes: [UInt8], expecting: DiTConfig? = nil) -> String {
            let p = temporaryPath("bad.safetensors")
            defer { unlink(p) }
            do {
                try AtomicFile.write(path: p, bytes: bytes)
                _ = try TrainingCheckpoint.read(path: p, expecting: expecting, on: .cpu)
                return "accepted"
            } catch let e as ModelError {
                return e.message
            } catch {
                return "other error \(error)"
            }
        }
        for message in [refusal(Array(bytes.prefix(bytes.count / 2))), refusal(Array(bytes.prefix(5)))] {
            XCTAssertTrue(message.contains("bad.safetensors"), message)
            XCTAssertFalse(message.contains("\n"), message)
            XCTAssertNotEqual(message, "accepted")
        }
        var flipped = bytes
        flipped[bytes.count - 3] ^= 0x40
        let corrupted = refusal(flipped)
        XCTAssertTrue(corrupted.contains("CRC"), corrupted)

        var other = model
        other.hidden = 64
        let mismatch = refusal(bytes, expecting: other)
        XCTAssertTrue(mismatch.contains("hidden 32 vs 64"), mismatch)
        XCTAssertFalse(mismatch.contains("\n"))

        // A plain parameter checkpoint is not a training checkpoint.
        let plain = temporaryPath("plain.safetensors")
        defer { unlink(plain) }
        try Checkpoint.save(trainer.student, path: plain)
        XCTAssertThrowsError(try TrainingCheckpoint.read(path: plain, on: .cpu)) { error in
            XCTAssertTrue("\(error)".contains("not a TerminalVelocity training checkpoint"), "\(error)")
        }
        XCTAssertEqual(refusal(bytes), "accepted")
    }
}
