#if canImport(Glibc)
import Glibc
#endif
import TensorCore

// Matrix products through cuBLAS, and linear layers (LinearBackend) with the bias (and GELU) in cuBLASLt's GEMM
// epilogues.
extension CUDABackend: LinearBackend {
    public func matmul(_ a: Storage, _ b: Storage, _ y: Storage, batch: Int, m: Int, n: Int, k: Int,
                       transA: Bool, transB: Bool, strideA: Int, strideB: Int, alpha: Double, beta: Double) {
        guard m > 0 && n > 0 && batch > 0 else { return }
        ensureCurrent()
        // Row-major Y[M, N] = op(A) op(B) is column-major Y^T[N, M] = op(B)^T op(A)^T: cuBLAS gets B first.
        let opB = transB ? CUBLAS.opT : CUBLAS.opN, opA = transA ? CUBLAS.opT : CUBLAS.opN
        let ldb = Int32(Swift.max(1, transB ? k : n)), lda = Int32(Swift.max(1, transA ? m : k))
        // An output kept as its bf16 copy alone (`lowPrecisionStorage`) is written in bf16 by the bf16 product.
        let (yf, y16) = float32OrBF16(y)
        precondition(y16 == 0 || (bf16Products && beta == 0 && y.dtype == .float32),
                     "a product into a tensor kept only as its bf16 copy needs bf16 products and nothing to add to")
        let py = UnsafeMutableRawPointer(bitPattern: UInt(y16 != 0 ? y16 : yf))
        // The float32 operands' addresses, for the products that read them (bf16 products read the copies).
        func float32Operands() -> (UnsafeRawPointer?, UnsafeRawPointer?) {
            (UnsafeRawPointer(bitPattern: UInt(addr(a))), UnsafeRawPointer(bitPattern: UInt(addr(b))))
        }
        let (M, N, K, B) = (Int32(n), Int32(m), Int32(k), Int32(batch))
        let sA = Int64(strideB), sB = Int64(strideA), sC = Int64(m * n)
        let started = profiler?.begin(stream)
        defer {
            if let started { profiler!.end(started, "gemm \(batch)x\(m)x\(n)x\(k)\(transA ? " tA" : "")\(transB ? " tB" : "")", stream) }
        }
        if y.dtype == .float64 {
            let (pa, pb) = float32Operands()
            var al = alpha, be = beta
            blas.must(blas.dgemmStridedBatched(blasHandle, opB, opA, M, N, K, &al, pb, ldb, sA, pa, lda, sB,
                                               &be, py, M, sC, B), "cublasDgemmStridedBatched(\(m)x\(n)x\(k), batch \(batch))")
        } else if bf16Products {
            var al = Float(alpha), be = Float(beta)
            if beta != 0 { forgetBF16Copy(of: y) }
            beginBF16Call()
            let a16 = UnsafeRawPointer(bitPattern: UInt(bf16Operand(a))), b16 = UnsafeRawPointer(bitPattern: UInt(bf16Operand(b)))
            blas.must(blas.gemmStridedBatchedEx(blasHandle, opB, opA, M, N, K, &al, b16, CUBLAS.r16BF, ldb, sA,
                                                a16, CUBLAS.r16BF, lda, sB, &be, py, y16 != 0 ? CUBLAS.r16BF : CUBLAS.r32F, M, sC, B,
                                                CUBLAS.compute32F, CUBLAS.gemmDefault),
                      "cublasGemmStridedBatchedEx(BF16, \(m)x\(n)x\(k), batch \(batch))")
        } else if allowTF32 {
            let (pa, pb) = float32Operands()
            var al = Float(alpha), be = Float(beta)
            blas.must(blas.gemmStridedBatchedEx(blasHandle, opB, opA, M, N, K, &al, pb, CUBLAS.r32F, ldb, sA,
                                                pa, CUBLAS.r32F, lda, sB, &be, py, CUBLAS.r32F, M, sC, B,
                                                CUBLAS.compute32FFastTF32, CUBLAS.gemmDefault),
                      "cublasGemmStridedBatchedEx(TF32, \(m)x\(n)x\(k), batch \(batch))")
        } else {
            let (pa, pb) = float32Operands()
            var al = Float(alpha), be = Float(beta)
            blas.must(blas.sgemmStridedBatched(blasHandle, opB, opA, M, N, K, &al, pb, ldb, sA, pa, lda, sB,
                                               &be, py, M, sC, B), "cublasSgemmStridedBatched(\(m)x\(n)x\(k), batch \(batch))")
        }
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuBLAS") }
    }

    public func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int) {
        if let bias, epilogueProduct(.bias, m: outFeatures, n: rows, k: inFeatures, a: w, b: x, d: y, vector: bias) { return }
        // Without a bias the product writes an output kept as its bf16 copy alone itself; with one (which cuBLASLt did
        // not take) such an output is made in float32, then narrowed.
        guard bias != nil else {
            linearByGEMM(x, w, bias: nil, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
            return
        }
        writingFloat32(y) { linearByGEMM(x, w, bias: bias, $0!, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures) }
    }

    /// The bias and the GELU in the product's epilogue (one pass over y); without a bias, or where cuBLASLt is
    /// off or has no algorithm for it, `linear` and the GELU kernel.
    public func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                           outFeatures: Int) {
        if let bias, epilogueProduct(.biasGELU, m: outFeatures, n: rows, k: inFeatures, a: w, b: x, d: y, vector: bias) {
            geluEpilogueCalls += 1
            return
        }
        // An output kept as its bf16 copy alone that cuBLASLt could not write is made in float32, then narrowed.
        writingFloat32(y) { linearThenGELU(x, w, bias: bias, $0!, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures) }
    }

    public func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                                     outFeatures: Int) {
        if inFeatures * outFeatures <= 16384 && rows >= 8192, let chunk = [1024, 512, 256].first(where: { rows % $0 == 0 }) {
            // A small weight over many rows (a DiT's patch embedding and final layer: 4 x 384 over B * N rows) is one
            // product of a reduction length of B * N, which cuBLASLt ran on a few blocks (1.4-1.9 ms for 384 x 4 x
            // 32768). Split into row chunks: a batched product of partial gradients, then their sum.
            let parts = rows / chunk, partial = allocate(parts * inFeatures * outFeatures, gw.dtype)
            matmul(g, x, partial, batch: parts, m: outFeatures, n: inFeatures, k: chunk, transA: true, transB: false,
                   strideA: chunk * outFeatures, strideB: chunk * inFeatures, alpha: 1, beta: 0)
            reduce(.sum, partial, gw, outer: 1, n: parts, inner: inFeatures * outFeatures)
            if let gbias { reduce(.sum, widened(g), gbias, outer: 1, n: rows, inner: outFeatures) }
            return
        }
        if let gbias, epilogueProduct(.biasGradient, m: inFeatures, n: outFeatures, k: rows, a: x, b: g, d: gw, vector: gbias) {
            return
        }
        // The bias's column sums read float32: a cotangent kept as its bf16 copy alone is widened for them.
        linearWeightGradientByGEMM(x, gbias == nil ? g : widened(g), gw: gw, gbias: gbias, rows: rows,
                                   inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// gx = g W + plus through cuBLASLt with plus as C and a new float32 gx as D, the products' operands as everywhere.
    public func linearInputGradient(_ g: Storage, _ w: Storage, plus: Storage, rows: Int, inFeatures: Int,
                                    outFeatures: Int) -> Storage? {
        guard useCUBLASLt, float32OrBF16(plus).bf16 == 0 else { return nil }
        let gx = allocate(rows * inFeatures, plus.dtype)
        return epilogueProduct(.accumulate, m: inFeatures, n: rows, k: outFeatures, a: w, b: g, d: gx, vector: nil, c: plus)
            ? gx : nil
    }

    /// Queues D = op(A) op(B) (+ C where given, a float32 matrix of D's shape) with the epilogue's bias vector (see
    /// LinearEpilogue for the operands' layouts) through cuBLASLt. false where cuBLASLt is off or missing or has no
    /// algorithm for the product: the caller takes the GEMM path. The heuristic runs once per configuration; its choice
    /// is kept.
    func epilogueProduct(_ epilogue: LinearEpilogue, m: Int, n: Int, k: Int, a: Storage, b: Storage, d: Storage,
                         vector: Storage?, c: Storage? = nil) -> Bool {
        guard useCUBLASLt, let blasLt, m > 0 && n > 0 && k > 0 else { return false }
        let (lt, handle) = blasLt
        ensureCurrent()
        // D is written in bf16 where it is kept as its bf16 copy alone (`lowPrecisionStorage`), with the bias's bf16
        // copy (cuBLASLt's bias takes D's type).
        let (df, d16) = float32OrBF16(d)
        let bf16 = bf16Products && d.dtype == .float32
        // The operands the product reads: under bf16 products their copies (from the allocator, aligned at least as
        // well as the float32 originals).
        if bf16 { beginBF16Call() }
        let pa = bf16 ? bf16Operand(a) : addr(a), pb = bf16 ? bf16Operand(b) : addr(b)
        let pd = d16 != 0 ? d16 : df, pv = vector.map { d16 != 0 ? bf16Operand($0) : addr($0) } ?? 0, pc = c.map(addr) ?? pd
        let key = LinearProductKey(epilogue: epilogue, dtype: d.dtype, tf32: allowTF32 && d.dtype == .float32, bf16: bf16,
                                   bf16Output: d16 != 0, m: m, n: n, k: k,
                                   alignment: 1 << Swift.min(8, (pa | pb | pd | pv | pc).trailingZeroBitCount))
        let product: LinearProduct
        if let known = linearProducts[key] {
            guard let known else { return false }
            product = known
            if pv != 0 { lt.setDescAttribute(product.desc, CUBLASLt.descBiasPointer, pv, "BIAS_POINTER") }
        } else {
            let planned = lt.plan(handle, key, vector: pv)
            linearProducts.updateValue(planned, forKey: key)
            guard let planned else { return false }
            product = planned
        }
        let workspace = product.workspaceBytes > 0 ? allocate((product.workspaceBytes + 3) / 4, .float32) : nil
        func run(_ alpha: UnsafeRawPointer, _ beta: UnsafeRawPointer) -> CUBLASLt.Status {
            // Without C, beta = 0 and C = D: nothing is read from the output.
            let y = UnsafeMutableRawPointer(bitPattern: UInt(pd))
            return lt.cublasLtMatmul(handle, product.desc, alpha, UnsafeRawPointer(bitPattern: UInt(pa)), product.a,
                                     UnsafeRawPointer(bitPattern: UInt(pb)), product.b, beta,
                                     UnsafeRawPointer(bitPattern: UInt(pc)), product.d, y, product.d,
                                     product.algo, workspace.map { UnsafeMutableRawPointer(bitPattern: UInt(addr($0))) } ?? nil,
                                     product.workspaceBytes, stream)
        }
        let started = profiler?.begin(stream)
        let status: CUBLASLt.Status
        if d.dtype == .float32 {
            var one: Float = 1, beta: Float = c == nil ? 0 : 1
            status = run(&one, &beta)
        } else {
            var one = 1.0, beta = c == nil ? 0.0 : 1.0
            status = run(&one, &beta)
        }
        withExtendedLifetime(c) {}
        withExtendedLifetime(workspace) {}
        if let started { profiler!.end(started, "\(epilogue) \(m)x\(n)x\(k)", stream) }
        lt.must(status, "cublasLtMatmul(\(epilogue) \(m)x\(n)x\(k), \(d.dtype)\(bf16 ? ", BF16" : key.tf32 ? ", TF32" : ""))")
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuBLASLt") }
        cublasLtCalls += 1
        return true
    }
}
