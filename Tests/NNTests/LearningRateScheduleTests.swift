import XCTest
import Foundation
import NN

final class LearningRateScheduleTests: XCTestCase {
    func testConstantIsExactlyOneSoDefaultRunsKeepTheirRate() {
        let s = LearningRateSchedule.constant
        XCTAssertTrue((0...10_000).allSatisfy { s.factor(step: $0) == 1 })
        XCTAssertEqual(s.decay.description, "constant")
    }

    func testLinearWarmUpThenConstant() {
        let s = LearningRateSchedule(warmup: 4)
        XCTAssertEqual((1...6).map { s.factor(step: $0) }, [0.25, 0.5, 0.75, 1, 1, 1])
    }

    func testCosineFromTheEndOfTheWarmUpToZero() {
        let s = LearningRateSchedule(warmup: 2, decay: .cosine(end: 10))
        XCTAssertEqual(s.factor(step: 1), 0.5)
        XCTAssertEqual(s.factor(step: 2), 1)
        // Halfway from step 2 to step 10: cos(pi / 2) = 0, so half the peak.
        XCTAssertEqual(s.factor(step: 6), 0.5, accuracy: 1e-15)
        XCTAssertEqual(s.factor(step: 4), 0.5 * (1 + cos(Double.pi / 4)), accuracy: 1e-15)
        XCTAssertEqual(s.factor(step: 10), 0)
        XCTAssertEqual(s.factor(step: 11), 0)
        XCTAssertEqual(s.decay.description, "cosine:10")
        // Strictly falling after the warm-up.
        let after = (2...10).map { s.factor(step: $0) }
        XCTAssertEqual(after, after.sorted(by: >))
        XCTAssertEqual(Set(after).count, after.count)
    }

    func testInverseSquareRootAfterTheReferenceStep() {
        let transformer = LearningRateSchedule(warmup: 4, decay: .inverseSquareRoot(reference: 4))
        XCTAssertEqual((1...4).map { transformer.factor(step: $0) }, [0.25, 0.5, 0.75, 1])
        XCTAssertEqual(transformer.factor(step: 16), 0.5)
        XCTAssertEqual(transformer.factor(step: 64), 0.25)
        let edm2 = LearningRateSchedule(decay: .inverseSquareRoot(reference: 100))
        XCTAssertEqual(edm2.factor(step: 1), 1)
        XCTAssertEqual(edm2.factor(step: 100), 1)
        XCTAssertEqual(edm2.factor(step: 400), 0.5)
        XCTAssertEqual(edm2.decay.description, "rsqrt:100")
    }
}
