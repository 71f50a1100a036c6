import XCTest
import TensorCore
@testable import CUDABackend

/// The CUDA backend, or a clean skip where this machine has no usable GPU (CI has none). Every new device
/// allocation is filled with NaN, so an output element a kernel leaves unwritten fails the comparisons.
func cudaOrSkip() throws -> CUDABackend {
    let cuda: CUDABackend
    do { cuda = try CUDABackend.load() } catch { throw XCTSkip("no CUDA device here: \(error)") }
    cuda.poisonAllocations = true
    cuda.allowTF32 = false
    return cuda
}

extension XCTestCase {
    /// `cudaOrSkip()`, and at the end of the test a line with the largest relative errors it saw
    /// ("ERRMAX test: float32 e (at label) ..."), so the margins to the tolerances are on record.
    func cudaOrSkip() throws -> CUDABackend {
        let cuda = try CUDABackendTests.cudaOrSkip()
        let name = self.name
        addTeardownBlock { ErrorRecord.report(name) }
        return cuda
    }
}

/// The largest relative error per element type seen by the comparisons of the running test.
enum ErrorRecord {
    nonisolated(unsafe) static var worst: [DType: (err: Double, tol: Double, label: String)] = [:]

    static func record(_ dtype: DType, _ err: Double, _ tol: Double, _ label: String) {
        if let w = worst[dtype], w.err / Swift.max(w.tol, 1e-300) >= err / Swift.max(tol, 1e-300) { return }
        worst[dtype] = (err, tol, label)
    }

    static func report(_ test: String) {
        let parts = [DType.float32, .float64].compactMap { d in
            worst[d].map { "\(d) \(String(format: "%.2e", $0.err)) (tolerance \($0.tol), at \($0.label.prefix(80)))" }
        }
        if !parts.isEmpty { print("ERRMAX \(test): " + parts.joined(separator: "; ")) }
        worst = [:]
    }
}

let cpu = CPUBackend.shared

/// SplitMix64 inputs: fresh each run (the seed is in every failure message), reproducible from the seed
/// (TVM_TEST_SEED pins it).
struct TestRandom {
    var state: UInt64
    let seed: UInt64

    init() {
        let pinned = ProcessInfo.processInfo.environment["TVM_TEST_SEED"].flatMap { UInt64($0) }
        seed = pinned ?? UInt64.random(in: 1...UInt64.max)
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func uniform(_ lo: Double = 0, _ hi: Double = 1) -> Double {
        lo + (hi - lo) * Double(next() >> 11) / Double(1 << 53)
    }

    mutating func normal() -> Double {
        let u = Swift.max(uniform(), 1e-300), v = uniform()
        return (-2 * Foundation.log(u)).squareRoot() * Foundation.cos(2 * .pi * v)
    }

    mutating func normals(_ n: Int, scale: Double = 1) -> [Double] { (0..<n).map { _ in scale * normal() } }
    mutating func uniforms(_ n: Int, _ lo: Double, _ hi: Double) -> [Double] { (0..<n).map { _ in uniform(lo, hi) } }
    mutating func int(_ below: Int) -> Int { Int(next() % UInt64(below)) }
}

/// Relative error ||a - b|| / ||b||; infinite when a has a NaN or infinity where b has a finite value
/// (an unwritten, poisoned element), or when the positions of NaNs differ.
func relativeError(_ a: [Double], _ b: [Double], floor: Double = 0) -> Double {
    guard a.count == b.count else { return .infinity }
    var num = 0.0, den = 0.0
    for (x, y) in zip(a, b) {
        if y.isNaN { if !x.isNaN { return .infinity }; continue }
        if y.isInfinite { if x != y { return .infinity }; continue }
        if !x.isFinite { return .infinity }
        num += (x - y) * (x - y)
        den += y * y
    }
    den = Swift.max(den, floor * floor)
    if den == 0 { return num.squareRoot() }
    return num.squareRoot() / den.squareRoot()
}

func tolerance(_ dtype: DType) -> Double { dtype == .float32 ? 1e-5 : 1e-12 }

/// A backend with every fused capability, as the CPU and CUDA backends are: their kernels are compared directly.
typealias FusedBackend = Backend & NormBackend & ScaledSumBackend & ActivationBackend & LinearBackend & AttentionBackend
    & OptimizerBackend

/// Runs `body` on the CPU backend and on the GPU over the same input values, and compares every output.
/// Outputs start from `initial` values where given (in-place ops), else from uninitialised memory (NaN on
/// the GPU). `body` gets the backend, the input storages and the output storages.
///
/// With `reference64`, a float32 run is compared with the CPU backend in float64 on the same (float32) input
/// values: for ops whose float32 CPU result is itself off by more than the tolerance (long sequential sums).
func compareWithCPU(_ label: String, _ cuda: CUDABackend, dtype: DType, tolerance tol: Double? = nil,
                    reference64: Bool = false, errorFloor: Double = 0,
                    inputs: [[Double]], outputs: [(count: Int, initial: [Double]?)],
                    file: StaticString = #filePath, line: UInt = #line,
                    _ body: (any FusedBackend, [Storage], [Storage]) -> Void) {
    let wide = reference64 && dtype == .float32
    func round(_ v: [Double]) -> [Double] { dtype == .float32 ? v.map { Double(Float($0)) } : v }
    func run(_ b: any FusedBackend, _ t: DType) -> [[Double]] {
        let ins = inputs.map { b.upload(round($0), dtype: t) }
        let outs = outputs.map { o -> Storage in
            if let v = o.initial { return b.upload(round(v), dtype: t) }
            let s = b.allocate(o.count, t)
            if b !== cuda { b.fill(s, value: .nan) }
            return s
        }
        body(b, ins, outs)
        b.synchronize()
        return outs.map { b.download($0) }
    }
    let expected = run(cpu, wide ? .float64 : dtype), actual = run(cuda, dtype)
    for i in expected.indices {
        let err = relativeError(actual[i], expected[i], floor: errorFloor), t = tol ?? tolerance(dtype)
        ErrorRecord.record(dtype, err, t, label)
        XCTAssertLessThanOrEqual(err, t, "\(label) [\(dtype)] output \(i): relative error \(err)"
                                 + (wide ? " (against float64)" : ""), file: file, line: line)
    }
}

/// The bfloat16 value nearest x (ties to even), as a Float: what a bf16-only storage holds for x.
func bf16Rounded(_ x: Float) -> Float {
    let b = x.bitPattern
    if x.isNaN { return x }
    return Float(bitPattern: (b &+ 0x7fff &+ ((b >> 16) & 1)) & 0xffff_0000)
}

/// Random values that bfloat16 holds exactly, so that a float32 tensor and a bf16-only one hold the same values.
func bf16Values(_ n: Int, scale: Double = 1, shift: Double = 0, _ r: inout TestRandom) -> [Float] {
    r.normals(n, scale: scale).map { bf16Rounded(Float($0 + shift)) }
}

/// `t` as a tensor that holds only its bf16 values.
func bf16Only(_ t: Tensor, _ cuda: CUDABackend) -> Tensor {
    let s = cuda.keepingOperandCopyOnly(t.storage)!
    XCTAssertTrue(holdsBF16Only(s))
    return Tensor(storage: s, shape: t.shape)
}

func holdsBF16Only(_ s: Storage) -> Bool { (s as! CUDAStorage).operandCopyOnly }

/// Asserts `got` (widened) equals `expected` rounded to bfloat16, element for element.
func assertRoundedEqual(_ got: Tensor, _ expected: [Float], _ label: String, file: StaticString = #filePath, line: UInt = #line) {
    let values = got.fullPrecisionValues().floats
    XCTAssertEqual(values.count, expected.count, label, file: file, line: line)
    let mismatches = zip(values, expected).filter { $0.bitPattern != bf16Rounded($1).bitPattern }
    XCTAssertTrue(mismatches.isEmpty, "\(label): \(mismatches.count) of \(values.count) differ, e.g. \(mismatches.prefix(3))",
                  file: file, line: line)
}

/// The values rounded to float32 and then to bfloat16 (to nearest even), as the bf16 operand copies hold them.
func roundedToBF16(_ v: [Double]) -> [Double] {
    v.map { x in
        let b = Float(x).bitPattern
        return Double(Float(bitPattern: (b &+ 0x7fff &+ ((b >> 16) & 1)) & 0xffff_0000))
    }
}

/// A tensor with the same values on the CPU and on the GPU.
func pair(_ values: [Double], _ shape: [Int], _ dtype: DType, _ cuda: CUDABackend) -> (cpu: Tensor, gpu: Tensor) {
    (Tensor(values, shape: shape, dtype: dtype, on: .cpu), Tensor(values, shape: shape, dtype: dtype, on: cuda.device))
}

/// As `assertClose`, with the error measured against `magnitudes` (one per element, the size the rounding of both
/// sides is bounded by, such as a sum's sum of absolute values) instead of against the CPU's values.
func assertCloseAgainst(_ gpu: Tensor, _ cpuT: Tensor, magnitudes: [Double], _ tol: Double, _ label: String,
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(gpu.shape, cpuT.shape, "\(label): shape", file: file, line: line)
    let difference = zip(gpu.doubles, cpuT.doubles).map { $0 - $1 }
    // A NaN or infinity on either side makes the error NaN or infinite, which fails the check.
    let err = (difference.reduce(0) { $0 + $1 * $1 } / magnitudes.reduce(0) { $0 + $1 * $1 }).squareRoot()
    ErrorRecord.record(gpu.dtype, err, tol, label)
    XCTAssertLessThanOrEqual(err, tol, "\(label): error \(err) relative to the magnitudes", file: file, line: line)
}

func assertClose(_ gpu: Tensor, _ cpuT: Tensor, _ tol: Double, _ label: String, errorFloor: Double = 0,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(gpu.shape, cpuT.shape, "\(label): shape", file: file, line: line)
    let err = relativeError(gpu.doubles, cpuT.doubles, floor: errorFloor)
    ErrorRecord.record(gpu.dtype, err, tol, label)
    XCTAssertLessThanOrEqual(err, tol, "\(label): relative error \(err)", file: file, line: line)
}
