// Tests of the Data module (kept in EvalTests, which depends on Data; the floor test uses both).
#if canImport(Glibc)
import Glibc
#endif
import XCTest
import TensorCore
import Eval
import Data

final class Toy2DTests: XCTestCase {

    func moments(_ p: [Float]) -> (mx: Double, my: Double, vx: Double, vy: Double) {
        let n = Double(p.count / 2)
        var sx = 0.0, sy = 0.0, sxx = 0.0, syy = 0.0
        for i in 0..<(p.count / 2) {
            let x = Double(p[2 * i]), y = Double(p[2 * i + 1])
            sx += x; sy += y; sxx += x * x; syy += y * y
        }
        let mx = sx / n, my = sy / n
        return (mx, my, sxx / n - mx * mx, syy / n - my * my)
    }

    func testCheckerboardSupportAndBalance() {
        var rng = RandomGenerator(seed: 1)
        let n = 20000
        let p = Toy2D.checkerboard.sample(n, rng: &rng)
        XCTAssertEqual(p.count, 2 * n)
        var counts = [Int: Int]()
        for k in 0..<n {
            let x = p[2 * k], y = p[2 * k + 1]
            XCTAssertTrue(x >= -2 && x < 2 && y >= -2 && y < 2, "point (\(x), \(y)) outside [-2, 2)²")
            let i = Int(x.rounded(.down)), j = Int(y.rounded(.down))
            XCTAssertEqual((i + j) & 1, 0, "point (\(x), \(y)) lies in an excluded square")
            counts[(i + 2) * 4 + (j + 2), default: 0] += 1
        }
        XCTAssertEqual(counts.count, 8)
        XCTAssertNotNil(counts[0], "square [-2,-1]² must be included")
        for (_, c) in counts {
            XCTAssertGreaterThan(Double(c) / Double(n), 0.10)
            XCTAssertLessThan(Double(c) / Double(n), 0.15)
        }
        let m = moments(p)
        XCTAssertEqual(m.mx, 0, accuracy: 0.03); XCTAssertEqual(m.my, 0, accuracy: 0.03)
        XCTAssertEqual(m.vx, 4.0 / 3, accuracy: 0.04); XCTAssertEqual(m.vy, 4.0 / 3, accuracy: 0.04)
    }

    func testEightGaussians() {
        var rng = RandomGenerator(seed: 2)
        let n = 20000
        let p = Toy2D.eightGaussians.sample(n, rng: &rng)
        var perMode = [Int](repeating: 0, count: 8)
        var sqDev = 0.0
        for k in 0..<n {
            let x = Double(p[2 * k]), y = Double(p[2 * k + 1])
            // Nearest centre on the radius-2 circle; deviations from it are the N(0, 0.1²) noise.
            var m = Int((atan2(y, x) / (Double.pi / 4)).rounded()) % 8
            if m < 0 { m += 8 }
            let cx = 2 * cos(Double(m) * Double.pi / 4), cy = 2 * sin(Double(m) * Double.pi / 4)
            let d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy)
            XCTAssertLessThan(d2.squareRoot(), 0.6, "point more than 6 std from its centre")
            sqDev += d2; perMode[m] += 1
        }
        XCTAssertEqual((sqDev / Double(2 * n)).squareRoot(), 0.1, accuracy: 0.003)
        for c in perMode { XCTAssertEqual(Double(c) / Double(n), 0.125, accuracy: 0.015) }
        let m = moments(p)
        XCTAssertEqual(m.mx, 0, accuracy: 0.04); XCTAssertEqual(m.my, 0, accuracy: 0.04)
        XCTAssertEqual(m.vx, 2.01, accuracy: 0.06); XCTAssertEqual(m.vy, 2.01, accuracy: 0.06)
    }

    func testGaussianGrid25() {
        var rng = RandomGenerator(seed: 3)
        let n = 25000
        let p = Toy2D.gaussianGrid25.sample(n, rng: &rng)
        var perMode = [Int](repeating: 0, count: 25)
        var sqDev = 0.0
        for k in 0..<n {
            let x = Double(p[2 * k]), y = Double(p[2 * k + 1])
            let gx = x.rounded(), gy = y.rounded()
            XCTAssertTrue(abs(gx) <= 2 && abs(gy) <= 2)
            let d2 = (x - gx) * (x - gx) + (y - gy) * (y - gy)
            XCTAssertLessThan(d2.squareRoot(), 0.35, "point more than 7 std from the nearest grid node")
            sqDev += d2; perMode[Int(gx + 2) * 5 + Int(gy + 2)] += 1
        }
        XCTAssertEqual((sqDev / Double(2 * n)).squareRoot(), 0.05, accuracy: 0.002)
        for c in perMode { XCTAssertEqual(Double(c) / Double(n), 0.04, accuracy: 0.008) }
        let m = moments(p)
        XCTAssertEqual(m.mx, 0, accuracy: 0.04); XCTAssertEqual(m.my, 0, accuracy: 0.04)
        XCTAssertEqual(m.vx, 2.0025, accuracy: 0.06); XCTAssertEqual(m.vy, 2.0025, accuracy: 0.06)
    }

    func testTwoMoons() {
        var rng = RandomGenerator(seed: 4)
        let n = 40000
        let p = Toy2D.twoMoons.sample(n, rng: &rng)
        var upper = 0, maxResid = 0.0
        for k in 0..<n {
            let x = Double(p[2 * k]), y = Double(p[2 * k + 1])
            XCTAssertTrue(abs(x) < 2.6 && abs(y) < 1.5, "point (\(x), \(y)) outside the documented box")
            // Undo the centring/scaling; each point must be within noise of one unit half circle.
            let ux = x / 1.5 + 0.5, uy = y / 1.5 + 0.25
            let r0 = abs((ux * ux + uy * uy).squareRoot() - 1)
            let r1 = abs(((ux - 1) * (ux - 1) + (uy - 0.5) * (uy - 0.5)).squareRoot() - 1)
            maxResid = max(maxResid, min(r0, r1))
            if r0 < r1 { upper += 1 }
        }
        XCTAssertLessThan(maxResid, 0.35)
        XCTAssertEqual(Double(upper) / Double(n), 0.5, accuracy: 0.05)
        let m = moments(p)
        XCTAssertEqual(m.mx, 0, accuracy: 0.03); XCTAssertEqual(m.my, 0, accuracy: 0.02)
        XCTAssertEqual(m.vx, 2.25 * 0.7525, accuracy: 0.04)
        XCTAssertEqual(m.vy, 2.25 * (0.625 - 1 / Double.pi - 0.0625 + 0.0025), accuracy: 0.02)
    }

    func testSpirals() {
        var rng = RandomGenerator(seed: 5)
        let n = 40000
        let p = Toy2D.spirals.sample(n, rng: &rng)
        var sr2 = 0.0, maxResid = 0.0
        for k in 0..<n {
            let x = Double(p[2 * k]), y = Double(p[2 * k + 1])
            XCTAssertTrue(abs(x) < 2.7 && abs(y) < 2.7, "point (\(x), \(y)) outside about [-2.5, 2.5]²")
            sr2 += x * x + y * y
            // Distance in radius to the nearest arm r = 0.8 (θ/π) (both arms together: every 0.8
            // along a ray). Far from the centre the noise (std 0.05) dominates this residual.
            let r = (x * x + y * y).squareRoot()
            if r > 0.5 {
                var phase = atan2(y, x) / Double.pi
                if phase < 0 { phase += 1 }   // r ≡ 0.8·phase (mod 0.8) on either arm
                let off = (r - 0.8 * phase).truncatingRemainder(dividingBy: 0.8)
                let dist = min(abs(off), 0.8 - abs(off))
                maxResid = max(maxResid, dist)
            }
        }
        XCTAssertLessThan(maxResid, 0.3, "points must lie near one of the two arms")
        XCTAssertEqual(sr2 / Double(n), 2.885, accuracy: 0.05)
        let m = moments(p)
        XCTAssertEqual(m.mx, 0, accuracy: 0.03); XCTAssertEqual(m.my, 0, accuracy: 0.03)
    }

    func testDeterminism() {
        for d in Toy2D.allCases {
            var r1 = RandomGenerator(seed: 99), r2 = RandomGenerator(seed: 99), r3 = RandomGenerator(seed: 100)
            let a = d.sample(1000, rng: &r1), b = d.sample(1000, rng: &r2), c = d.sample(1000, rng: &r3)
            XCTAssertEqual(a, b, "\(d): same seed must give the same points")
            XCTAssertNotEqual(a, c, "\(d): different seeds must give different points")
            XCTAssertEqual(r1, r2)
            // The generator advances, so a second draw differs from the first.
            XCTAssertNotEqual(d.sample(1000, rng: &r1), a)
            XCTAssertTrue(a.allSatisfy { $0.isFinite })
        }
        var r = RandomGenerator(seed: 1)
        XCTAssertEqual(Toy2D.twoMoons.sample(0, rng: &r), [])
        XCTAssertEqual(Toy2D.twoMoons.sample(-3, rng: &r), [])
    }

    func testNamed() throws {
        for d in Toy2D.allCases { XCTAssertEqual(try Toy2D.named(d.rawValue), d) }
        XCTAssertEqual(try Toy2D.named("two-moons"), .twoMoons)
        XCTAssertEqual(try Toy2D.named("8-gaussians"), .eightGaussians)
        XCTAssertEqual(try Toy2D.named("25_Gaussians"), .gaussianGrid25)
        XCTAssertEqual(try Toy2D.named("Checkerboard"), .checkerboard)
        XCTAssertEqual(try Toy2D.named("2spirals"), .spirals)
        XCTAssertThrowsError(try Toy2D.named("xyz")) { e in
            XCTAssertEqual("\(e)", "unknown distribution 'xyz'; choose one of checkerboard, 8gaussians, 25gaussians, moons, spirals")
        }
    }

    func testCheckerboardFloorAndTiming() throws {
        var rng = RandomGenerator(seed: 2024)
        let f = try Wasserstein.floor(sampler: { n, r in Toy2D.checkerboard.sample(n, rng: &r) }, n: 2000, dim: 2, rng: &rng)
        print("checkerboard W2 floor at n 2000: \(f)")
        XCTAssertGreaterThan(f, 0.07)
        XCTAssertLessThan(f, 0.16)

        let a = Toy2D.checkerboard.sample(2000, rng: &rng), b = Toy2D.checkerboard.sample(2000, rng: &rng)
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        let w = try Wasserstein.w2(a, b, dim: 2)
        clock_gettime(CLOCK_MONOTONIC, &t1)
        let secs = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) * 1e-9
        print("w2 timing: n 2000 checkerboard vs checkerboard: \(secs) s (W2 = \(w))")
        XCTAssertGreaterThan(w, 0.07)
        XCTAssertLessThan(w, 0.16)
        XCTAssertLessThan(secs, 30, "exact W2 for n 2000 took far longer than expected")
    }
}
