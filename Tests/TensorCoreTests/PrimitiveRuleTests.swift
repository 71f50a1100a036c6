import XCTest
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

/// Every primitive's JVP and VJP rule, and their composition, against finite differences in float64.
final class PrimitiveRuleTests: XCTestCase {
    var gc = GradCheck()

    func testUnaryOps() {
        let x = gc.random([3, 5])
        let positive = x.square() + 0.5
        gc.check("neg", [x]) { -$0[0] }
        gc.check("exp", [x]) { $0[0].exp() }
        gc.check("log", [positive]) { $0[0].log() }
        gc.check("sqrt", [positive]) { $0[0].sqrt() }
        gc.check("rsqrt", [positive]) { $0[0].rsqrt() }
        gc.check("reciprocal", [positive]) { $0[0].reciprocal() }
        gc.check("square", [x]) { $0[0].square() }
        gc.check("sin", [x]) { $0[0].sin() }
        gc.check("cos", [x]) { $0[0].cos() }
        gc.check("tanh", [x]) { $0[0].tanh() }
        gc.check("sigmoid", [x]) { $0[0].sigmoid() }
        gc.check("silu", [x]) { $0[0].silu() }
        gc.check("gelu", [x]) { $0[0].gelu() }
        // The derivative primitives are differentiated too (second order of silu/gelu goes through them).
        gc.check("siluD1", [x]) { $0[0].unary(.siluD1) }
        gc.check("siluD2", [x]) { $0[0].unary(.siluD2) }
        gc.check("geluD1", [x]) { $0[0].unary(.geluD1) }
        gc.check("geluD2", [x]) { $0[0].unary(.geluD2) }
        gc.check("affine", [x]) { $0[0].affine(-1.5, 0.25) }
    }

    func testActivationsMatchDefinitions() {
        let x = gc.random([64])
        let xs = x.doubles
        let gelu = x.gelu().doubles, silu = x.silu().doubles
        for i in 0..<64 {
            let v = xs[i]
            let g = 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
            XCTAssertEqual(gelu[i], g, accuracy: 1e-12)
            XCTAssertEqual(silu[i], v / (1 + exp(-v)), accuracy: 1e-12)
        }
    }

    func testBinaryOpsWithBroadcasting() {
        let a = gc.random([4, 3]), b = gc.random([3]), c = gc.random([4, 1])
        let pos = gc.random([4, 3]).square() + 1
        gc.check("add", [a, b]) { $0[0] + $0[1] }
        gc.check("sub", [c, a]) { $0[0] - $0[1] }
        gc.check("mul", [a, c]) { $0[0] * $0[1] }
        gc.check("div", [a, pos]) { $0[0] / $0[1] }
        gc.check("maximum", [a, b]) { $0[0].maximum($0[1]) }
        gc.check("minimum", [a, c]) { $0[0].minimum($0[1]) }
        gc.check("scalar ops", [a]) { 2 - (3 * $0[0] + 1) / 4 }
        // A tangent on one broadcast operand only: the output's shape.
        let ta = gc.random([4, 1])
        for (name, f) in [("add", { (x: Tensor, y: Tensor) in x + y }), ("sub", { (x: Tensor, y: Tensor) in y - x })] {
            let (_, t) = jvp({ [f($0[0], b)] }, primals: [c], tangents: [ta])
            XCTAssertEqual(t[0].shape, [4, 3], name)
            XCTAssertEqual(t[0].doubles, (name == "add" ? ta : -ta).broadcast(to: [4, 3]).doubles, name)
        }
    }

    func testSelect() {
        let a = gc.random([4, 3]), b = gc.random([4, 3])
        let cond = a.greater(b).detached()
        gc.check("select", [a, b]) { select(cond, $0[0], $0[1]) }
        // A NaN in the branch not taken does not leak into values or gradients.
        let nan = Tensor([Double.nan, 1, 2], shape: [3], dtype: .float64)
        let keep = Tensor([0, 1, 1], shape: [3], dtype: .float64)
        let (v, g) = valueAndGradient([nan]) { select(keep, $0[0], $0[0].zerosLike()).sum() }
        XCTAssertEqual(v.item, 3)
        XCTAssertEqual(g[0].doubles, [0, 1, 1])
    }

    func testReductions() {
        let x = gc.random([3, 4, 5])
        gc.check("sum all", [x]) { $0[0].sum() }
        gc.check("sum axis", [x]) { $0[0].sum(axes: [1]) }
        gc.check("sum axes 0,2 keep", [x]) { $0[0].sum(axes: [0, 2], keepDims: true) }
        gc.check("mean", [x]) { $0[0].mean(axes: [-1]) }
        gc.check("max", [x]) { $0[0].max(axes: [2]) }
        gc.check("max all", [x]) { $0[0].max() }
        gc.check("sum to", [x]) { $0[0].sum(to: [3, 1, 5]) }
    }

    func testShapeOps() {
        let x = gc.random([2, 3, 4]), y = gc.random([2, 2, 4])
        gc.check("reshape", [x]) { $0[0].reshaped([6, 4]) * $0[0].reshaped([6, 4]) }
        gc.check("broadcast", [gc.random([3, 1])]) { $0[0].broadcast(to: [2, 3, 4]).square() }
        gc.check("permute", [x]) { $0[0].permuted([2, 0, 1]).square() }
        gc.check("transpose", [x]) { $0[0].transposed.exp() }
        gc.check("slice", [x]) { $0[0].slice(axis: 1, start: 1, length: 2).square() }
        gc.check("pad", [x]) { $0[0].padded(axis: 2, before: 1, total: 7).sin() }
        gc.check("concat", [x, y]) { concat([$0[0], $0[1]], axis: 1).square() }
        gc.check("split", [x]) { xs in
            let parts = xs[0].split(axis: 2, sizes: [1, 3])
            return parts[0] * parts[1].sum(axes: [2], keepDims: true)
        }
        gc.check("stack", [x, x.sin()]) { stack([$0[0], $0[1]], axis: 1).square() }
    }

    func testGatherScatter() {
        let table = gc.random([5, 3])
        let idx = Tensor([4, 0, 4, 2], shape: [4], dtype: .float64)
        gc.check("gather", [table]) { $0[0].gatherRows(idx).square() }
        let rows = gc.random([4, 3])
        gc.check("scatterAdd", [rows]) { $0[0].scatterAddRows(idx, rows: 5).square() }
    }

    func testMatmul() {
        let a = gc.random([3, 4]), b = gc.random([4, 5])
        gc.check("matmul", [a, b]) { $0[0].matmul($0[1]) }
        gc.check("matmul A^T", [gc.random([4, 3]), b]) { $0[0].matmul($0[1], transposeSelf: true) }
        gc.check("matmul B^T", [a, gc.random([5, 4])]) { $0[0].matmul($0[1], transposeOther: true) }
        gc.check("matmul A^T B^T", [gc.random([4, 3]), gc.random([5, 4])]) {
            $0[0].matmul($0[1], transposeSelf: true, transposeOther: true)
        }
        gc.check("batched", [gc.random([2, 3, 4]), gc.random([2, 4, 5])]) { $0[0].matmul($0[1]).square() }
        gc.check("batched B^T", [gc.random([2, 3, 4]), gc.random([2, 5, 4])]) {
            $0[0].matmul($0[1], transposeOther: true).square()
        }
        gc.check("shared weight", [gc.random([2, 3, 4]), gc.random([5, 4])]) {
            $0[0].matmul($0[1], transposeOther: true).square()
        }
    }

    func testLinear() {
        let x = gc.random([2, 3, 4]), w = gc.random([5, 4]), b = gc.random([5])
        gc.check("linear", [x, w, b]) { $0[0].linear($0[1], bias: $0[2]) }
        gc.check("linear without bias", [x, w]) { $0[0].linear($0[1]) }
        gc.check("linear, nonlinear loss", [x, w, b]) { $0[0].linear($0[1], bias: $0[2]).square() }
        gc.check("linear 2-D", [gc.random([3, 4]), w, b]) { $0[0].linear($0[1], bias: $0[2]).sin() }
        gc.check("linear of a vector", [gc.random([4]), w, b]) { $0[0].linear($0[1], bias: $0[2]).square() }
        // Tangents on some inputs only (the others are constants): each combination the JVP rule distinguishes.
        // The input alone is TVM's case: the tangent is a linear of it without bias.
        gc.check("linear, input only", [x]) { $0[0].linear(w, bias: b).square() }
        gc.check("linear, weight only", [w]) { x.linear($0[0], bias: b).square() }
        gc.check("linear, bias only", [b]) { x.linear(w, bias: $0[0]).square() }
        gc.check("linear, weight and bias", [w, b]) { x.linear($0[0], bias: $0[1]).square() }
        gc.check("linear, input and bias", [x, b]) { $0[0].linear(w, bias: $0[1]).square() }
        // The same values as the product and the add it replaces.
        let fused = x.linear(w, bias: b).doubles, plain = (x.matmul(w, transposeOther: true) + b).doubles
        for (a, e) in zip(fused, plain) { XCTAssertEqual(a, e, accuracy: 1e-12) }
        XCTAssertEqual(x.linear(w).doubles, x.matmul(w, transposeOther: true).doubles)
        // No rows: an empty output, and zero gradients for the weight and the bias.
        let (value, grads) = valueAndGradient([gc.random([0, 4]), w, b]) { $0[0].linear($0[1], bias: $0[2]).sum() }
        XCTAssertEqual(value.item, 0)
        XCTAssertEqual(grads[0].shape, [0, 4])
        XCTAssertEqual(grads[1].doubles, [Double](repeating: 0, count: 20))
        XCTAssertEqual(grads[2].doubles, [Double](repeating: 0, count: 5))
    }

    /// linearGELU: one backend call where nothing is differentiated, linear then gelu otherwise. On the CPU the
    /// backend call runs the same kernels as the composition, so every comparison here is bitwise.
    func testLinearGELU() {
        let x = gc.random([2, 3, 4]), w = gc.random([5, 4]), b = gc.random([5])
        // The rules (the composition's) against finite differences, first and second order.
        gc.check("linearGELU", [x, w, b]) { $0[0].linearGELU($0[1], bias: $0[2]) }
        gc.check("linearGELU without bias", [x, w]) { $0[0].linearGELU($0[1]) }
        gc.check("linearGELU, input only", [x]) { $0[0].linearGELU(w, bias: b).square() }
        gc.check("linearGELU, weight and bias", [w, b]) { x.linearGELU($0[0], bias: $0[1]).square() }

        // Not differentiated: the fused call, float64 and float32, with and without bias, 3-D, 2-D and 1-D inputs.
        for dtype in [DType.float64, .float32] {
            let (xd, wd, bd) = (x.cast(dtype), w.cast(dtype), b.cast(dtype))
            for input in [xd, xd.reshaped([6, 4]), xd.reshaped([6, 4]).slice(axis: 0, start: 2, length: 1).reshaped([4])] {
                let fused = input.linearGELU(wd, bias: bd)
                XCTAssertEqual(fused.shape, Array(input.shape.dropLast()) + [5])
                XCTAssertEqual(fused.doubles, input.linear(wd, bias: bd).gelu().doubles, "\(dtype) \(input.shape)")
                XCTAssertEqual(input.linearGELU(wd).doubles, input.linear(wd).gelu().doubles, "\(dtype) \(input.shape), no bias")
            }
        }
        // No rows: an empty output.
        XCTAssertEqual(gc.random([0, 4]).linearGELU(w, bias: b).shape, [0, 5])

        // Inputs that require gradients while recording is off (the teacher passes): no tape, the same values.
        let (xg, wg, bg) = (x.requiringGrad(), w.requiringGrad(), b.requiringGrad())
        let untaped = withoutGrad { xg.linearGELU(wg, bias: bg) }
        XCTAssertFalse(untaped.requiresGrad)
        XCTAssertEqual(untaped.doubles, x.linear(w, bias: b).gelu().doubles)

        // Recording, with any one input differentiated: exactly the composition's value and gradients.
        let probe = gc.random([2, 3, 5])
        func gradientsOf(_ layer: ([Tensor]) -> Tensor, wrt which: Int) -> [[Double]] {
            let inputs = [x, w, b].enumerated().map { i, t in i == which ? t.requiringGrad() : t }
            let y = layer(inputs)
            XCTAssertTrue(y.requiresGrad)
            return [y.doubles, gradients(of: (y * probe).sum(), wrt: [inputs[which]])[0].doubles]
        }
        for which in 0..<3 {
            XCTAssertEqual(gradientsOf({ $0[0].linearGELU($0[1], bias: $0[2]) }, wrt: which),
                           gradientsOf({ $0[0].linear($0[1], bias: $0[2]).gelu() }, wrt: which), "gradient of input \(which)")
        }

        // Forward mode (TVM's tangent along the input), inside and outside withoutGrad, and reverse over forward:
        // exactly the composition's value, tangent and gradients.
        let u = gc.random(x.shape)
        func tangentsAndGradients(_ layer: @escaping (Tensor, Tensor, Tensor) -> Tensor) -> [[Double]] {
            let (y, t) = withoutGrad { jvp({ [layer($0[0], w, b)] }, primals: [x], tangents: [u]) }
            let (_, grads) = valueAndGradient([x, w, b]) { xs in
                let (_, t2) = jvp({ [layer($0[0], xs[1], xs[2])] }, primals: [xs[0]], tangents: [u])
                return (t2[0] * probe).sum()
            }
            return [y[0].doubles, t[0].doubles] + grads.map(\.doubles)
        }
        let viaFused = tangentsAndGradients { $0.linearGELU($1, bias: $2) }
        XCTAssertEqual(viaFused, tangentsAndGradients { $0.linear($1, bias: $2).gelu() })
        XCTAssertNotEqual(viaFused[1], [Double](repeating: 0, count: viaFused[1].count), "a tangent came out")
    }

    func testScaledSum() {
        let a = gc.random([2, 3, 4]), s = gc.random([2, 1, 4]), b = gc.random([2, 3, 4]), t = gc.random([2, 1, 4])
        let cFull = gc.random([2, 3, 4]), cRow = gc.random([2, 1, 4])
        gc.check("a s", [a, s]) { Tensor.scaledSum($0[0], $0[1]) }
        gc.check("a s + c row", [a, s, cRow]) { Tensor.scaledSum($0[0], $0[1], plus: $0[2]) }
        gc.check("a s + b t + c", [a, s, b, t, cFull]) { Tensor.scaledSum($0[0], $0[1], $0[2], $0[3], plus: $0[4]) }
        gc.check("modulate", [a, s, cRow]) { Tensor.scaledSum($0[0], 1 + $0[1], plus: $0[2]).square() }
        // Against the unfused ops, including a constant factor (no tangent) and a shift-only tangent.
        let fused = Tensor.scaledSum(a, s, b, t, plus: cRow).doubles
        let plain = (a * s + b * t + cRow).doubles
        for (x, y) in zip(fused, plain) { XCTAssertEqual(x, y, accuracy: 1e-12) }
        let (_, tangents) = jvp({ [Tensor.scaledSum(a, s.detached(), plus: $0[0])] }, primals: [cRow], tangents: [t])
        XCTAssertEqual(tangents[0].shape, [2, 3, 4])
        XCTAssertEqual(tangents[0].doubles, t.broadcast(to: [2, 3, 4]).doubles)
    }

    /// The channels-last convolution composed from core ops (the CPU's path: an im2col gather and one `linear`) is
    /// differentiable in every input: 3x3 with same padding and a residual, and the downsampler (stride 2, padding
    /// right and bottom) in bands of one row and in one band.
    func testComposedChannelsLastConvolution() {
        let x = gc.random([2, 5, 4, 3]), weight = gc.random([4, 3 * 3 * 3]), bias = gc.random([4]), residual = gc.random([2, 5, 4, 4])
        gc.check("conv 3x3 + residual", [x, weight, bias, residual], secondOrder: false) {
            $0[0].channelsLastConvolution(weight: $0[1], bias: $0[2], kernelHeight: 3, kernelWidth: 3, padding: .uniform(1), plus: $0[3])
        }
        let downsampler = EdgePadding(top: 0, bottom: 1, left: 0, right: 1)
        for scratchLimit in [1, 2 * 2 * 2 * 27] {
            gc.check("downsampler, scratch \(scratchLimit)", [x, weight, bias], secondOrder: false) {
                $0[0].channelsLastConvolution(weight: $0[1], bias: $0[2], kernelHeight: 3, kernelWidth: 3, stride: 2,
                                              padding: downsampler, scratchLimit: scratchLimit).square()
            }
        }
    }

    /// Accumulating VJP rules add an input's gradient summed so far inside the kernel that makes the new term. A
    /// tensor used by several ops must get every term once: a residual around a modulated norm (the residual's
    /// cotangent arrives first, the norm's adds to it), one tensor as both terms and the addend of a scaledSum
    /// (its partial is given once), a norm whose input is used again, and the second-order checks (rmsNormLinear's
    /// rule, reverse over forward).
    func testGradientsSummedInsideRules() {
        let x = gc.random([2, 3, 5]), s = gc.random([2, 1, 5]), t = gc.random([2, 1, 5])
        gc.check("residual around a modulated norm", [x, s, t]) {
            Tensor.scaledSum($0[0].rmsNormalized(eps: 1e-6, scale: 1 + $0[1], shift: $0[2]).square(), $0[2], plus: $0[0])
        }
        gc.check("one leaf in every place", [x, s]) { Tensor.scaledSum($0[0], $0[1], $0[0], $0[1], plus: $0[0]) * $0[0] }
        gc.check("one node output in every place", [x, s]) {
            let y = $0[0] * 2, f = $0[1].exp()
            return Tensor.scaledSum(y, f, y, f, plus: y) * y
        }
        gc.check("rmsNorm and its input", [x]) { $0[0].rmsNormalized(eps: 1e-6) * $0[0] + $0[0].rmsNormalized(eps: 1e-6).square() }
        // The engine's sum in either order gives the same values: the fused gradient against one from plain ops.
        let fused = valueAndGradient([x, s]) { Tensor.scaledSum($0[0].rmsNormalized(eps: 1e-6, scale: $0[1]), $0[1], plus: $0[0]).sum() }
        let plain = valueAndGradient([x, s]) { ($0[0].rmsNormalized(eps: 1e-6) * $0[1] * $0[1] + $0[0]).sum() }
        for (a, b) in zip(fused.gradients, plain.gradients) {
            for (u, v) in zip(a.doubles, b.doubles) { XCTAssertEqual(u, v, accuracy: 1e-12) }
        }
    }

    func testSoftmaxAndRMSNorm() {
        let x = gc.random([3, 6])
        gc.check("softmax", [x]) { $0[0].softmax() }
        gc.check("rmsNorm", [x]) { $0[0].rmsNormalized(eps: 1e-6) }
        let s = x.softmax().sum(axes: [-1]).doubles
        for v in s { XCTAssertEqual(v, 1, accuracy: 1e-12) }
        let r = x.rmsNormalized(eps: 0).square().mean(axes: [-1]).doubles
        for v in r { XCTAssertEqual(v, 1, accuracy: 1e-12) }
    }

    func testRMSNormScaled() {
        // Per-batch-entry factors (adaLN modulation: x [B, N, D], scale and shift [B, 1, D]).
        let x = gc.random([2, 3, 5]), s = gc.random([2, 1, 5]), t = gc.random([2, 1, 5])
        gc.check("rmsNorm scale shift", [x, s, t]) { $0[0].rmsNormalized(eps: 1e-6, scale: $0[1], shift: $0[2]) }
        gc.check("rmsNorm scale", [x, s]) { $0[0].rmsNormalized(eps: 1e-6, scale: $0[1]) }
        gc.check("rmsNorm modulate", [x, s, t]) { $0[0].rmsNormalized(eps: 1e-6, scale: 1 + $0[1], shift: $0[2]).square() }
        // Tangents on only some inputs take the rule's other branches (x, scale or shift alone).
        gc.check("rmsNorm scale shift, x alone", [x]) { $0[0].rmsNormalized(eps: 1e-6, scale: s, shift: t).square() }
        gc.check("rmsNorm scale shift, factors alone", [s, t]) { x.rmsNormalized(eps: 1e-6, scale: $0[0], shift: $0[1]).square() }
        gc.check("rmsNorm scale shift, shift alone", [t]) { x.rmsNormalized(eps: 1e-6, scale: s, shift: $0[0]).square() }
        // A weight shared by every row (q/k norm: [B, N, H, Dh] with a weight [Dh]).
        let h = gc.random([2, 3, 2, 4]), w = gc.random([4]), b = gc.random([4])
        gc.check("rmsNorm weight", [h, w]) { $0[0].rmsNormalized(eps: 1e-6, scale: $0[1]) }
        gc.check("rmsNorm weight bias", [h, w, b]) { $0[0].rmsNormalized(eps: 1e-6, scale: $0[1], shift: $0[2]).square() }
        gc.check("rmsNorm weight, weight alone", [w]) { h.rmsNormalized(eps: 1e-6, scale: $0[0]).square() }
        // The fused value against the separate ops.
        for (fused, plain) in [(x.rmsNormalized(eps: 1e-6, scale: s, shift: t), x.rmsNormalized(eps: 1e-6) * s + t),
                               (h.rmsNormalized(eps: 1e-6, scale: w), h.rmsNormalized(eps: 1e-6) * w)] {
            XCTAssertEqual(fused.shape, plain.shape)
            for (a, b) in zip(fused.doubles, plain.doubles) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        }
        // In float32 the fused kernel rounds as the separate ops do: DiT's outputs do not move.
        let x32 = x.cast(.float32), s32 = s.cast(.float32), t32 = t.cast(.float32)
        XCTAssertEqual(x32.rmsNormalized(eps: 1e-6, scale: s32, shift: t32).floats,
                       Tensor.scaledSum(x32.rmsNormalized(eps: 1e-6), s32, plus: t32).floats)
    }

    func testCast() {
        // Finite differences cannot resolve float32 rounding, so the rules are checked directly.
        let x = gc.random([4]), u = gc.random([4])
        let (y, t) = jvp({ [$0[0].cast(.float32)] }, primals: [x], tangents: [u])
        XCTAssertEqual(y[0].dtype, .float32)
        XCTAssertEqual(t[0].floats, u.floats)
        let (_, g) = valueAndGradient([x]) { ($0[0].cast(.float32) * Tensor([1, 2, 3, 4], shape: [4])).sum() }
        XCTAssertEqual(g[0].dtype, .float64)
        XCTAssertEqual(g[0].doubles, [1, 2, 3, 4])
    }

    func testNormAndActivationOutputsAreRemadeInBackwardNotKept() {
        // A modulated MLP (a DiT block's shape): the linear layers read the norm's and the GELU's outputs, which the
        // graph remakes when those nodes run; the derivatives of both orders still match finite differences.
        let x = gc.random([2, 3, 5]), s = gc.random([2, 1, 5]), t = gc.random([2, 1, 5])
        let w1 = gc.random([8, 5]), b1 = gc.random([8]), w2 = gc.random([5, 8])
        gc.check("modulated MLP", [x, s, t, w1, b1, w2]) { p in
            p[0].rmsNormalized(eps: 1e-6, scale: 1 + p[1], shift: p[2]).linear(p[3], bias: p[4]).gelu().linear(p[5])
        }
        // What the JVP's graph keeps, in float32 bytes: the first layer's output and its tangent (read by the GELU's
        // rule), the outputs and small factors, but not the norm's or the GELU's outputs or their tangents.
        let cpu = CPUBackend.shared
        let (rows, width, hidden) = (64, 16, 64)
        let input = Tensor.randomNormal([1, rows, width], rng: &gc.rng), direction = Tensor.randomNormal([1, rows, width], rng: &gc.rng)
        let scale = Tensor.randomNormal([1, 1, width], rng: &gc.rng).requiringGrad()
        let shift = Tensor.randomNormal([1, 1, width], rng: &gc.rng).requiringGrad()
        let weight1 = Tensor.randomNormal([hidden, width], rng: &gc.rng).requiringGrad()
        let weight2 = Tensor.randomNormal([width, hidden], rng: &gc.rng).requiringGrad()
        let before = cpu.currentBytes
        let (y, ty) = jvp({ [$0[0].rmsNormalized(eps: 1e-6, scale: scale, shift: shift).linear(weight1).gelu().linear(weight2)] },
                          primals: [input], tangents: [direction])
        let kept = cpu.currentBytes - before
        let firstLayer = 2 * rows * hidden * 4, outputs = 2 * rows * width * 4
        let remade = 2 * rows * width * 4 + 2 * rows * hidden * 4
        XCTAssertGreaterThanOrEqual(kept, firstLayer + outputs)
        XCTAssertLessThan(kept, firstLayer + outputs + 1024, "kept \(kept) bytes; keeping the remade outputs would add \(remade)")
        let g = gradients(of: (y[0] * ty[0]).sum(), wrt: [scale, shift, weight1, weight2])
        XCTAssertTrue(g.allSatisfy { $0.floats.allSatisfy(\.isFinite) })
    }

    func testCompositeNetworkSecondOrder() {
        // A small MLP: the gradient of a loss of its JVP (the shape of the TVM terminal term).
        let x = gc.random([4, 3]), w1 = gc.random([8, 3]), b1 = gc.random([8]), w2 = gc.random([2, 8])
        gc.check("mlp", [x, w1, b1, w2]) { p in
            let h = (p[0].matmul(p[1], transposeOther: true) + p[2]).gelu()
            return h.matmul(p[3], transposeOther: true).silu().rmsNormalized().softmax()
        }
    }
}
