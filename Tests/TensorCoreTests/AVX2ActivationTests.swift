import XCTest
@testable import TensorCore

/// The AVX2/FMA activation kernels (SiLU and GELU: value, value with tangent, and both backward passes with
/// either cotangent missing) against the same functions in float64, and against the portable float32 loops
/// they replace, on sizes that are not multiples of 8 (the zero-padded last vector) and on ones large enough
/// to be split over the cores (a tail in the last piece).
final class AVX2ActivationTests: XCTestCase {
    var rng = RandomGenerator(seed: 23)
    let sizes = [1, 5, 8, 13, 31, 2 * 16_384 + 11]

    /// f, f', f'' in float64, with the size of the terms each derivative is made of in float32 (its rounding
    /// errors scale with them, not with the derivative, which cancels to near zero in places).
    static func reference(_ op: UnaryOp, _ x: Double) -> (f: Double, d1: Double, d2: Double, d1Scale: Double, d2Scale: Double) {
        if op == .silu {
            let s = 1 / (1 + libmExp(-x))
            return (x * s, s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s)), 1 + abs(x), 2 + abs(x))
        }
        let c = 0.7978845608028654, k = 0.044715
        let u = c * (x + k * x * x * x), du = c * (1 + 3 * k * x * x), d2u = 6 * c * k * x, th = libmTanh(u)
        let sech2 = 1 - th * th
        return (0.5 * x * (1 + th), 0.5 * (1 + th) + 0.5 * x * sech2 * du,
                sech2 * (du + 0.5 * x * (d2u - 2 * th * du * du)),
                1 + 2 * abs(x * du), 4 * (abs(du) + 0.5 * abs(x) * (abs(d2u) + 2 * du * du)))
    }

    /// Inputs spread over the range where the functions bend, with the far tails and zero among them.
    func inputs(_ n: Int) -> [Float] {
        var x = rng.normalFloats(n).map { $0 * 4 }
        for (i, v) in [Float(0), -30, 30, -95, 95].enumerated() where i < n { x[n - 1 - i] = v }
        return x
    }

    /// The kernels' outputs for one size, as float arrays: y, ty, then (gx, gt) for each cotangent case.
    func run(_ op: UnaryOp, x: [Float], t: [Float], gy: [Float], gty: [Float]) -> [String: [Float]] {
        let n = x.count, cpu = CPUBackend.shared
        let tx = Tensor(x, shape: [n]), tt = Tensor(t, shape: [n]), tgy = Tensor(gy, shape: [n]), tgty = Tensor(gty, shape: [n])
        var out: [String: [Float]] = [:]
        let y = Tensor.zeros([n]), ty = Tensor.zeros([n])
        cpu.unary(op, tx.storage, y.storage)
        out["value"] = y.floats
        cpu.activationWithTangent(op, tx.storage, tt.storage, y.storage, ty.storage)
        out["value with tangent"] = y.floats
        out["tangent"] = ty.floats
        for (name, a, b) in [("both", tgy, tgty), ("gy only", tgy, nil), ("gty only", nil, tgty), ("neither", nil, nil)] {
            let gx = Tensor.full(7, shape: [n]), gt = Tensor.full(7, shape: [n])
            cpu.activationWithTangentBackward(op, tx.storage, tt.storage, a?.storage, b?.storage, gx.storage, gt.storage)
            out["gx, \(name)"] = gx.floats
            out["gt, \(name)"] = gt.floats
        }
        let gx = Tensor.zeros([n])
        cpu.activationBackward(op, tx.storage, tgy.storage, gx.storage)
        out["gx of value"] = gx.floats
        return out
    }

    func testMatchFloat64AndThePortableLoopsOnTailsAndSplits() throws {
        try XCTSkipUnless(AVX2.isAvailable, "the processor has no AVX2 and FMA (or TVM_NO_AVX2 is set)")
        defer { CPUBackend.useAVX2 = true }
        for op in [UnaryOp.silu, .gelu] {
            for n in sizes {
                let x = inputs(n), t = rng.normalFloats(n), gy = rng.normalFloats(n), gty = rng.normalFloats(n)
                CPUBackend.useAVX2 = true
                let vector = run(op, x: x, t: t, gy: gy, gty: gty)
                CPUBackend.useAVX2 = false
                let portable = run(op, x: x, t: t, gy: gy, gty: gty)
                // Expected values in float64, and the size of the terms each is made of (errors scale with them).
                var expected: [String: [(value: Double, scale: Double)]] = [:]
                for i in 0..<n {
                    let (f, d1, d2, d1Scale, d2Scale) = Self.reference(op, Double(x[i]))
                    let (xi, ti, gyi, gtyi) = (Double(x[i]), Double(t[i]), Double(gy[i]), Double(gty[i]))
                    let viaGy = (gyi * d1, abs(gyi) * d1Scale), viaGty = (gtyi * d2 * ti, abs(gtyi * ti) * d2Scale)
                    func add(_ key: String, _ v: (Double, Double)) { expected[key, default: []].append((value: v.0, scale: v.1)) }
                    add("value", (f, 1 + abs(xi)))
                    add("value with tangent", (f, 1 + abs(xi)))
                    add("tangent", (d1 * ti, abs(ti) * d1Scale))
                    add("gx, both", (viaGy.0 + viaGty.0, viaGy.1 + viaGty.1))
                    add("gt, both", (gtyi * d1, abs(gtyi) * d1Scale))
                    add("gx, gy only", viaGy)
                    add("gt, gy only", (0, 0))
                    add("gx, gty only", viaGty)
                    add("gt, gty only", (gtyi * d1, abs(gtyi) * d1Scale))
                    add("gx, neither", (0, 0))
                    add("gt, neither", (0, 0))
                    add("gx of value", viaGy)
                }
                XCTAssertEqual(Set(vector.keys), Set(expected.keys))
                for (key, reference) in expected {
                    let v = vector[key]!, p = portable[key]!
                    for i in 0..<n {
                        let bound = 2e-6 * reference[i].scale
                        XCTAssertLessThanOrEqual(abs(Double(v[i]) - reference[i].value), bound,
                                                 "\(op) \(key), n \(n), element \(i) (x = \(x[i])), AVX2")
                        XCTAssertLessThanOrEqual(abs(Double(v[i]) - Double(p[i])), 2 * bound,
                                                 "\(op) \(key), n \(n), element \(i) (x = \(x[i])), AVX2 against portable")
                    }
                }
            }
        }
    }

    func testNonFiniteInputs() throws {
        try XCTSkipUnless(AVX2.isAvailable, "the processor has no AVX2 and FMA (or TVM_NO_AVX2 is set)")
        let x = Tensor([.nan, .infinity, -.infinity, 1000, -1000, 88.5, -88.5, 0, 1], shape: [9])
        for op in [UnaryOp.silu, .gelu] {
            let y = x.unary(op).floats
            XCTAssertTrue(y[0].isNaN, "\(op)(NaN)")
            XCTAssertEqual(y[1], .infinity, "\(op)(+inf)")
            XCTAssertTrue(y[2] == 0 || y[2].isNaN, "\(op)(-inf): 0 (or NaN from -inf * 0, as in the portable loop)")
            XCTAssertEqual(Array(y[3...6]), [1000, 0, 88.5, 0].map { Float($0) }, "\(op) far out")
            XCTAssertEqual(y[7], 0)
        }
    }
}
