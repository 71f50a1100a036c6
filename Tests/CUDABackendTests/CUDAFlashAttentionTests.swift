import XCTest
import TensorCore
@testable import CUDABackend

/// The fused flash-attention kernels (float32, head dims 64 and 72): against the CPU backend in float64 on the
/// same float32 inputs (small shapes), and against the warp-per-row kernels in float64 on the GPU (large shapes,
/// up to B*H = 768 and S = 1024), in the token-major layout with one head per token (head-major tensors) and
/// with several (a head's rows H * D apart, as DiT's projections give them). All three operand precisions: 3xTF32
/// (the default, tolerance 1e-5), TF32 (`allowTF32`, tolerance 1.5e-3) and bfloat16 (`bf16Products`, tolerance 1e-2;
/// the inputs rounded to bfloat16 first, so the error measured is that of the rounded softmax weights and of the
/// products), by mma.sync and, on a device with sm_90a kernels, by wgmma (the mode falls back to mma.sync elsewhere).
/// Every output starts as NaN (poisoned allocations), so an unwritten element fails.
final class CUDAFlashAttentionTests: XCTestCase {
    enum Mode: CaseIterable {
        case x3, tf32, bf16, wgmma
        var label: String { ["3xTF32", "TF32", "BF16", "BF16 wgmma"][Mode.allCases.firstIndex(of: self)!] }
        var tolerance: Double { self == .x3 ? CUDABackendTests.tolerance(.float32) : self == .tf32 ? 1.5e-3 : 1e-2 }
        var isBF16: Bool { self == .bf16 || self == .wgmma }
        func apply(_ cuda: CUDABackend) {
            cuda.allowTF32 = self == .tf32
            cuda.bf16Products = isBF16
            cuda.flashWarpgroupProducts = self == .wgmma
        }
        /// The inputs as this mode's kernels see them.
        func inputs(_ x: [[Double]]) -> [[Double]] { isBF16 ? x.map(roundedToBF16) : x }
    }

    func flashOrSkip() throws -> CUDABackend {
        let cuda = try cudaOrSkip()
        guard cuda.supportsFlashAttention else { throw XCTSkip("no flash attention on \(cuda.deviceName)") }
        cuda.useFlashAttention = true
        let warpgroup = cuda.flashWarpgroupProducts
        addTeardownBlock {
            Mode.x3.apply(cuda)
            cuda.useFlashAttention = true
            cuda.flashRegisterCaps = true
            cuda.flashWarpgroupProducts = warpgroup
            cuda.flashSavedStatistics = true
        }
        return cuda
    }

    /// (batch, sequence, heads, head dim): partial query and key blocks, S = 16 ... 1024, one head per token
    /// (batch * heads sequences, head-major) and several heads per token.
    let small = [(2, 16, 1, 64), (1, 64, 1, 72), (3, 33, 1, 64), (2, 100, 1, 72), (2, 257, 1, 64), (1, 256, 1, 72),
                 (1, 1024, 1, 64), (2, 256, 6, 64), (1, 64, 3, 72), (2, 33, 3, 72), (3, 100, 2, 64)]

    func testForwardAndTangentAgainstCPU() throws {
        let cuda = try flashOrSkip()
        var r = TestRandom()
        for mode in Mode.allCases {
            mode.apply(cuda)
            let tol = mode.tolerance
            for (batch, n, heads, d) in small {
                let g = AttentionGeometry(batch: batch, seq: n, heads: heads, dim: d, scale: 1 / Double(d).squareRoot())
                var g03 = g
                g03.scale = 0.3
                let (c, rows) = (g.count, g.rows)
                let x = mode.inputs((0..<6).map { _ in r.normals(c) })
                let label = "flash \(mode.label) [\(batch), \(n), \(heads), \(d)] seed=\(r.seed)"
                let before = cuda.flashAttentionCalls
                compareWithCPU("\(label) with tangent", cuda, dtype: .float32, tolerance: tol, reference64: true, inputs: x,
                               outputs: [(c, nil), (c, nil), (rows, nil)]) { b, i, o in
                    b.attention(q: i[0], k: i[1], v: i[2], tq: i[3], tk: i[4], tv: i[5], o: o[0], to: o[1], lse: o[2], mu: nil, geometry: g)
                }
                compareWithCPU("\(label) plain", cuda, dtype: .float32, tolerance: tol, reference64: true, inputs: x,
                               outputs: [(c, nil), (rows, nil)]) { b, i, o in
                    b.attention(q: i[0], k: i[1], v: i[2], tq: nil, tk: nil, tv: nil, o: o[0], to: nil, lse: o[1], mu: nil, geometry: g)
                }
                compareWithCPU("\(label) tangent of k only, scale 0.3", cuda, dtype: .float32, tolerance: tol, reference64: true,
                               inputs: x, outputs: [(c, nil), (c, nil), (rows, nil)]) { b, i, o in
                    b.attention(q: i[0], k: i[1], v: i[2], tq: nil, tk: i[4], tv: nil, o: o[0], to: o[1], lse: o[2], mu: nil, geometry: g03)
                }
                XCTAssertEqual(cuda.flashAttentionCalls, before + 3, "\(label): the flash kernels were not used")
            }
        }
    }

    /// Every combination of present and absent tangents and cotangents (go, gto).
    func testBackwardAgainstCPU() throws {
        let cuda = try flashOrSkip()
        var r = TestRandom()
        for mode in Mode.allCases {
            mode.apply(cuda)
            let tol = mode.tolerance
            for (batch, n, heads, d) in small where n <= 257 || mode == .x3 {
                let g = AttentionGeometry(batch: batch, seq: n, heads: heads, dim: d, scale: 1 / Double(d).squareRoot())
                let c = g.count
                let x = mode.inputs((0..<8).map { _ in r.normals(c) })  // q, k, v, tq, tk, tv, go, gto
                for mask in 0..<8 {
                    let (tangents, hasGO, hasGTO) = (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0)
                    let six = tangents || hasGTO
                    let label = "flash backward \(mode.label) [\(batch), \(n), \(heads), \(d)] tangents \(tangents) go \(hasGO) "
                        + "gto \(hasGTO) seed=\(r.seed)"
                    let before = cuda.flashAttentionCalls
                    compareWithCPU(label, cuda, dtype: .float32, tolerance: tol, reference64: true, inputs: x,
                                   outputs: [(count: Int, initial: [Double]?)](repeating: (c, nil), count: six ? 6 : 3)) { b, i, o in
                        let t = i[0].dtype
                        let fo = b.allocate(c, t), lse = b.allocate(g.rows, t)
                        b.attention(q: i[0], k: i[1], v: i[2], tq: nil, tk: nil, tv: nil, o: fo, to: nil, lse: lse, mu: nil, geometry: g)
                        b.attentionBackward(q: i[0], k: i[1], v: i[2], tq: tangents ? i[3] : nil, tk: tangents ? i[4] : nil,
                                            tv: tangents ? i[5] : nil, forward: nil, lse: lse,
                                            go: hasGO ? i[6] : nil, gto: hasGTO ? i[7] : nil, dq: o[0], dk: o[1], dv: o[2],
                                            dtq: six ? o[3] : nil, dtk: six ? o[4] : nil, dtv: six ? o[5] : nil, geometry: g)
                    }
                    XCTAssertEqual(cuda.flashAttentionCalls, before + 2, "\(label): the flash kernels were not used")
                }
            }
        }
    }

    /// Large shapes (B*H up to 768, S up to 1024; (batch, sequence, heads, head dim)) against the warp-per-row
    /// kernels run in float64 on the GPU.
    func testLargeAgainstWarpKernelsInFloat64() throws {
        let cuda = try flashOrSkip()
        var r = TestRandom()
        var largest: [String: Double] = [:]
        defer { print("FLASHERR largest relative error per precision: " + largest.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.2e", $0.value))" }.joined(separator: ", ")) }
        for (batch, n, heads, d) in [(64, 256, 12, 64), (32, 256, 18, 72), (4, 1024, 1, 64), (3, 1024, 1, 72), (5, 257, 1, 72)] {
            let g = AttentionGeometry(batch: batch, seq: n, heads: heads, dim: d, scale: 1 / Double(d).squareRoot())
            let (c, rows) = (g.count, g.rows)
            let x32 = (0..<8).map { i -> Storage in
                let s = cuda.allocate(c, .float32)
                cuda.random(s, normal: true, seed: r.next(), counter: UInt64(i))
                return s
            }
            let x64 = x32.map { cuda.convert($0, to: .float64) }
            /// o, to, lse, mu, the plain o and lse, then the backward with tangents (6), then the plain backward (3); with
            /// `saved` the backwards take their row statistics from the forwards' outputs.
            func run(_ x: [Storage], _ t: DType, saved: Bool = false) -> [Storage] {
                let o = cuda.allocate(c, t), to = cuda.allocate(c, t), lse = cuda.allocate(rows, t), mu = cuda.allocate(rows, t)
                let po = cuda.allocate(c, t), plse = cuda.allocate(rows, t)
                cuda.attention(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], o: o, to: to, lse: lse, mu: mu, geometry: g)
                cuda.attention(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, o: po, to: nil, lse: plse, mu: nil, geometry: g)
                let grads = (0..<9).map { _ in cuda.allocate(c, t) }
                cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5],
                                       forward: saved ? AttentionForward(o: o, to: to, mu: mu) : nil, lse: lse,
                                       go: x[6], gto: x[7], dq: grads[0], dk: grads[1], dv: grads[2],
                                       dtq: grads[3], dtk: grads[4], dtv: grads[5], geometry: g)
                cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil,
                                       forward: saved ? AttentionForward(o: po) : nil, lse: plse,
                                       go: x[6], gto: nil, dq: grads[6], dk: grads[7], dv: grads[8], dtq: nil, dtk: nil, dtv: nil,
                                       geometry: g)
                return [o, to, lse, mu, po, plse] + grads
            }
            let reference = run(x64, .float64).map { cuda.download($0) }
            // BF16 against float64 on the bfloat16-rounded inputs.
            let xBF16 = x32.map { roundedToBF16(cuda.download($0)) }
            let referenceBF16 = run(xBF16.map { cuda.upload($0, dtype: .float64) }, .float64).map { cuda.download($0) }
            let names = ["o", "to", "lse", "mu", "plain o", "plain lse", "dq", "dk", "dv", "dtq", "dtk", "dtv",
                         "plain dq", "plain dk", "plain dv"]
            // 3xTF32 with and without the register caps (different builds of some kernels), TF32, BF16 (both kinds); the
            // backward's statistics from the forward's outputs (saved) and computed again.
            for (mode, caps, saved) in [(Mode.x3, true, false), (.x3, false, false), (.x3, true, true), (.tf32, true, false),
                                        (.bf16, true, false), (.bf16, true, true), (.wgmma, true, false)] {
                mode.apply(cuda)
                cuda.flashRegisterCaps = caps
                let before = cuda.flashAttentionCalls
                let inputs = mode.isBF16 ? xBF16.map { cuda.upload($0, dtype: .float32) } : x32
                let got = run(inputs, .float32, saved: saved).map { cuda.download($0) }
                XCTAssertEqual(cuda.flashAttentionCalls, before + 4)
                let tol = mode.tolerance
                for (i, name) in names.enumerated() {
                    let err = relativeError(got[i], mode.isBF16 ? referenceBF16[i] : reference[i])
                    let label = "flash \(mode.label)\(caps ? "" : " uncapped")\(saved ? " saved" : "") [\(batch), \(n), \(heads), \(d)] \(name) "
                        + "vs float64 warp kernels seed=\(r.seed)"
                    ErrorRecord.record(.float32, err, tol, label)
                    largest[mode.label] = Swift.max(largest[mode.label] ?? 0, err)
                    XCTAssertLessThanOrEqual(err, tol, label)
                }
            }
            Mode.x3.apply(cuda)
            cuda.flashRegisterCaps = true
        }
    }

    /// The backward's row statistics from the forward's saved outputs (o, to and mu; flash_row_stats) against the
    /// pre-pass that computes the forward again: with float32 outputs they sum the same values in the same order, so
    /// the gradients should agree to the last bit (the count of differing elements is printed; the assertion allows
    /// 1e-6), in every precision; with the outputs as bf16 copies alone (as DiT keeps them under bf16 products) within
    /// the bf16 tolerance of the float64 CPU reference (testBackwardAgainstCPU's).
    func testSavedForwardStatistics() throws {
        let cuda = try flashOrSkip()
        cuda.flashSavedStatistics = true
        var r = TestRandom()
        let names = ["dq", "dk", "dv", "dtq", "dtk", "dtv", "plain dq", "plain dk", "plain dv"]
        for mode in Mode.allCases {
            mode.apply(cuda)
            for (batch, n, heads, d) in [(1, 33, 1, 64), (2, 100, 3, 72), (2, 256, 6, 64), (1, 1024, 1, 72)] {
                let g = AttentionGeometry(batch: batch, seq: n, heads: heads, dim: d, scale: 1 / Double(d).squareRoot())
                let c = g.count
                let x = mode.inputs((0..<8).map { _ in r.normals(c) }).map { cuda.upload($0, dtype: .float32) }
                /// The gradients of both backwards, the outputs kept as float32 values or (copiesOnly) as bf16 copies alone.
                func run(saved: Bool, copiesOnly: Bool = false) -> [[Float]] {
                    func output() -> Storage { copiesOnly ? cuda.bf16OnlyStorage(count: c) : cuda.allocate(c, .float32) }
                    let o = output(), to = output(), po = output()
                    let lse = cuda.allocate(g.rows, .float32), mu = cuda.allocate(g.rows, .float32)
                    let plse = cuda.allocate(g.rows, .float32)
                    cuda.attention(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], o: o, to: to, lse: lse, mu: mu, geometry: g)
                    cuda.attention(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, o: po, to: nil, lse: plse, mu: nil,
                                   geometry: g)
                    let grads = (0..<9).map { _ in cuda.allocate(c, .float32) }
                    cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5],
                                           forward: saved ? AttentionForward(o: o, to: to, mu: mu) : nil, lse: lse,
                                           go: x[6], gto: x[7], dq: grads[0], dk: grads[1], dv: grads[2],
                                           dtq: grads[3], dtk: grads[4], dtv: grads[5], geometry: g)
                    cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil,
                                           forward: saved ? AttentionForward(o: po) : nil, lse: plse, go: x[6], gto: nil,
                                           dq: grads[6], dk: grads[7], dv: grads[8], dtq: nil, dtk: nil, dtv: nil, geometry: g)
                    return grads.map { cuda.downloadFloats($0) }
                }
                let before = cuda.flashAttentionCalls
                let (recomputed, saved) = (run(saved: false), run(saved: true))
                XCTAssertEqual(cuda.flashAttentionCalls, before + 8, "the flash kernels were not used")
                let shape = "[\(batch), \(n), \(heads), \(d)]"
                for (j, name) in names.enumerated() {
                    let differing = zip(saved[j], recomputed[j]).filter { $0.bitPattern != $1.bitPattern }.count
                    print("SAVEDSTATS flash \(mode.label) \(shape) \(name): \(differing) of \(saved[j].count) elements differ")
                    let err = relativeError(saved[j].map(Double.init), recomputed[j].map(Double.init))
                    XCTAssertLessThanOrEqual(err, 1e-6, "flash \(mode.label) \(shape) \(name): saved against recomputed statistics")
                }
                guard mode.isBF16 else { continue }
                let copies = run(saved: true, copiesOnly: true)
                for (j, name) in names.enumerated() {
                    let err = relativeError(copies[j].map(Double.init), recomputed[j].map(Double.init))
                    print("SAVEDSTATS flash \(mode.label) \(shape) \(name), outputs as bf16 copies: relative difference \(err)")
                    XCTAssertLessThanOrEqual(err, mode.tolerance, "flash \(mode.label) \(shape) \(name): outputs kept as bf16 copies")
                }
            }
        }
    }

    /// The bf16 kernels read an input's bf16 copy where it has one (cp.async into shared memory) and round its
    /// float32 values where it has none, and both give the same bits. Each copied input carries the copy of another
    /// tensor's values, and the results must equal, bit for bit, those of that tensor without copies: so the copies
    /// are read, and read to the same effect. go and gto, which the backward's pre-pass also reads in float32, carry
    /// copies of their own values. With copies on q, k and their tangents (what DiT's q and k norms write), and on
    /// every input; forward with and without tangent, backward with tangents and both cotangents, and plain. Both kinds
    /// of BF16 kernels (their tiles differ in layout).
    func testBF16InputCopiesGiveTheSameBits() throws {
        let cuda = try flashOrSkip()
        for mode in [Mode.bf16, .wgmma] {
            mode.apply(cuda)
            try checkBF16InputCopies(cuda, mode)
        }
    }

    func checkBF16InputCopies(_ cuda: CUDABackend, _ mode: Mode) throws {
        var r = TestRandom()
        let names = ["o", "to", "lse", "plain o", "plain lse", "dq", "dk", "dv", "dtq", "dtk", "dtv", "plain dq", "plain dk",
                     "plain dv"]
        for (batch, n, heads, d) in [(1, 33, 1, 64), (2, 100, 3, 72), (1, 257, 2, 64), (2, 256, 6, 72), (1, 1024, 1, 64)] {
            let g = AttentionGeometry(batch: batch, seq: n, heads: heads, dim: d, scale: 1 / Double(d).squareRoot())
            let c = g.count
            /// inputs q, k, v, tq, tk, tv, go, gto: the outputs of both forwards and both backwards, as floats.
            func run(_ x: [Storage]) -> [[Float]] {
                let o = cuda.allocate(c, .float32), to = cuda.allocate(c, .float32), lse = cuda.allocate(g.rows, .float32)
                let po = cuda.allocate(c, .float32), plse = cuda.allocate(g.rows, .float32)
                let before = cuda.flashAttentionCalls
                cuda.attention(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], o: o, to: to, lse: lse, mu: nil, geometry: g)
                cuda.attention(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, o: po, to: nil, lse: plse, mu: nil, geometry: g)
                let grads = (0..<9).map { _ in cuda.allocate(c, .float32) }
                cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], forward: nil, lse: lse,
                                       go: x[6], gto: x[7], dq: grads[0], dk: grads[1], dv: grads[2],
                                       dtq: grads[3], dtk: grads[4], dtv: grads[5], geometry: g)
                cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, forward: nil, lse: plse,
                                       go: x[6], gto: nil, dq: grads[6], dk: grads[7], dv: grads[8], dtq: nil, dtk: nil,
                                       dtv: nil, geometry: g)
                XCTAssertEqual(cuda.flashAttentionCalls, before + 4, "the flash kernels were not used")
                return ([o, to, lse, po, plse] + grads).map { cuda.downloadFloats($0) }
            }
            let values = (0..<8).map { _ in r.normals(c) }
            let plain = values.map { cuda.upload($0, dtype: .float32) }
            let reference = run(plain)
            for (label, copied) in [("q, k, tq, tk", [0, 1, 3, 4]), ("every input", Array(0..<8))] {
                let inputs = (0..<8).map { i -> Storage in
                    guard copied.contains(i) else { return plain[i] }
                    let holder = cuda.upload(i < 6 ? r.normals(c) : values[i], dtype: .float32)
                    cuda.beginBF16Call()
                    cuda.writeBF16(of: plain[i], to: cuda.attachBF16Copy(holder))
                    return holder
                }
                let got = run(inputs)
                for (j, name) in names.enumerated() {
                    let differing = zip(got[j], reference[j]).filter { $0.bitPattern != $1.bitPattern }.count
                    XCTAssertEqual(differing, 0, "flash \(mode.label) [\(batch), \(n), \(heads), \(d)] \(name), copies on \(label): "
                                   + "\(differing) of \(got[j].count) elements differ from the run without copies seed=\(r.seed)")
                }
            }
        }
    }

    /// The switch: with `useFlashAttention` off the warp-per-row kernels run (the same results within float32).
    func testSwitchOffUsesWarpKernels() throws {
        let cuda = try flashOrSkip()
        var r = TestRandom()
        let g = AttentionGeometry(batch: 1, seq: 70, heads: 3, dim: 64, scale: 0.125)
        let x = (0..<3).map { _ in cuda.upload(r.normals(g.count), dtype: .float32) }
        func forward() -> [Double] {
            let o = cuda.allocate(g.count, .float32), lse = cuda.allocate(g.rows, .float32)
            cuda.attention(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, o: o, to: nil, lse: lse, mu: nil, geometry: g)
            return cuda.download(o)
        }
        let before = cuda.flashAttentionCalls
        let flash = forward()
        cuda.useFlashAttention = false
        let warp = forward()
        cuda.useFlashAttention = true
        XCTAssertEqual(cuda.flashAttentionCalls, before + 1)
        XCTAssertLessThanOrEqual(relativeError(flash, warp), 1e-5)
    }
}
