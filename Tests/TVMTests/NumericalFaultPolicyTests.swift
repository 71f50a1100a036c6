import XCTest
import TensorCore
import NN
import TVM
import Data

/// The fault policies (zero-rows, skip, stop) and the detectors (non-finite rows and gradients, loss spikes,
/// exploding gradients): each fault is reported with its step and term, and a rejected step leaves every
/// piece of state bit for bit as it was.
final class NumericalFaultPolicyTests: XCTestCase {
    func trainer(_ policy: FaultPolicy, warmup: Int = 100, method: Method = .tvm,
                 configure: (inout FaultDetection) -> Void = { _ in }) -> Trainer<MLPFlowMap> {
        var config = TrainConfig()
        config.method = method
        config.batch = 8
        config.seed = 2
        config.faults.policy = policy
        config.faults.warmup = warmup
        configure(&config.faults)
        return Trainer(network: MLPFlowMap(width: 16, depth: 2), config: config)
    }

    /// Every value the next step depends on, as bit patterns.
    func state(_ t: Trainer<MLPFlowMap>) -> [[[UInt32]]] {
        [t.student, t.teacher, t.ema, t.optimizer.m, t.optimizer.v].map { $0.all.map { $0.floats.map(\.bitPattern) } }
    }

    func batch(_ rng: inout RandomGenerator, bad value: Float? = nil, scale: Float = 1) -> Tensor {
        var values = Toy2D.twoMoons.sample(8, rng: &rng).map { $0 * scale }
        if let value { values[4] = value }
        return Tensor(values, shape: [8, 2])
    }

    func testSkipPolicyRejectsANaNBatchAndNamesTheDataAsTheSource() {
        let t = trainer(.skip)
        var rng = RandomGenerator(seed: 1)
        XCTAssertNil(t.train(x0: batch(&rng)).fault)
        let before = state(t)
        let stats = t.train(x0: batch(&rng, bad: .nan))
        let fault = try! XCTUnwrap(stats.fault)
        XCTAssertEqual(fault.kind, .nonFiniteLoss)
        XCTAssertEqual(fault.step, 2)
        XCTAssertEqual(fault.term, "terminal-velocity term (1 row) and flow-matching term (1 row)")
        XCTAssertTrue(fault.detail.contains("1 NaN/Inf value in the data batch"), fault.detail)
        XCTAssertEqual(fault.action, .skipped)
        XCTAssertTrue(stats.skipped)
        XCTAssertFalse(stats.stopped)
        XCTAssertEqual(state(t), before)
        XCTAssertEqual(t.optimizer.step, 1)
        XCTAssertEqual(t.step, 2, "the step counter still advances, so a resumed run sees the same steps")
    }

    /// Under skip an overflowing row rejects the step even though its gradient is finite; under zero-rows
    /// the same batch trains on the other rows exactly as the official code does: the loss is the batch
    /// mean with that row zeroed, and AdamW and both EMAs take the gradient of that mean.
    func testZeroRowsTrainsOnTheFiniteRowsAsTheOfficialCodeDoes() throws {
        // 1e30 is finite data, but both terms of its row overflow float32 (the rest of the step stays finite).
        let skipping = trainer(.skip)
        var rng = RandomGenerator(seed: 1)
        let before = state(skipping)
        let rejected = skipping.train(x0: batch(&rng, bad: 1e30))
        XCTAssertEqual(rejected.fault?.action, .skipped)
        XCTAssertTrue(rejected.gradNorm.isFinite)
        XCTAssertEqual(state(skipping), before)

        let t = trainer(.zeroRows)
        let reference = trainer(.zeroRows)
        rng = RandomGenerator(seed: 1)
        let x0 = batch(&rng, bad: 1e30)
        var lossRNG = t.rng
        let stats = t.train(x0: x0)
        let fault = try XCTUnwrap(stats.fault)
        XCTAssertEqual(fault.kind, .nonFiniteLoss)
        XCTAssertEqual(fault.action, .zeroedRows)
        XCTAssertEqual(fault.term, "terminal-velocity term (1 row) and flow-matching term (1 row)")
        XCTAssertTrue(fault.detail.contains("1 of 8 rows"), fault.detail)
        XCTAssertTrue(fault.detail.contains("largest magnitude 1.0e30"), fault.detail)
        XCTAssertFalse(stats.skipped)
        XCTAssertEqual(stats.nanRows, 1)
        XCTAssertEqual(t.optimizer.step, 1)

        // The official step by hand, on a trainer with the same initial values and random stream.
        let leaves = reference.student.leaves()
        let objective = TVMObjective()
        let (terms, grads) = objective.termsAndGradients(network: reference.net, student: leaves, teacher: reference.teacher,
                                                         objective.inputs(x0: x0, cond: Conditioning(), rng: &lossRNG),
                                                         wrt: leaves.all)
        let rows = terms.loss.floats
        XCTAssertEqual(rows[2], 0, "the overflowing row (values[4] is row 2, x)")
        XCTAssertTrue(rows.allSatisfy(\.isFinite))
        XCTAssertEqual(stats.loss, terms.mean.item)
        reference.optimizer.update(reference.student, grads: grads)
        emaUpdate(reference.teacher, toward: reference.student, decay: reference.config.emaTargetDecay)
        emaUpdate(reference.ema, toward: reference.student, decay: reference.config.evalEMA.decay(step: 1))
        XCTAssertEqual(state(t), state(reference))
        XCTAssertNotEqual(state(t), before, "the step trained")
    }

    /// Zeroing rows cannot help when the gradient itself overflows: the step is skipped under zero-rows and
    /// stopped under stop, and the fault names the backward pass rather than a loss term.
    func testNonFiniteGradientIsRejectedUnderEveryPolicy() throws {
        for policy in FaultPolicy.allCases {
            let t = trainer(policy)
            var rng = RandomGenerator(seed: 1)
            let before = state(t)
            let stats = t.train(x0: batch(&rng, bad: 1e14))
            let fault = try XCTUnwrap(stats.fault, "\(policy)")
            XCTAssertEqual(fault.kind, .nonFiniteGradient)
            XCTAssertNil(fault.term)
            XCTAssertTrue(fault.description.hasPrefix("step 1: non-finite gradient: norm inf"), fault.description)
            XCTAssertEqual(fault.action, policy == .stop ? .stopped : .skipped)
            XCTAssertEqual(stats.stopped, policy == .stop)
            XCTAssertTrue(stats.skipped)
            XCTAssertEqual(state(t), before, "\(policy)")
        }
    }

    func testStopPolicyStopsBeforeTheUpdate() throws {
        let t = trainer(.stop)
        var rng = RandomGenerator(seed: 1)
        _ = t.train(x0: batch(&rng))
        let before = state(t)
        let stats = t.train(x0: batch(&rng, bad: -.infinity))
        XCTAssertTrue(stats.stopped)
        XCTAssertEqual(stats.fault?.kind, .nonFiniteLoss)
        XCTAssertEqual(state(t), before)
        XCTAssertEqual(t.optimizer.step, 1)
    }

    /// Methods with one loss term: the fault names "the loss".
    func testMeanFlowNaNIsReportedAsTheLoss() throws {
        let t = trainer(.zeroRows, method: .meanFlow)
        var rng = RandomGenerator(seed: 1)
        let before = state(t)
        let stats = t.train(x0: batch(&rng, bad: .nan))
        let fault = try XCTUnwrap(stats.fault)
        XCTAssertEqual(fault.term, "loss")
        XCTAssertEqual(fault.action, .skipped, "there are no rows to zero")
        XCTAssertEqual(state(t), before)
    }

    /// A batch 1000 times larger than the data after the warm-up: a loss spike, skipped with the state intact.
    func testLossSpikeOnARealBatchIsSkipped() throws {
        let t = trainer(.skip, warmup: 5)
        var rng = RandomGenerator(seed: 1)
        for _ in 0..<5 { XCTAssertNil(t.train(x0: batch(&rng)).fault) }
        let before = state(t)
        let stats = t.train(x0: batch(&rng, scale: 1000))
        let fault = try XCTUnwrap(stats.fault)
        XCTAssertEqual(fault.kind, .lossSpike)
        XCTAssertEqual(fault.step, 6)
        XCTAssertTrue(fault.term == "terminal-velocity term" || fault.term == "flow-matching term", "\(fault)")
        XCTAssertTrue(fault.detail.contains("the median"), fault.detail)
        XCTAssertEqual(state(t), before)
        // The next ordinary batch trains.
        XCTAssertNil(t.train(x0: batch(&rng)).fault)
        XCTAssertNotEqual(state(t), before)
    }

    /// The data checks are made on the host values of the batch, where it is built; a batch made on the device is
    /// read to be measured, with the same figures.
    func testBatchFiguresAreMeasuredOnTheHost() {
        let values: [Float] = [1, -7.5, .nan, .infinity, 3, 0, -.infinity, 2]
        let figures = BatchFigures(rows: 4, values: values)
        XCTAssertEqual(figures.rows, 4)
        XCTAssertEqual(figures.nonFinite, 3)
        XCTAssertEqual(figures.magnitude, 7.5, "the largest finite magnitude")
        XCTAssertEqual(BatchFigures(of: Tensor(values, shape: [4, 2])), figures)
        XCTAssertEqual(BatchFigures(rows: 1, values: [0, -0]).magnitude, 0)
        // Given to the trainer (as the training loop does), they take the place of its read of the batch.
        let t = trainer(.skip)
        var rng = RandomGenerator(seed: 1)
        let clean = batch(&rng)
        let stats = t.train(x0: clean, data: BatchFigures(rows: 8, values: clean.floats))
        XCTAssertNil(stats.fault)
        XCTAssertNotNil(t.student.packed, "the trainer's sets are packed")
        XCTAssertNotNil(t.optimizer.m.packed)
    }

    /// The absolute gradient limit acts from the first step (no warm-up).
    func testGradientLimitRejectsFromTheFirstStep() throws {
        let t = trainer(.skip) { $0.gradientNormLimit = 1e-6 }
        var rng = RandomGenerator(seed: 1)
        let before = state(t)
        let stats = t.train(x0: batch(&rng))
        let fault = try XCTUnwrap(stats.fault)
        XCTAssertEqual(fault.kind, .explodingGradient)
        XCTAssertTrue(fault.detail.contains("above the limit 1.0e-6"), fault.detail)
        XCTAssertEqual(state(t), before)
    }

    func figures(loss: Double? = nil, terminal: Double = 0.2, fm: Double = 0.8, norm: Double = 1) -> StepFigures {
        StepFigures(loss: loss ?? terminal + fm, terminal: terminal, flowMatching: fm, gradNorm: norm, rows: 8,
                    nonFiniteRows: 0, nonFiniteTerminalRows: 0, nonFiniteFlowMatchingRows: 0, nonFiniteData: 0,
                    dataMagnitude: 1)
    }

    /// The relative detectors: quiet during the warm-up, then a loss 10x its median is a spike attributed to
    /// the term that moved, and a median (not a mean) keeps one spike from hiding the next.
    func testSpikeDetectorsUseTheMedianAfterTheWarmup() {
        var d = FaultDetection()
        d.policy = .skip
        d.warmup = 5
        var monitor = FaultMonitor(detection: d)
        XCTAssertNil(monitor.inspect(figures(fm: 100), step: 1), "no verdict during the warm-up")
        for step in 2...6 { XCTAssertNil(monitor.inspect(figures(), step: step)) }
        // Median loss 1.0 (the warm-up spike is outvoted): 11.0 is a spike in the flow-matching term.
        let fm = monitor.inspect(figures(fm: 10.8), step: 7)
        XCTAssertEqual(fm?.kind, .lossSpike)
        XCTAssertEqual(fm?.term, "flow-matching term")
        XCTAssertEqual(fm?.description.hasPrefix("step 7: loss spike in the flow-matching term: loss 11.0 is 11.0x the median 1.0"), true,
                       fm?.description ?? "")
        let terminal = monitor.inspect(figures(terminal: 30), step: 8)
        XCTAssertEqual(terminal?.kind, .lossSpike)
        XCTAssertEqual(terminal?.term, "terminal-velocity term")
        XCTAssertNil(monitor.inspect(figures(loss: 9.9, terminal: 1.1, fm: 8.8), step: 9), "9.9x is below the factor")
        let gradient = monitor.inspect(figures(norm: 25), step: 10)
        XCTAssertEqual(gradient?.kind, .explodingGradient)
        XCTAssertNil(gradient?.term)
        XCTAssertEqual(gradient?.action, .skipped)
        XCTAssertNil(monitor.inspect(figures(norm: 19), step: 11), "19x is below the default factor 20")
        d.lossSpikeFactor = nil
        d.gradientSpikeFactor = nil
        monitor.detection = d
        XCTAssertNil(monitor.inspect(figures(terminal: 1000, norm: 1000), step: 12), "both relative checks off")
    }

    /// The history goes into checkpoints as text and must come back bit for bit, or a resumed run could judge
    /// a step differently from the uninterrupted one.
    func testMonitorStateRoundTripsExactly() throws {
        var d = FaultDetection()
        d.window = 4
        var monitor = FaultMonitor(detection: d)
        for (i, v) in [0.1 + 0.2, 1e-300, 7.123456789012345e22, 0.5, 3].enumerated() {
            _ = monitor.inspect(figures(loss: v, terminal: v / 3, fm: v * 2, norm: v + 1), step: i + 1)
        }
        _ = monitor.inspect(figures(loss: .nan), step: 6)
        XCTAssertEqual(monitor.seen, 5, "non-finite steps are not history")
        let restored = try XCTUnwrap(FaultMonitor(detection: d, state: monitor.state))
        XCTAssertEqual(restored, monitor)
        XCTAssertNil(FaultMonitor(detection: d, state: "seen=1;loss=nan;terminal=;fm=;norm="))
        XCTAssertNil(FaultMonitor(detection: d, state: "garbage"))
    }
}
