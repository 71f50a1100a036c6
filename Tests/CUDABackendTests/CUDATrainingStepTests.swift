import XCTest
import TensorCore
import CUDABackend

/// A whole small training step on the GPU against the same step on the CPU: a network with linear layers,
/// SiLU and GELU, RMS normalisation, softmax and multi-head attention; a JVP of it (as TVM takes), a loss of
/// its output and of its tangent, gradients through the JVP into every parameter, and an AdamW update.
final class CUDATrainingStepTests: XCTestCase {
    struct Model {
        var params: [Tensor]  // w1 [24, 48], b1 [48], wq, wk, wv [48, 32], wo [32, 24], gate [24]

        func callAsFunction(_ x: Tensor) -> Tensor {
            let (w1, b1, wq, wk, wv, wo, gate) = (params[0], params[1], params[2], params[3], params[4], params[5], params[6])
            let (b, s) = (x.shape[0], x.shape[1])
            let h = (x.matmul(w1) + b1).silu()
            func heads(_ t: Tensor) -> Tensor { t.reshaped([b, s, 2, 16]) }
            let a = attention(heads(h.matmul(wq)), heads(h.matmul(wk)), heads(h.matmul(wv)), layout: .tokenMajor)
            let merged = a.reshaped([b, s, 32]).matmul(wo)
            let mixed = merged.rmsNormalized() * gate.softmax() + x.gelu()
            return mixed - mixed.max(axes: [-1], keepDims: true) * 0.1
        }
    }

    func step(_ model: Model, _ x: Tensor, _ tx: Tensor, _ target: Tensor) -> (loss: Double, grads: [Tensor], updated: [Tensor]) {
        let leaves = model.params.map { $0.detached().requiringGrad() }
        let m = Model(params: leaves)
        let (outs, tans) = jvp({ [m($0[0])] }, primals: [x], tangents: [tx])
        let loss = ((outs[0] - target).square().mean() + (tans[0] * tans[0]).mean() * 0.5)
        let grads = gradients(of: loss, wrt: leaves)
        // One AdamW step on copies of the parameters.
        let updated = model.params.map { ($0 * 1).detached() }
        withoutGrad {
            for (p, g) in zip(updated, grads) {
                let mState = p.zerosLike(), vState = p.zerosLike()
                p.adamwUpdate(gradient: g, m: mState, v: vState, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
                              weightDecay: 0.01, step: 1)
            }
        }
        return (loss.item, grads, updated)
    }

    func testMLPAttentionStepMatchesCPU() throws {
        let cuda = try cudaOrSkip()
        var r = TestRandom()
        for dtype in [DType.float32, .float64] {
            let shapes = [[24, 48], [48], [48, 32], [48, 32], [48, 32], [32, 24], [24]]
            let params = shapes.map { s in pair(r.normals(Shape.count(s), scale: 1 / Double(s[0]).squareRoot()), s, dtype, cuda) }
            let x = pair(r.normals(3 * 11 * 24), [3, 11, 24], dtype, cuda)
            let tx = pair(r.normals(3 * 11 * 24), [3, 11, 24], dtype, cuda)
            let target = pair(r.normals(3 * 11 * 24), [3, 11, 24], dtype, cuda)
            let onCPU = step(Model(params: params.map(\.cpu)), x.cpu, tx.cpu, target.cpu)
            let onGPU = step(Model(params: params.map(\.gpu)), x.gpu, tx.gpu, target.gpu)
            let tol = tolerance(dtype)
            XCTAssertLessThanOrEqual(Swift.abs(onGPU.loss - onCPU.loss) / Swift.abs(onCPU.loss), tol,
                                     "loss \(onGPU.loss) vs \(onCPU.loss) \(dtype) seed=\(r.seed)")
            for i in shapes.indices {
                assertClose(onGPU.grads[i], onCPU.grads[i], tol, "gradient of parameter \(i) \(dtype) seed=\(r.seed)")
                assertClose(onGPU.updated[i], onCPU.updated[i], tol, "AdamW update of parameter \(i) \(dtype) seed=\(r.seed)")
            }
        }
    }

    /// Under bf16 products a GELU's output and tangent, which only the next linear layer's weight gradient reads, are
    /// kept as their bf16 product operands alone (`Tensor.savedAsProductOperand`): the gradients through the JVP are
    /// bit for bit those of the same network with the output kept whole (`* 1` makes a tensor that cannot be
    /// remade, so the linear layer keeps its float32 values), and the graph holds less.
    func testOperandCopiesKeptAloneGiveTheSameGradientsInLessMemory() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { cuda.bf16Products = false }
        var r = TestRandom()
        let (rows, width, hidden) = (512, 64, 256)
        func tensor(_ shape: [Int], _ scale: Double = 1) -> Tensor {
            Tensor(r.normals(Shape.count(shape), scale: scale), shape: shape, dtype: .float32, on: cuda.device)
        }
        let w1 = tensor([hidden, width], 0.125), b1 = tensor([hidden]), w2 = tensor([width, hidden], 0.0625), b2 = tensor([width])
        let x = tensor([rows, width]), tx = tensor([rows, width])
        func run(keepWhole: Bool) -> (grads: [[Double]], graphBytes: Int) {
            let leaves = [w1, b1, w2, b2].map { $0.detached().requiringGrad() }
            cuda.synchronize()
            let start = cuda.currentBytes
            let (outs, tans) = jvp({ i in
                let h = i[0].linear(leaves[0], bias: leaves[1]).gelu()
                return [(keepWhole ? h * 1 : h).linear(leaves[2], bias: leaves[3])]
            }, primals: [x], tangents: [tx])
            let loss = outs[0].square().mean() + tans[0].square().mean()
            cuda.synchronize()
            let graphBytes = cuda.currentBytes - start
            return (gradients(of: loss, wrt: leaves).map(\.doubles), graphBytes)
        }
        let whole = run(keepWhole: true), operands = run(keepWhole: false)
        for i in whole.grads.indices {
            XCTAssertEqual(operands.grads[i], whole.grads[i], "gradient of parameter \(i)")
        }
        // The GELU's output and tangent: 4 + 2 bytes per element kept whole (values and bf16 copy), 2 as operands.
        let saved = 2 * rows * hidden * 4
        XCTAssertLessThanOrEqual(operands.graphBytes, whole.graphBytes - saved / 2,
                                 "graph bytes \(operands.graphBytes) against \(whole.graphBytes) kept whole")
    }

    /// One JVP pass of `block` (its output, tangent, and the gradients of a loss of both into every parameter) and one
    /// undifferentiated pass under bf16 products, with the tensors that only products read kept as their bf16 copies
    /// alone (`bf16Activations`) or as float32 values with copies; and the JVP pass's peak bytes.
    private func bf16StepRun(_ cuda: CUDABackend, bf16Alone: Bool, params: [Tensor], x: Tensor, tx: Tensor,
                             _ block: (Tensor, [Tensor]) -> Tensor) -> (values: [[Double]], teacher: [Double], peak: Int) {
        cuda.bf16Activations = bf16Alone
        let leaves = params.map { $0.detached().requiringGrad() }
        cuda.synchronize()
        cuda.resetPeakBytes()
        let start = cuda.currentBytes
        let (outs, tans) = jvp({ [block($0[0], leaves)] }, primals: [x], tangents: [tx])
        cuda.synchronize()
        let peak = cuda.peakBytes - start
        let loss = outs[0].square().mean() + tans[0].square().mean()
        let grads = gradients(of: loss, wrt: leaves)
        let teacher = withoutGrad { block(x, params) }
        return ([outs[0].doubles, tans[0].doubles] + grads.map(\.doubles), teacher.doubles, peak)
    }

    /// `block`'s step with outputs held as bf16 alone and with float32 outputs and their copies: every JVP output, gradient
    /// and the undifferentiated pass within 1e-2 (relative L2) of each other; the JVP pass's peak bytes of both.
    private func bf16AloneWithinRounding(_ cuda: CUDABackend, params: [Tensor], x: Tensor, tx: Tensor, _ label: String,
                                         _ block: (Tensor, [Tensor]) -> Tensor) -> (alone: Int, whole: Int) {
        let whole = bf16StepRun(cuda, bf16Alone: false, params: params, x: x, tx: tx, block)
        let alone = bf16StepRun(cuda, bf16Alone: true, params: params, x: x, tx: tx, block)
        for i in whole.values.indices {
            XCTAssertEqual(alone.values[i].count, whole.values[i].count)
            XCTAssertLessThanOrEqual(relativeError(alone.values[i], whole.values[i]), 1e-2,
                                     "\(label): " + (i < 2 ? "JVP output \(i)" : "gradient of parameter \(i - 2)"))
        }
        XCTAssertLessThanOrEqual(relativeError(alone.teacher, whole.teacher), 1e-2, "\(label): undifferentiated pass")
        return (alone.peak, whole.peak)
    }

    /// The L2 norm of a - b relative to that of b.
    private func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        let diff = zip(a, b).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
        return diff / Swift.max(b.map { $0 * $0 }.reduce(0, +).squareRoot(), 1e-30)
    }

    /// Under bf16 products an output that only linear layers read (`ProductUse.only`: a DiT's modulated norms and its
    /// MLP's GELU) holds its bf16 copy alone. Composed as `linear` then `gelu`, the JVP, its tangent and the gradients
    /// are bit for bit those of the float32 outputs with their copies (`bf16Activations` off). Through `linearGELU`, as
    /// DiT runs it, the pre-activation (and its tangent and cotangents) is kept in bf16 alone too: within bf16 rounding
    /// (its bias is added in bf16 by cuBLASLt, the GELU reads bf16 inputs), and the JVP pass peaks lower by at least the
    /// GELU output's and the pre-activation's float32 bytes; the undifferentiated pass (cuBLASLt writing the GELU
    /// epilogue's output in bf16) differs by about that rounding.
    func testMLPOutputsReadOnlyByProductsHeldInBF16Alone() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { (cuda.bf16Products, cuda.bf16Activations) = (false, true) }
        var r = TestRandom()
        let (batch, tokens, width, hidden) = (4, 128, 64, 256)
        func tensor(_ shape: [Int], _ scale: Double = 1) -> Tensor {
            Tensor(r.normals(Shape.count(shape), scale: scale), shape: shape, dtype: .float32, on: cuda.device)
        }
        let params = [tensor([hidden, width], 0.125), tensor([hidden]), tensor([width, hidden], 0.0625), tensor([width]),
                      tensor([batch, 1, width], 0.1), tensor([batch, 1, width], 0.1)]
        let x = tensor([batch, tokens, width]), tx = tensor([batch, tokens, width])
        func composed(_ x: Tensor, _ p: [Tensor]) -> Tensor {
            let h = x.rmsNormalized(eps: 1e-6, scale: 1 + p[4], shift: p[5], products: .only)
            return h.linear(p[0], bias: p[1]).gelu(products: .only).linear(p[2], bias: p[3])
        }
        func fused(_ x: Tensor, _ p: [Tensor]) -> Tensor {
            let h = x.rmsNormalized(eps: 1e-6, scale: 1 + p[4], shift: p[5], products: .only)
            return h.linearGELU(p[0], bias: p[1], products: .only).linear(p[2], bias: p[3])
        }
        let whole = bf16StepRun(cuda, bf16Alone: false, params: params, x: x, tx: tx, composed)
        let alone = bf16StepRun(cuda, bf16Alone: true, params: params, x: x, tx: tx, composed)
        for i in whole.values.indices {
            XCTAssertEqual(alone.values[i], whole.values[i], i < 2 ? "JVP output \(i)" : "gradient of parameter \(i - 2)")
        }
        XCTAssertEqual(alone.teacher, whole.teacher, "undifferentiated pass, linear then GELU")
        let wholeFused = bf16StepRun(cuda, bf16Alone: false, params: params, x: x, tx: tx, fused)
        let aloneFused = bf16StepRun(cuda, bf16Alone: true, params: params, x: x, tx: tx, fused)
        for i in wholeFused.values.indices {
            XCTAssertLessThanOrEqual(relativeError(aloneFused.values[i], wholeFused.values[i]), 1e-2,
                                     i < 2 ? "linearGELU: JVP output \(i)" : "linearGELU: gradient of parameter \(i - 2)")
        }
        // There cuBLASLt writes the GELU's bf16 output itself, with the bias's bf16 copy: within a bf16 step (2^-8).
        XCTAssertLessThanOrEqual(relativeError(aloneFused.teacher, wholeFused.teacher), 4e-3,
                                 "undifferentiated pass, bf16 alone against float32 outputs")
        // The GELU's output and tangent (4 bytes an element each, besides their copies) are the largest outputs of the
        // JVP pass, alive together while the second layer reads them; through linearGELU the pre-activation and its
        // tangent (4 bytes each, 2 in bf16) are kept too.
        let count = batch * tokens * hidden
        XCTAssertLessThanOrEqual(alone.peak, whole.peak - count * 4,
                                 "JVP pass peak bytes \(alone.peak) against \(whole.peak) with float32 outputs")
        XCTAssertLessThanOrEqual(aloneFused.peak, wholeFused.peak - count * 8,
                                 "linearGELU: JVP pass peak bytes \(aloneFused.peak) against \(wholeFused.peak)")
    }

    /// DiT's attention under bf16 products: q and k from RMS norms, v from a linear layer, the output read by a
    /// projection, each (and its tangent) kept as its bf16 operand alone; so are q and k before their norms (the norms
    /// read bf16 values) with their tangents and cotangents. v's, q's and k's biases are added in bf16 there (cuBLASLt's
    /// bias takes its output's type) and the norms read rounded inputs, so the step stays within bf16 rounding of the
    /// one with float32 operands, in less memory. Head dim 64 takes the flash kernels and the packed norms, 16 the
    /// warp-per-row attention kernels (which widen such operands) and the scalar norms.
    func testAttentionOperandsHeldInBF16AloneStayWithinBF16Rounding() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { (cuda.bf16Products, cuda.bf16Activations) = (false, true) }
        var r = TestRandom()
        for (heads, dim) in [(2, 64), (4, 16)] {
            let (batch, tokens, width) = (3, 96, heads * dim)
            func tensor(_ shape: [Int], _ scale: Double = 1) -> Tensor {
                Tensor(r.normals(Shape.count(shape), scale: scale), shape: shape, dtype: .float32, on: cuda.device)
            }
            let w = 1 / Double(width).squareRoot()
            let params = [tensor([width, width], w), tensor([width], 0.1), tensor([width, width], w), tensor([width], 0.1),
                          tensor([width, width], w), tensor([width], 0.1), tensor([width, width], w), tensor([width], 0.1),
                          1 + tensor([dim], 0.1), 1 + tensor([dim], 0.1)]
            let x = tensor([batch, tokens, width]), tx = tensor([batch, tokens, width])
            func block(_ x: Tensor, _ p: [Tensor]) -> Tensor {
                func split(_ t: Tensor) -> Tensor { t.reshaped([batch, tokens, heads, dim]) }
                let q = split(x.linear(p[0], bias: p[1], products: .only))
                    .rmsNormalized(eps: 1e-6, scale: p[8], products: .only, inputCotangents: .only)
                let k = split(x.linear(p[2], bias: p[3], products: .only))
                    .rmsNormalized(eps: 1e-6, scale: p[9], products: .only, inputCotangents: .only)
                let v = split(x.linear(p[4], bias: p[5], products: .only))
                let o = attention(q, k, v, layout: .tokenMajor, products: .only).reshaped([batch, tokens, width])
                return o.linear(p[6], bias: p[7])
            }
            let peak = bf16AloneWithinRounding(cuda, params: params, x: x, tx: tx, "head dim \(dim)", block)
            if dim == 64 {
                // q, k, v and their tangents (4 bytes an element each, besides their copies) are kept by the attention
                // node; the output and its tangent by the projection, as copies either way; q and k before their norms
                // and their tangents (4 bytes, 2 in bf16) by the norms' nodes (half of those counted here).
                let count = batch * tokens * width
                XCTAssertLessThanOrEqual(peak.alone, peak.whole - 4 * count * 4 - 2 * count * 2,
                                         "JVP pass peak bytes \(peak.alone) against \(peak.whole) with float32 operands")
            }
        }
    }

    /// DiT's gated residuals under bf16 products: x + gate * projection(x), the projection's output (and its tangent
    /// and cotangents) kept as its bf16 operand alone and read so by the scaled sum's kernels and its row sums; the
    /// residual stream stays float32. The gate carries a tangent (in TVM it comes from the time embedding), so the
    /// tangent's scaled sum reads the projection's output as well. Within bf16 rounding of float32 outputs with copies
    /// (the bias is added in bf16 by cuBLASLt, the cotangents are rounded to bf16 as the products would read them),
    /// and the JVP pass peaks lower by at least the projection's and its tangent's float32 bytes. 384 columns take the
    /// packed kernel, 30 the one that reads a value at a time.
    func testGatedResidualOperandsHeldInBF16AloneStayWithinBF16Rounding() throws {
        let cuda = try cudaOrSkip()
        cuda.bf16Products = true
        defer { (cuda.bf16Products, cuda.bf16Activations) = (false, true) }
        var r = TestRandom()
        for width in [384, 30] {
            let (batch, tokens) = (3, 64)
            func tensor(_ shape: [Int], _ scale: Double = 1) -> Tensor {
                Tensor(r.normals(Shape.count(shape), scale: scale), shape: shape, dtype: .float32, on: cuda.device)
            }
            let w = 1 / Double(width).squareRoot()
            let params = [tensor([width, width], w), tensor([width], 0.1), tensor([width, width], w), tensor([width], 0.1)]
            let x = tensor([batch, tokens, width]), tx = tensor([batch, tokens, width])
            func block(_ x: Tensor, _ p: [Tensor]) -> Tensor {
                let gate = x.mean(axes: [1], keepDims: true).linear(p[2], bias: p[3])
                let y = x.linear(p[0], bias: p[1], products: .only)
                return Tensor.scaledSum(y, gate, plus: x, cotangents: .only)
            }
            let peak = bf16AloneWithinRounding(cuda, params: params, x: x, tx: tx, "width \(width)", block)
            // The projection's output and its tangent (4 bytes an element each) are kept by the scaled sums' nodes.
            let count = batch * tokens * width
            XCTAssertLessThanOrEqual(peak.alone, peak.whole - 2 * count * 2,
                                     "width \(width): JVP pass peak bytes \(peak.alone) against \(peak.whole) with float32 outputs")
        }
    }
}
