import XCTest
@testable import TensorCore

/// `gradients(of:wrt:ready:)`: each gradient is handed over once, as soon as it is final, which is what lets
/// data-parallel training average the last layers' gradients while backward still computes the first ones'.
final class GradientReadyTests: XCTestCase {
    func testEachGradientIsHandedOverOnceAsSoonAsItIsFinal() {
        var rng = RandomGenerator(seed: 5)
        let x = Tensor.randomNormal([4, 3], rng: &rng, on: .cpu)
        let w1 = Tensor.randomNormal([5, 3], rng: &rng, on: .cpu).requiringGrad()
        let b1 = Tensor.randomNormal([5], rng: &rng, on: .cpu).requiringGrad()
        let w2 = Tensor.randomNormal([2, 5], rng: &rng, on: .cpu).requiringGrad()
        let b2 = Tensor.randomNormal([2], rng: &rng, on: .cpu).requiringGrad()
        let unused = Tensor.randomNormal([7], rng: &rng, on: .cpu).requiringGrad()
        // A probe between the layers whose backward rule records that backward has reached the first layer.
        var firstLayerReached = false
        func network() -> Tensor {
            let h = (x.matmul(w1, transposeOther: true) + b1).silu()
            let probe = Tensor(storage: h.storage, shape: h.shape)
            _ = record1("probe", [h], probe, jvp: nil) { _, _, g in
                firstLayerReached = true
                return [g[0]]
            }
            return (probe.matmul(w2, transposeOther: true) + b2).square().sum()
        }
        let params = [w1, b1, w2, b2, unused]
        let expected = gradients(of: network(), wrt: params)
        firstLayerReached = false

        var handed: [(index: Int, gradient: Tensor, afterProbe: Bool)] = []
        let returned = gradients(of: network(), wrt: params) { i, g in handed.append((i, g, firstLayerReached)) }

        XCTAssertEqual(handed.map(\.index).sorted(), [0, 1, 2, 3, 4], "every gradient exactly once")
        let when = Dictionary(uniqueKeysWithValues: handed.map { ($0.index, $0.afterProbe) })
        XCTAssertEqual(when[2], false, "w2 is final before backward reaches the first layer")
        XCTAssertEqual(when[3], false, "b2 too")
        XCTAssertEqual(when[0], true, "w1 only after it")
        XCTAssertEqual(when[1], true)
        XCTAssertEqual(handed.last?.index, 4, "a parameter the loss does not use comes last, with zeros")
        for (i, g, _) in handed {
            XCTAssertTrue(g === returned[i], "the handed-over tensor is the one returned")
            XCTAssertEqual(g.floats, expected[i].floats)
        }
        XCTAssertEqual(returned[4].floats, [Float](repeating: 0, count: 7))
    }
}
