import XCTest
import TensorCore
import NN
import TVM

/// The trainer differentiates the TVM loss in two backward passes (flow-matching term, then the terminal term's
/// JVP graph) to bound peak memory. These tests hold it to the one-graph definition, `terms(...).mean`.
final class TwoPassGradientTests: XCTestCase {
    /// The MLP of the toy problems, its output multiplied by `factor` in row `row` whenever the gap is not zero:
    /// only the student's JVP pass (gap t - s) sees it; the flow-matching and teacher passes (gap 0) do not.
    struct ScaledRowWhenGapNonZero: FlowMapNetwork {
        var base = MLPFlowMap(width: 16, depth: 2)
        var row: Int
        var factor: Float

        func initialParameters(rng: inout RandomGenerator, on device: Device) -> ParameterSet {
            base.initialParameters(rng: &rng, on: device)
        }

        func callAsFunction(_ p: ParameterSet, x: Tensor, t: Tensor, gap: Tensor, cond: Conditioning) -> Tensor {
            let y = base(p, x: x, t: t, gap: gap, cond: cond)
            guard gap.floats.contains(where: { $0 != 0 }) else { return y }
            var f = [Float](repeating: 1, count: x.shape[0])
            f[row] = factor
            return y * Tensor(f, shape: [x.shape[0], 1])
        }
    }

    func inputs(rows B: Int) -> TVMObjective.Inputs {
        var rng = RandomGenerator(seed: 5)
        let t = (0..<B).map { 0.3 + 0.6 * Double($0) / Double(B) }
        let s = t.map { $0 * 0.4 }
        return .init(x0: Tensor.randomNormal([B, 2], rng: &rng), noise: Tensor.randomNormal([B, 2], rng: &rng),
                     t: Tensor(t, shape: [B], dtype: .float32), s: Tensor(s, shape: [B], dtype: .float32),
                     sPrime: Tensor(t.map { $0 * 0.7 }, shape: [B], dtype: .float32), cond: Conditioning())
    }

    func assertMatchesOneGraph(_ net: some FlowMapNetwork, _ b: TVMObjective.Inputs, objective: TVMObjective = TVMObjective(),
                               file: StaticString = #filePath, line: UInt = #line) -> TVMObjective.Terms {
        var rng = RandomGenerator(seed: 9)
        let student = net.initialParameters(rng: &rng, on: .default)
        let teacher = student.copy()
        for name in teacher.names { teacher[name] = teacher[name] * 0.9 }
        let one = student.leaves()
        let reference = objective.terms(network: net, student: one, teacher: teacher, b)
        let expected = gradients(of: reference.mean, wrt: one.all)
        let two = student.leaves()
        let (terms, got) = objective.termsAndGradients(network: net, student: two, teacher: teacher, b, wrt: two.all)
        XCTAssertEqual(terms.loss.floats, reference.loss.floats, file: file, line: line)
        XCTAssertEqual(terms.finiteRows.floats, reference.finiteRows.floats, file: file, line: line)
        for (g, e) in zip(got, expected) {
            let ev = e.floats, gv = g.floats
            XCTAssertTrue(gv.allSatisfy(\.isFinite), file: file, line: line)
            let scale = ev.map { abs($0) }.max()!
            let diff = zip(gv, ev).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(diff, 1e-5 * max(scale, 1e-6), file: file, line: line)
        }
        return terms
    }

    func testTwoPassesGiveTheOneGraphGradient() {
        let terms = assertMatchesOneGraph(MLPFlowMap(width: 16, depth: 2), inputs(rows: 8))
        XCTAssertEqual(terms.nanRows, 0)
    }

    /// A row whose terminal term overflows while its flow-matching term is finite is zeroed as a whole: the
    /// flow-matching gradient already taken for it is removed again.
    func testARowZeroedByItsTerminalTermLosesItsFlowMatchingGradient() {
        let terms = assertMatchesOneGraph(ScaledRowWhenGapNonZero(row: 3, factor: 1e25), inputs(rows: 8))
        XCTAssertEqual(terms.nanRows, 1)
        XCTAssertFalse(terms.terminal.floats[3].isFinite)
        XCTAssertTrue(terms.flowMatching.floats[3].isFinite)
        XCTAssertEqual(terms.loss.floats[3], 0)
    }

    /// The trainer learns whether rows are excluded from its one read of the step figures, after both backward
    /// passes, and only then takes their flow-matching gradient out: the same step, bit for bit, as
    /// `termsAndGradients` (which reads the count itself) followed by the updates.
    func testTrainerRemovesExcludedRowsAfterItsFiguresRead() throws {
        var config = TrainConfig()
        config.batch = 8
        config.seed = 4
        config.faults.policy = .zeroRows
        let net = ScaledRowWhenGapNonZero(row: 3, factor: 1e25)
        let t = Trainer(network: net, config: config)
        let reference = Trainer(network: net, config: config)
        let x0 = inputs(rows: 8).x0
        var lossRNG = t.rng
        let stats = t.train(x0: x0)
        XCTAssertEqual(stats.nanRows, 1)
        XCTAssertEqual(stats.fault?.action, .zeroedRows)

        let leaves = reference.student.leaves()
        let objective = TVMObjective()
        let b = objective.inputs(x0: x0, cond: Conditioning(), rng: &lossRNG)
        let (terms, grads) = objective.termsAndGradients(network: net, student: leaves, teacher: reference.teacher, b,
                                                         wrt: leaves.all)
        XCTAssertTrue(terms.flowMatching.floats[3].isFinite, "the row is excluded by its terminal term alone")
        // Without the removal the excluded row's flow-matching gradient would still be in the update.
        let again = reference.student.leaves()
        let (_, kept) = objective.termsAndGradientsKeepingExcludedRows(network: net, student: again, teacher: reference.teacher,
                                                                       b, wrt: again.all)
        XCTAssertNotEqual(kept.map(\.floats), grads.map(\.floats))
        XCTAssertEqual(stats.loss, terms.mean.item)
        XCTAssertEqual(stats.gradNorm, globalNorm(grads), accuracy: 1e-5 * globalNorm(grads), "the corrected gradient's norm")
        reference.optimizer.update(reference.student, grads: grads)
        emaUpdate(reference.teacher, toward: reference.student, decay: config.emaTargetDecay)
        emaUpdate(reference.ema, toward: reference.student, decay: config.evalEMA.decay(step: 1))
        for (mine, theirs) in [(t.student, reference.student), (t.teacher, reference.teacher), (t.ema, reference.ema),
                              (t.optimizer.m, reference.optimizer.m), (t.optimizer.v, reference.optimizer.v)] {
            for name in mine.names { XCTAssertEqual(mine[name].floats.map(\.bitPattern), theirs[name].floats.map(\.bitPattern), name) }
        }
    }
}
