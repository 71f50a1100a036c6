import XCTest
import Foundation
import TensorCore
import NN
import TVM
import Data
import Eval

/// MeanFlow and improved MeanFlow on a tiny class-conditional DiT in float64: each target against the formulas
/// with the JVP replaced by finite differences, each gradient against finite differences of the regression the
/// objective claims to be (target and adaptive weight frozen), the samplers against steps by hand.
final class MeanFlowTests: XCTestCase {
    let dit = try! DiT(DiTConfig(patch: 2, hidden: 8, depth: 1, heads: 2, inputSize: 4, inChannels: 1, numClasses: 3))
    /// The same DiT with iMF's guidance-interval input.
    let intervalDiT = try! DiT(DiTConfig(patch: 2, hidden: 8, depth: 1, heads: 2, inputSize: 4, inChannels: 1, numClasses: 3,
                                         guidanceInterval: true))

    /// Initial parameters with every tensor randomised (the zero-initialised output layers would make u = 0).
    func parameters(seed: UInt64, dtype: DType = .float64, of net: DiT? = nil) -> ParameterSet {
        var rng = RandomGenerator(seed: seed)
        let p = (net ?? dit).initialParameters(rng: &rng, on: .default)
        return ParameterSet(p.pairs.map { name, t in
            if name == "pos_embed" { return (name, t.cast(dtype).detached()) }
            let v = rng.normalFloats(t.count).map { Double($0) * 0.3 + (name.hasSuffix("_norm.weight") ? 1 : 0) }
            return (name, Tensor(v, shape: t.shape, dtype: dtype))
        })
    }

    /// Four rows: class 0 with r < t; class 2 with r = t; a dropped label (null class) with r < t; class 1 at
    /// t = 0.95 with r < t (outside the MeanFlow test's guidance interval [0, 0.9]).
    func batch(omega: [Double]? = nil) -> MeanFlowBatch {
        var rng = RandomGenerator(seed: 21)
        let B = 4
        let classes: [Double] = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
        return MeanFlowBatch(x0: Tensor.randomNormal([B, 1, 4, 4], rng: &rng, dtype: .float64),
                             noise: Tensor.randomNormal([B, 1, 4, 4], rng: &rng, dtype: .float64),
                             t: Tensor([0.85, 0.7, 0.8, 0.95], shape: [B], dtype: .float64),
                             r: Tensor([0.3, 0.7, 0.2, 0.5], shape: [B], dtype: .float64),
                             classes: Tensor(classes, shape: [B, 3], dtype: .float64),
                             omega: omega.map { Tensor($0, shape: [B], dtype: .float64) })
    }

    func perRow(_ values: [Double]) -> Tensor { Tensor(values, shape: [values.count, 1, 1, 1], dtype: .float64) }
    func perRow(_ v: Tensor) -> Tensor { v.reshaped([v.count, 1, 1, 1]) }

    func u(_ p: ParameterSet, _ z: Tensor, t: Tensor, r: Tensor, classes: Tensor?, beta: Tensor?,
           interval: (start: Tensor, end: Tensor)? = nil) -> Tensor {
        (interval == nil ? dit : intervalDiT)(p, x: z, t: t, gap: t - r, cond: Conditioning(classes: classes, beta: beta, interval: interval))
    }

    /// d/dh u(z + h tz, t + h, r) at h = 0: central differences at h and h/2 combined (Richardson).
    func totalDerivative(_ p: ParameterSet, _ b: MeanFlowBatch, z: Tensor, along tz: Tensor, beta: Tensor?) -> Tensor {
        func at(_ h: Double) -> Tensor { u(p, z + tz * h, t: b.t + h, r: b.r, classes: b.classes, beta: beta, interval: b.interval) }
        func central(_ h: Double) -> Tensor { (at(h) - at(-h)) / (2 * h) }
        let h = 1e-4
        return (central(h / 2) * 4 - central(h)) / 3
    }

    func relErr(_ a: [Double], _ b: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += (x - y) * (x - y); den += y * y }
        return num.squareRoot() / max(den.squareRoot(), 1e-300)
    }

    /// The analytic gradient `grads` at `p` along a random direction against finite differences of `L`.
    func assertDirectionalDerivative(_ grads: [Tensor], at p: ParameterSet, of L: (ParameterSet) -> Double,
                                     file: StaticString = #filePath, line: UInt = #line) {
        var rng = RandomGenerator(seed: 6)
        let d = p.pairs.map { n, v in n == "pos_embed" ? v.zerosLike() : Tensor.randomNormal(v.shape, rng: &rng, dtype: .float64) }
        let analytic = zip(grads, d).reduce(0.0) { $0 + ($1.0 * $1.1).sum().item }
        func shifted(_ e: Double) -> ParameterSet { ParameterSet(zip(p.pairs, d).map { ($0.0, ($0.1 + $1 * e).detached()) }) }
        func central(_ e: Double) -> Double { (L(shifted(e)) - L(shifted(-e))) / (2 * e) }
        let h = 1e-5
        let numeric = (4 * central(h / 2) - central(h)) / 3
        XCTAssertGreaterThan(abs(numeric), 1e-6, "a direction with some slope", file: file, line: line)
        XCTAssertEqual(analytic, numeric, accuracy: 1e-7 * max(1, abs(numeric)), file: file, line: line)
    }

    /// e_i / (e_i + c)^p row by row.
    func assertAdaptivelyWeighted(_ terms: MeanFlowTerms, p: Double, c: Double, file: StaticString = #filePath, line: UInt = #line) {
        for (loss, e) in zip(terms.loss.doubles, terms.error.doubles) {
            XCTAssertEqual(loss, e / Foundation.pow(e + c, p), accuracy: 1e-12 * max(1, e), file: file, line: line)
        }
    }

    // MARK: MeanFlow

    func meanFlow() -> MeanFlowObjective {
        var objective = MeanFlowObjective()
        objective.omega = 1.5
        objective.kappa = 0.3
        objective.guidanceInterval = 0...0.9
        objective.adaptiveWeight = AdaptiveLossWeight(p: 0.75, c: 0.01)
        return objective
    }

    /// u_tgt = v_g - (t - r) du/dt with v_g = omega v + kappa u(c) + (1 - omega - kappa) u(null) on guided rows.
    func testMeanFlowTargetIsTheGuidedIdentityWithTheJVPAsFiniteDifferences() {
        let p = parameters(seed: 3), b = batch()
        let terms = meanFlow().terms(network: dit, params: p, b)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise, v = b.noise - b.x0
        let uClass = u(p, z, t: b.t, r: b.t, classes: b.classes, beta: nil)
        let uNull = u(p, z, t: b.t, r: b.t, classes: b.classes!.zerosLike(), beta: nil)
        // Guided: rows 0 and 1; not the dropped row 2, nor row 3 (t = 0.95 outside [0, 0.9]).
        let m = perRow([1, 1, 0, 0])
        let w = 1 + m * 0.5, k = m * 0.3
        let vg = w * v + k * uClass + (1 - w - k) * uNull
        let dudt = totalDerivative(p, b, z: z, along: vg, beta: nil)
        let expected = vg - perRow(b.t - b.r) * dudt
        XCTAssertLessThan(relErr(terms.target.doubles, expected.doubles), 1e-8)
        XCTAssertLessThan(relErr(terms.u.doubles, u(p, z, t: b.t, r: b.r, classes: b.classes, beta: nil).doubles), 1e-12)
        // The r = t row's target is the guided velocity itself; an unguided row's is built on eps - x0.
        let row1 = Array(terms.target.doubles[16..<32]), vg1 = Array(vg.doubles[16..<32])
        XCTAssertLessThan(relErr(row1, vg1), 1e-12)
        assertAdaptivelyWeighted(terms, p: 0.75, c: 0.01)
        // The effective scale of omega 1, kappa 0.5 is 2, and setGuidance inverts it.
        var o = MeanFlowObjective()
        XCTAssertEqual(o.guidanceScale, 2)
        o.setGuidance(scale: 3, kappa: 0.25)
        XCTAssertEqual(o.omega, 2.25)
        XCTAssertEqual(o.guidanceScale, 3)
    }

    /// The gradient is that of sum_i w_i ||u_theta - u_tgt||^2 with the target and weights held at their values.
    func testMeanFlowGradientIsTheFrozenTargetRegressionByFiniteDifferences() {
        let objective = meanFlow()
        let p = parameters(seed: 4), b = batch()
        let leaves = p.leaves()
        let terms = objective.terms(network: dit, params: leaves, b)
        let grads = gradients(of: terms.mean, wrt: leaves.all)
        let target = terms.target.detached()
        let weights = Tensor(terms.error.doubles.map { 1 / Foundation.pow($0 + 0.01, 0.75) }, shape: [4], dtype: .float64)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise
        assertDirectionalDerivative(grads, at: p) { q in
            let e = (self.u(q, z, t: b.t, r: b.r, classes: b.classes, beta: nil) - target).square().sum(axes: [1, 2, 3])
            return (e * weights).mean().item
        }
    }

    // MARK: improved MeanFlow

    /// V = u + (t - r) du/dt, the JVP along the network's own guided velocity, regresses
    /// v_g = v + (1 - 1/omega)(v(c, omega) - v(null, 1)) (v on the null-class row).
    func testIMFTargetAndCompoundVelocityWithTheJVPAsFiniteDifferences() {
        let omega = [2.0, 3.0, 5.0, 1.5]
        let p = parameters(seed: 5), b = batch(omega: omega)
        let terms = ImprovedMeanFlowObjective().terms(network: dit, params: p, b)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise, v = b.noise - b.x0
        let beta = Tensor(omega.map { 1 / $0 }, shape: [4], dtype: .float64), ones = Tensor.ones([4], dtype: .float64)
        let vClass = u(p, z, t: b.t, r: b.t, classes: b.classes, beta: beta)
        let vNull = u(p, z, t: b.t, r: b.t, classes: b.classes!.zerosLike(), beta: ones)
        let m = perRow([1, 1, 0, 1])
        let vg = v + m * perRow(omega.map { 1 - 1 / $0 }) * (vClass - vNull)
        XCTAssertLessThan(relErr(terms.target.doubles, vg.doubles), 1e-12)
        let tangent = m * vClass + (1 - m) * vNull
        let uu = u(p, z, t: b.t, r: b.r, classes: b.classes, beta: beta)
        let V = uu + perRow(b.t - b.r) * totalDerivative(p, b, z: z, along: tangent, beta: beta)
        let error = (V - vg).square().sum(axes: [1, 2, 3])
        XCTAssertLessThan(relErr(terms.error.doubles, error.doubles), 1e-8)
        assertAdaptivelyWeighted(terms, p: 1, c: 0.01)
    }

    /// The gradient flows through u alone: that of sum_i w_i ||u_theta + (t - r) D - v_g||^2 with D = du/dt,
    /// v_g and the weights held at their values.
    func testIMFGradientIsTheFrozenDerivativeRegressionByFiniteDifferences() {
        let omega = [2.0, 3.0, 5.0, 1.5]
        let p = parameters(seed: 6), b = batch(omega: omega)
        let leaves = p.leaves()
        let terms = ImprovedMeanFlowObjective().terms(network: dit, params: leaves, b)
        let grads = gradients(of: terms.mean, wrt: leaves.all)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise
        let beta = Tensor(omega.map { 1 / $0 }, shape: [4], dtype: .float64), ones = Tensor.ones([4], dtype: .float64)
        let vClass = u(p, z, t: b.t, r: b.t, classes: b.classes, beta: beta)
        let vNull = u(p, z, t: b.t, r: b.t, classes: b.classes!.zerosLike(), beta: ones)
        let m = perRow([1, 1, 0, 1])
        let D = perRow(b.t - b.r) * totalDerivative(p, b, z: z, along: m * vClass + (1 - m) * vNull, beta: beta)
        let target = terms.target.detached()
        let weights = Tensor(terms.error.doubles.map { 1 / ($0 + 0.01) }, shape: [4], dtype: .float64)
        assertDirectionalDerivative(grads, at: p) { q in
            let e = (self.u(q, z, t: b.t, r: b.r, classes: b.classes, beta: beta) + D - target).square().sum(axes: [1, 2, 3])
            return (e * weights).mean().item
        }
    }

    // MARK: improved MeanFlow with the guidance interval

    /// The batch of the iMF tests with omega and a guidance interval per row: row 0 (class, t = 0.85) inside
    /// [0.2, 0.9]; row 1 (r = t) with the whole interval; row 2 the null class; row 3 (class, t = 0.95) outside [0.3, 0.7].
    func intervalBatch() -> MeanFlowBatch {
        var b = batch(omega: [2.0, 3.0, 5.0, 4.0])
        b.interval = (Tensor([0.2, 0, 0.1, 0.3], shape: [4], dtype: .float64), Tensor([0.9, 1, 0.6, 0.7], shape: [4], dtype: .float64))
        return b
    }

    func intervalObjective() -> ImprovedMeanFlowObjective {
        var objective = ImprovedMeanFlowObjective()
        objective.interval = .init()
        return objective
    }

    /// The interval's velocities v_theta, with the whole interval as the official v-head's: (class, omega), (null, 1),
    /// (class, 1); the mask of rows whose guidance acts (a class and t inside the row's interval).
    func intervalVelocities(_ p: ParameterSet, _ b: MeanFlowBatch, z: Tensor) -> (vClass: Tensor, vNull: Tensor, vPlain: Tensor, g: Tensor) {
        let beta = b.omega!.reciprocal(), ones = Tensor.ones([4], dtype: .float64)
        let whole = (Tensor.zeros([4], dtype: .float64), ones)
        return (u(p, z, t: b.t, r: b.t, classes: b.classes, beta: beta, interval: whole),
                u(p, z, t: b.t, r: b.t, classes: b.classes!.zerosLike(), beta: ones, interval: whole),
                u(p, z, t: b.t, r: b.t, classes: b.classes, beta: ones, interval: whole),
                perRow([1, 1, 0, 0]))
    }

    /// With the interval, guidance acts only inside it: v_g = v + g (1 - 1/omega)(v(c, omega) - v(null, 1)), the
    /// tangent v(c, omega) inside and v(c, 1) outside, and u sees omega and the interval as conditions.
    func testIMFWithIntervalTargetTangentAndJVPAsFiniteDifferences() {
        let p = parameters(seed: 11, of: intervalDiT), b = intervalBatch()
        let terms = intervalObjective().terms(network: intervalDiT, params: p, b)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise, v = b.noise - b.x0
        let (vClass, vNull, vPlain, g) = intervalVelocities(p, b, z: z)
        let vg = v + g * perRow(b.omega!.doubles.map { 1 - 1 / $0 }) * (vClass - vNull)
        XCTAssertLessThan(relErr(terms.target.doubles, vg.doubles), 1e-12)
        // Row 3 lies outside its interval: its target is the plain velocity eps - x0, as the null-class row's.
        XCTAssertEqual(Array(terms.target.doubles[48..<64]), Array(v.doubles[48..<64]))
        let m = perRow([1, 1, 0, 1])
        let tangent = m * (g * vClass + (1 - g) * vPlain) + (1 - m) * vNull
        let beta = b.omega!.reciprocal()
        let uu = u(p, z, t: b.t, r: b.r, classes: b.classes, beta: beta, interval: b.interval)
        XCTAssertLessThan(relErr(terms.u.doubles, uu.doubles), 1e-12)
        let V = uu + perRow(b.t - b.r) * totalDerivative(p, b, z: z, along: tangent, beta: beta)
        XCTAssertLessThan(relErr(terms.error.doubles, (V - vg).square().sum(axes: [1, 2, 3]).doubles), 1e-8)
        assertAdaptivelyWeighted(terms, p: 1, c: 0.01)
        // The interval is a condition of u: another interval gives another u.
        var moved = b
        moved.interval = (b.interval!.start * 0.5, b.interval!.end)
        XCTAssertGreaterThan(relErr(intervalObjective().terms(network: intervalDiT, params: p, moved).u.doubles, uu.doubles), 1e-4)
    }

    /// The gradient with the interval is that of the frozen regression too, through u with its interval condition.
    func testIMFWithIntervalGradientIsTheFrozenDerivativeRegressionByFiniteDifferences() {
        let p = parameters(seed: 12, of: intervalDiT), b = intervalBatch()
        let leaves = p.leaves()
        let terms = intervalObjective().terms(network: intervalDiT, params: leaves, b)
        let grads = gradients(of: terms.mean, wrt: leaves.all)
        let tr = perRow(b.t)
        let z = (1 - tr) * b.x0 + tr * b.noise
        let (vClass, vNull, vPlain, g) = intervalVelocities(p, b, z: z)
        let m = perRow([1, 1, 0, 1]), beta = b.omega!.reciprocal()
        let D = perRow(b.t - b.r) * totalDerivative(p, b, z: z, along: m * (g * vClass + (1 - g) * vPlain) + (1 - m) * vNull, beta: beta)
        let target = terms.target.detached()
        let weights = Tensor(terms.error.doubles.map { 1 / ($0 + 0.01) }, shape: [4], dtype: .float64)
        assertDirectionalDerivative(grads, at: p) { q in
            let e = (self.u(q, z, t: b.t, r: b.r, classes: b.classes, beta: beta, interval: b.interval) + D - target)
                .square().sum(axes: [1, 2, 3])
            return (e * weights).mean().item
        }
    }

    /// The official interval draw: start uniform in [0, 0.5], end in [0.5, 1], [0, 1] on the r = t rows; none
    /// without the interval setting or without classes.
    func testIntervalDraw() {
        var rng = RandomGenerator(seed: 13)
        let n = 4000
        let x0 = Tensor.zeros([n, 2]), classes = Tensor.ones([n, 1])
        let b = intervalObjective().batch(x0: x0, cond: Conditioning(classes: classes), rng: &rng)
        let (start, end, t, r) = (b.interval!.start.doubles, b.interval!.end.doubles, b.t.doubles, b.r.doubles)
        for i in 0..<n where t[i] == r[i] { XCTAssertEqual([start[i], end[i]], [0, 1]) }
        let drawn = (0..<n).filter { t[$0] != r[$0] }
        XCTAssertEqual(drawn.count, n / 2)
        XCTAssertTrue(drawn.allSatisfy { start[$0] >= 0 && start[$0] <= 0.5 && end[$0] >= 0.5 && end[$0] <= 1 })
        XCTAssertEqual(drawn.map { start[$0] }.reduce(0, +) / Double(drawn.count), 0.25, accuracy: 0.01)
        XCTAssertEqual(drawn.map { end[$0] }.reduce(0, +) / Double(drawn.count), 0.75, accuracy: 0.01)
        XCTAssertNil(ImprovedMeanFlowObjective().batch(x0: x0, cond: Conditioning(classes: classes), rng: &rng).interval)
        XCTAssertNil(intervalObjective().batch(x0: x0, cond: Conditioning(), rng: &rng).interval)
    }

    /// iMF draws omega log-uniformly in its range, and none without classes; both samplers order t >= r.
    func testTimeAndGuidanceDraws() {
        var rng = RandomGenerator(seed: 8)
        let n = 4000
        let (t, r) = MeanFlowTimeSampler(fractionEqual: 0.75).sample(n, rng: &rng)
        XCTAssertTrue(zip(t, r).allSatisfy { $0 >= $1 && $1 > 0 && $0 < 1 })
        XCTAssertEqual(zip(t, r).prefix(3000).filter { $0 != $1 }.count, 0)
        XCTAssertEqual(zip(t, r).suffix(1000).filter { $0 == $1 }.count, 0)
        // The larger of two logit-normal(-0.4, 1) draws: P(t <= sigmoid(-0.4)) = 1/4.
        XCTAssertEqual(Double(t.filter { $0 <= 1 / (1 + libmExp(0.4)) }.count) / Double(n), 0.25, accuracy: 0.03)

        let x0 = Tensor.zeros([n, 2])
        let classes = Tensor.ones([n, 1])
        let b = ImprovedMeanFlowObjective().batch(x0: x0, cond: Conditioning(classes: classes), rng: &rng)
        let omega = b.omega!.doubles
        XCTAssertTrue(omega.allSatisfy { $0 >= 1 && $0 <= 8 })
        // log(omega) / log(8) is uniform: its mean 1/2.
        XCTAssertEqual(omega.map { Foundation.log($0) / Foundation.log(8.0) }.reduce(0, +) / Double(n), 0.5, accuracy: 0.02)
        XCTAssertEqual(b.t.doubles.enumerated().filter { $0.element == b.r.doubles[$0.offset] }.count, n / 2)
        XCTAssertNil(ImprovedMeanFlowObjective().batch(x0: x0, cond: Conditioning(), rng: &rng).omega)
    }

    // MARK: Sampling

    /// MeanFlow samples with no guidance input whatever w is; iMF with beta = 1 / w; both x <- x - (t - r) u.
    func testSamplersStepWithEachMethodsGuidanceInput() {
        let p = parameters(seed: 9, dtype: .float32)
        var rng = RandomGenerator(seed: 10)
        let noise = Tensor.randomNormal([2, 1, 4, 4], rng: &rng)
        let w = 3.0
        let cond = Conditioning.sampling(labels: [0, 2], classes: 3, guidance: w)
        func F(_ x: Tensor, _ t: Double, _ r: Double, _ c: Conditioning) -> Tensor {
            dit(p, x: x, t: Tensor.full(t, shape: [2]), gap: Tensor.full(t - r, shape: [2]), cond: c)
        }
        func close(_ a: Tensor, _ b: Tensor, file: StaticString = #filePath, line: UInt = #line) {
            for (x, y) in zip(a.doubles, b.doubles) { XCTAssertEqual(x, y, accuracy: 1e-5, file: file, line: line) }
        }
        let classOnly = Conditioning(classes: cond.classes)
        let mf = sampleModel(trainedBy: .meanFlow, network: dit, params: p, noise: noise, steps: 1, cond: cond, guidance: w)
        close(mf, noise - F(noise, 1, 0, classOnly))
        let mf7 = sampleModel(trainedBy: .meanFlow, network: dit, params: p, noise: noise, steps: 1,
                              cond: Conditioning.sampling(labels: [0, 2], classes: 3, guidance: 7), guidance: 7)
        close(mf7, mf)
        let imf = sampleModel(trainedBy: .improvedMeanFlow, network: dit, params: p, noise: noise, steps: 2, cond: cond, guidance: w)
        let half = noise - F(noise, 1, 0.5, cond) * 0.5
        close(imf, half - F(half, 0.5, 0, cond) * 0.5)
        let imf4 = sampleModel(trainedBy: .improvedMeanFlow, network: dit, params: p, noise: noise, steps: 4, cond: cond, guidance: w)
        XCTAssertEqual(imf4.shape, noise.shape)
        XCTAssertTrue(imf4.floats.allSatisfy(\.isFinite))
        // With the interval input, each step passes the chosen interval.
        let q = parameters(seed: 14, dtype: .float32, of: intervalDiT)
        let inside = Conditioning.sampling(labels: [0, 2], classes: 3, guidance: w, interval: 0.4...0.65)
        XCTAssertEqual(inside.interval!.start.floats, [0.4, 0.4])
        XCTAssertEqual(inside.interval!.end.floats, [0.65, 0.65])
        func G(_ x: Tensor, _ t: Double, _ r: Double) -> Tensor {
            intervalDiT(q, x: x, t: Tensor.full(t, shape: [2]), gap: Tensor.full(t - r, shape: [2]), cond: inside)
        }
        let imfInterval = sampleModel(trainedBy: .improvedMeanFlow, network: intervalDiT, params: q, noise: noise, steps: 2,
                                      cond: inside, guidance: w)
        let mid = noise - G(noise, 1, 0.5) * 0.5
        close(imfInterval, mid - G(mid, 0.5, 0) * 0.5)
        let whole = sampleModel(trainedBy: .improvedMeanFlow, network: intervalDiT, params: q, noise: noise, steps: 2, cond: cond, guidance: w)
        XCTAssertNotEqual(whole.floats, imfInterval.floats)
    }

    // MARK: Training

    /// 600 steps on the eight Gaussians bring both methods' 1-NFE samples (evaluation EMA) well toward the data
    /// (measured with the CLI's settings: W2 0.98 untrained, 0.70 MeanFlow and 0.67 iMF, floor 0.42 at n = 500).
    func testBothMethodsLearnTheEightGaussians() throws {
        var evalRNG = RandomGenerator(seed: 30)
        let data = Toy2D.eightGaussians.sample(500, rng: &evalRNG)
        let noise = Tensor.randomNormal([500, 2], rng: &evalRNG)
        for method in [Method.meanFlow, .improvedMeanFlow] {
            var config = TrainConfig()
            config.method = method
            config.batch = 256
            config.lr = 3e-3
            let trainer = Trainer(network: MLPFlowMap(width: 64, depth: 3), config: config)
            let before = try Wasserstein.w2(trainer.sample(noise: noise, steps: 1).floats, data, dim: 2)
            var dataRNG = RandomGenerator(seed: 31)
            for _ in 0..<600 {
                let stats = trainer.train(x0: Tensor(Toy2D.eightGaussians.sample(256, rng: &dataRNG), shape: [256, 2]))
                XCTAssertTrue(stats.loss.isFinite)
            }
            let after = try Wasserstein.w2(trainer.sample(noise: noise, steps: 1).floats, data, dim: 2)
            XCTAssertLessThan(after, 0.8 * before, "\(method.displayName): W2 \(before) -> \(after)")
        }
    }
}
