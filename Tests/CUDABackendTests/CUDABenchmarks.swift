import XCTest
import TensorCore
@testable import CUDABackend

/// Timings of the CUDA backend (device time from CUDA events, after warm-up). Runs only with
/// TVM_CUDA_BENCH=1 (scripts/gpu.sh sets it); prints one line per measurement, `BENCH`-prefixed.
final class CUDABenchmarks: XCTestCase {
    func testBenchmarks() throws {
        guard ProcessInfo.processInfo.environment["TVM_CUDA_BENCH"] == "1" else { throw XCTSkip("set TVM_CUDA_BENCH=1") }
        let cuda = try cudaOrSkip()
        cuda.poisonAllocations = false
        var r = TestRandom()
        func report(_ s: String) { print("BENCH \(s)") }
        let start = Date()
        try cuda.buildAllKernels()
        report("device \(cuda.deviceName), \(cuda.multiprocessorCount) SMs, \(cuda.totalMemoryBytes >> 20) MiB; \(cuda.versions)")
        report(String(format: "kernel modules built in %.2f s (this call %.2f s): ", cuda.kernelBuildSeconds, Date().timeIntervalSince(start))
               + cuda.kernelBuildLog.joined(separator: "; "))
        func fmt(_ x: Double) -> String { String(format: "%.3f", x) }

        // Memory-bound ops: bytes moved = read + written.
        let n = 64 << 20  // 64 Mi floats, 256 MiB per tensor
        let a = Tensor(r.normals(1 << 16).map(Float.init), shape: [1 << 16], on: cuda.device).broadcast(to: [1024, 1 << 16]).reshaped([n])
        let b = a * 0.5 + 1
        let y = cuda.allocate(n, .float32)
        let gb = Double(n * 4) / 1e9
        var ms = cuda.milliseconds(iterations: 20) {
            cuda.copy(a.storage, StridedView(strides: [1]), y, StridedView(strides: [1]), shape: [n])
        }
        report("copy d2d 256 MiB: \(fmt(ms)) ms, \(fmt(2 * gb / ms)) TB/s (read + written)")
        ms = cuda.milliseconds(iterations: 20) { cuda.binary(.add, a.storage, StridedView(strides: [1]), b.storage, StridedView(strides: [1]), y, shape: [n]) }
        report("binary add 64M f32 (3 x 256 MiB): \(fmt(ms)) ms, \(fmt(3 * gb / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) { cuda.unary(.silu, a.storage, y) }
        report("unary silu 64M f32: \(fmt(ms)) ms, \(fmt(2 * gb / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) { cuda.unary(.geluD2, a.storage, y) }
        report("unary geluD2 64M f32: \(fmt(ms)) ms, \(fmt(2 * gb / ms)) TB/s")
        let rows = n / 1152
        let bias = Tensor(r.normals(1152).map(Float.init), shape: [1152], on: cuda.device)
        ms = cuda.milliseconds(iterations: 20) {
            cuda.binary(.add, a.storage, StridedView(strides: [1152, 1]), bias.storage, StridedView(strides: [0, 1]), y, shape: [rows, 1152])
        }
        report("bias add [\(rows), 1152] + [1152]: \(fmt(ms)) ms, \(fmt(2 * Double(rows * 1152 * 4) / 1e9 / ms)) TB/s")
        let (bb, ss) = (64, n / (64 * 1152))
        ms = cuda.milliseconds(iterations: 20) {
            cuda.binary(.mul, a.storage, StridedView(strides: [ss * 1152, 1152, 1]), bias.storage, StridedView(strides: [0, 0, 1]),
                        y, shape: [bb, ss, 1152])
        }
        report("modulate [\(bb), \(ss), 1152] * [\(bb), 1, 1152] (rows kernel): \(fmt(ms)) ms, \(fmt(2 * Double(bb * ss * 1152 * 4) / 1e9 / ms)) TB/s")
        let heads = 64 * 256 * 12 * 64
        ms = cuda.milliseconds(iterations: 20) {
            // [64, 256, 12, 64] -> [64, 12, 256, 64]: the attention head split.
            cuda.copy(a.storage, StridedView(strides: [256 * 768, 64, 768, 1]), y, StridedView(strides: [12 * 256 * 64, 256 * 64, 64, 1]),
                      shape: [64, 12, 256, 64])
        }
        report("head permute [64,256,12,64] -> [64,12,256,64]: \(fmt(ms)) ms, \(fmt(2 * Double(heads * 4) / 1e9 / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) {
            cuda.copy(a.storage, StridedView(strides: [1152, 1]), y, StridedView(strides: [1, rows]), shape: [rows, 1152])
        }
        report("transpose copy [\(rows), 1152]: \(fmt(ms)) ms, \(fmt(2 * Double(rows * 1152 * 4) / 1e9 / ms)) TB/s")
        let red = cuda.allocate(rows, .float32)
        ms = cuda.milliseconds(iterations: 20) { cuda.reduce(.sum, a.storage, red, outer: rows, n: 1152, inner: 1) }
        report("row sum [\(rows), 1152]: \(fmt(ms)) ms, \(fmt(gb / ms)) TB/s")
        let colRed = cuda.allocate(1152, .float32)
        ms = cuda.milliseconds(iterations: 20) { cuda.reduce(.sum, a.storage, colRed, outer: 1, n: rows, inner: 1152) }
        report("column sum [\(rows), 1152] -> [1152]: \(fmt(ms)) ms, \(fmt(gb / ms)) TB/s")
        let all = cuda.allocate(1, .float32)
        ms = cuda.milliseconds(iterations: 20) { cuda.reduce(.sum, a.storage, all, outer: 1, n: n, inner: 1) }
        report("full sum 64M: \(fmt(ms)) ms, \(fmt(gb / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) { cuda.softmax(a.storage, y, rows: n / 256, cols: 256) }
        report("softmax [\(n / 256), 256]: \(fmt(ms)) ms, \(fmt(2 * gb / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) { cuda.rmsNorm(a.storage, y, rows: rows, cols: 1152, eps: 1e-6) }
        report("rmsNorm [\(rows), 1152]: \(fmt(ms)) ms, \(fmt(2 * Double(rows * 1152 * 4) / 1e9 / ms)) TB/s")
        ms = cuda.milliseconds(iterations: 20) { cuda.random(y, normal: true, seed: 7, counter: 0) }
        report("random normal 64M: \(fmt(ms)) ms, \(fmt(gb / ms)) TB/s written")
        let (pm, pv) = (cuda.allocate(n / 4, .float32), cuda.allocate(n / 4, .float32))
        cuda.fill(pm, value: 0); cuda.fill(pv, value: 0)
        let p = cuda.allocate(n / 4, .float32)
        cuda.fill(p, value: 1)
        ms = cuda.milliseconds(iterations: 20) {
            cuda.adamw(p: p, g: a.storage, m: pm, v: pv, lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 3, gradScale: 1)
        }
        report("adamw 16M params: \(fmt(ms)) ms, \(fmt(7 * gb / 4 / ms)) TB/s (7 streams)")

        // Launch cost: many tiny kernels back to back (host-side rate when the GPU is not the bottleneck).
        let tiny = cuda.allocate(256, .float32), tinyOut = cuda.allocate(256, .float32)
        cuda.fill(tiny, value: 1)
        let t0 = Date()
        for _ in 0..<20_000 { cuda.affine(tiny, tinyOut, a: 2, b: 1) }
        let hostUs = Date().timeIntervalSince(t0) * 1e6 / 20_000
        cuda.synchronize()
        let wallUs = Date().timeIntervalSince(t0) * 1e6 / 20_000
        report("tiny kernel: \(fmt(hostUs)) us host time per launch, \(fmt(wallUs)) us wall per kernel (20000 back to back)")
        let small = Tensor(r.normals(4096).map(Float.init), shape: [64, 64], on: cuda.device)
        let t1 = Date()
        for _ in 0..<2000 { _ = ((small * 2 + 1).silu() * small).sum(axes: [1]) }
        cuda.synchronize()
        report("tensor-level op (5 ops on [64, 64]): \(fmt(Date().timeIntervalSince(t1) * 1e6 / 10_000)) us per op wall, incl. allocation")

        // Matrix products through cuBLAS.
        for (m, nn, k, batch, label) in [(8192, 8192, 8192, 1, "square 8192"), (16384, 4608, 1152, 1, "DiT MLP in [64*256,1152]x[1152,4608]"),
                                          (16384, 1152, 4608, 1, "DiT MLP out"), (256, 256, 64, 768, "attention scores 768 x [256,64]x[64,256]")] {
            let A = cuda.allocate(batch * m * k, .float32), B = cuda.allocate(batch * k * nn, .float32), C = cuda.allocate(batch * m * nn, .float32)
            cuda.random(A, normal: true, seed: 1, counter: 0)
            cuda.random(B, normal: true, seed: 2, counter: 0)
            let flops = 2.0 * Double(m) * Double(nn) * Double(k) * Double(batch)
            for tf32 in [false, true] {
                cuda.allowTF32 = tf32
                let t = cuda.milliseconds(iterations: 10, warmup: 2) {
                    cuda.matmul(A, B, C, batch: batch, m: m, n: nn, k: k, transA: false, transB: batch > 1,
                                strideA: m * k, strideB: k * nn, alpha: 1, beta: 0)
                }
                report("matmul \(label) \(tf32 ? "TF32" : "FP32"): \(fmt(t)) ms, \(fmt(flops / t / 1e9)) TFLOP/s")
            }
            cuda.allowTF32 = false
        }

        // Attention at the DiT-B geometry: B=64, H=12, S=256, D=64 (bh = 768), token-major as DiT runs it.
        for (b, h, s, d) in [(64, 12, 256, 64), (64, 12, 256, 72)] {
            let g = AttentionGeometry(batch: b, seq: s, heads: h, dim: d, scale: 1 / Double(d).squareRoot())
            let bh = b * h, count = g.count
            let qkv = (0..<9).map { i -> Storage in
                let t = cuda.allocate(count, .float32)
                cuda.random(t, normal: true, seed: UInt64(10 + i), counter: 0)
                return t
            }
            let o = cuda.allocate(count, .float32), to = cuda.allocate(count, .float32), lse = cuda.allocate(g.rows, .float32)
            let fwd = cuda.milliseconds(iterations: 5) {
                cuda.attention(q: qkv[0], k: qkv[1], v: qkv[2], tq: nil, tk: nil, tv: nil, o: o, to: nil, lse: lse, mu: nil, geometry: g)
            }
            let fwdT = cuda.milliseconds(iterations: 5) {
                cuda.attention(q: qkv[0], k: qkv[1], v: qkv[2], tq: qkv[3], tk: qkv[4], tv: qkv[5], o: o, to: to, lse: lse, mu: nil, geometry: g)
            }
            let grads = (0..<6).map { _ in cuda.allocate(count, .float32) }
            let bwd = cuda.milliseconds(iterations: 3) {
                cuda.attentionBackward(q: qkv[0], k: qkv[1], v: qkv[2], tq: nil, tk: nil, tv: nil, forward: nil, lse: lse,
                                       go: qkv[6], gto: nil, dq: grads[0], dk: grads[1], dv: grads[2], dtq: nil, dtk: nil, dtv: nil,
                                       geometry: g)
            }
            let bwdT = cuda.milliseconds(iterations: 3) {
                cuda.attentionBackward(q: qkv[0], k: qkv[1], v: qkv[2], tq: qkv[3], tk: qkv[4], tv: qkv[5], forward: nil, lse: lse,
                                       go: qkv[6], gto: qkv[7], dq: grads[0], dk: grads[1], dv: grads[2], dtq: grads[3], dtk: grads[4], dtv: grads[5],
                                       geometry: g)
            }
            let f = 4.0 * Double(bh) * Double(s) * Double(s) * Double(d)
            report("attention bh=\(bh) S=\(s) D=\(d) f32: forward \(fmt(fwd)) ms (\(fmt(f / fwd / 1e9)) TFLOP/s), "
                   + "forward+tangent \(fmt(fwdT)) ms, backward \(fmt(bwd)) ms, backward with tangents \(fmt(bwdT)) ms")
        }
        report("memory: peak \(cuda.peakBytes >> 20) MiB, reserved \(cuda.reservedBytes >> 20) MiB, cuMemAlloc calls \(cuda.driverAllocations)")
        for line in cuda.kernelResourceReport() where line.contains("attn_") && line.contains("f32") { report(line) }
        let spills = cuda.kernelResourceReport().filter { !$0.hasSuffix(" 0 bytes local") }
        report("kernels with local memory (spills or stack): \(spills.isEmpty ? "none" : spills.joined(separator: "; "))")
    }

    /// Attention at the DiT geometries: the warp-per-row kernels against the flash kernels (3xTF32 and TF32).
    /// Median of several CUDA-event timings (each the mean of a few calls). TVM_CUDA_BENCH=1.
    func testFlashAttentionBenchmarks() throws {
        guard ProcessInfo.processInfo.environment["TVM_CUDA_BENCH"] == "1" else { throw XCTSkip("set TVM_CUDA_BENCH=1") }
        let cuda = try cudaOrSkip()
        cuda.poisonAllocations = false
        defer { cuda.allowTF32 = false; cuda.bf16Products = false; cuda.useFlashAttention = true; cuda.flashRegisterCaps = true }
        func report(_ s: String) { print("BENCH \(s)") }
        func fmt(_ x: Double) -> String { String(format: "%.3f", x) }
        let start = Date()
        try cuda.buildAllKernels()
        report("device \(cuda.deviceName), \(cuda.multiprocessorCount) SMs; \(cuda.versions); kernels built in "
               + String(format: "%.1f s: ", Date().timeIntervalSince(start)) + cuda.kernelBuildLog.joined(separator: "; "))
        for line in cuda.flashResourceReport() { report(line) }
        for (b, h, s, d) in [(64, 12, 256, 64), (64, 12, 256, 72), (32, 18, 256, 64), (32, 18, 256, 72), (32, 16, 256, 64)] {
            // Token-major [B, S, H, D], as DiT runs it.
            let g = AttentionGeometry(batch: b, seq: s, heads: h, dim: d, scale: 1 / Double(d).squareRoot())
            let bh = b * h, count = g.count
            let x = (0..<8).map { i -> Storage in
                let t = cuda.allocate(count, .float32)
                cuda.random(t, normal: true, seed: UInt64(20 + i), counter: 0)
                return t
            }
            let o = cuda.allocate(count, .float32), to = cuda.allocate(count, .float32), lse = cuda.allocate(g.rows, .float32)
            let grads = (0..<6).map { _ in cuda.allocate(count, .float32) }
            // Products of [s, d] x [d, s] size per head: forward 2, with tangent 6; backward 5 (S, dP, dV, dQ, dK),
            // with tangents 15 (and the recomputed pre-pass on top, not counted).
            let unit = 2.0 * Double(bh) * Double(s) * Double(s) * Double(d) / 1e9
            // BF16 without bf16 copies of the inputs (every tile rounded from float32), with copies of q, k, tq and tk
            // (what DiT's q and k norms write), and of every input (q, k, v, their tangents, go, gto): the copies are
            // attached in this order and stay (the modes after a copy mode see its copies).
            let qk = [0, 1, 3, 4]
            let modes: [(String, [Int])] = [("warp kernels", []), ("flash 3xTF32", []), ("flash 3xTF32 uncapped", []),
                                            ("flash TF32", []), ("flash BF16", []), ("flash BF16, q k copies", qk),
                                            ("flash BF16 uncapped, q k copies", qk), ("flash BF16, all copies", Array(0..<8))]
            for (mode, copied) in modes {
                cuda.useFlashAttention = mode != "warp kernels"
                cuda.allowTF32 = mode == "flash TF32"
                cuda.bf16Products = mode.hasPrefix("flash BF16")
                cuda.flashRegisterCaps = !mode.contains("uncapped")
                for i in copied { _ = cuda.bf16Operand(x[i]) }
                let slow = mode == "warp kernels"
                func median(_ body: () -> Void) -> Double {
                    let runs = (0..<(slow ? 3 : 7)).map { _ in cuda.milliseconds(iterations: slow ? 2 : 10, warmup: 1, body) }
                    return runs.sorted()[runs.count / 2]
                }
                let fwd = median {
                    cuda.attention(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, o: o, to: nil, lse: lse, mu: nil, geometry: g)
                }
                let fwdT = median {
                    cuda.attention(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], o: o, to: to, lse: lse, mu: nil, geometry: g)
                }
                let bwd = median {
                    cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: nil, tk: nil, tv: nil, forward: nil, lse: lse,
                                           go: x[6], gto: nil, dq: grads[0], dk: grads[1], dv: grads[2], dtq: nil, dtk: nil, dtv: nil,
                                           geometry: g)
                }
                let bwdT = median {
                    cuda.attentionBackward(q: x[0], k: x[1], v: x[2], tq: x[3], tk: x[4], tv: x[5], forward: nil, lse: lse,
                                           go: x[6], gto: x[7], dq: grads[0], dk: grads[1], dv: grads[2], dtq: grads[3],
                                           dtk: grads[4], dtv: grads[5], geometry: g)
                }
                report("attention B=\(b) H=\(h) S=\(s) D=\(d) \(mode): forward \(fmt(fwd)) ms (\(fmt(2 * unit / fwd)) TFLOP/s), "
                       + "forward+tangent \(fmt(fwdT)) ms (\(fmt(6 * unit / fwdT))), backward \(fmt(bwd)) ms (\(fmt(5 * unit / bwd))), "
                       + "backward with tangents \(fmt(bwdT)) ms (\(fmt(15 * unit / bwdT)))")
            }
        }
    }
}
