/// The single-precision register tile of the CPU's matrix product (TensorCore's `PackedGEMM` packs the operands
/// and splits the work). This module alone is compiled for AVX2 and FMA (Package.swift), so that its SIMD
/// products become fused multiply-adds on 256-bit registers; TensorCore calls it only on a processor that has
/// both, and nothing here is inlined into code built for plain x86-64.
public enum AVX2SGEMM {
    /// The register tile: 6 rows by 16 columns, 12 of the 16 vector registers accumulating.
    public static let rows = 6, columns = 16

    /// tile(C) = alpha * A B + beta * tile(C) (beta 0: C not read) for every 16-column panel of one block of
    /// up to 6 rows: `a` holds the block packed as `depth` groups of 6 values, `b` the panels one after another,
    /// each `depth` groups of 16. `rowCount` and `columnCount` clip the tiles at the matrix's edges.
    @inline(never)
    public static func multiplyBlock(depth: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
                                     ldc: Int, rowCount: Int, columnCount: Int, alpha: Float, beta: Float) {
        var j0 = 0, pb = b
        while j0 < columnCount {
            let width = min(columns, columnCount - j0)
            if rowCount == rows && width == columns {
                tile(depth, a, pb, c + j0, ldc, alpha, beta)
            } else {
                // The edge: a full tile into a scratch tile, then the part that lies inside C.
                withUnsafeTemporaryAllocation(of: Float.self, capacity: rows * columns) { s in
                    let scratch = s.baseAddress!
                    scratch.update(repeating: 0, count: rows * columns)
                    for i in 0..<rowCount { for j in 0..<width { scratch[i * columns + j] = c[i * ldc + j0 + j] } }
                    tile(depth, a, pb, scratch, columns, alpha, beta)
                    for i in 0..<rowCount { for j in 0..<width { c[i * ldc + j0 + j] = scratch[i * columns + j] } }
                }
            }
            j0 += columns
            pb += depth * columns
        }
    }

    @inline(__always)
    static func tile(_ depth: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                     _ ldc: Int, _ alpha: Float, _ beta: Float) {
        typealias V = SIMD8<Float>
        var c00 = V(), c01 = V(), c10 = V(), c11 = V(), c20 = V(), c21 = V()
        var c30 = V(), c31 = V(), c40 = V(), c41 = V(), c50 = V(), c51 = V()
        var pa = a, pb = UnsafeRawPointer(b)
        for _ in 0..<depth {
            let b0 = pb.loadUnaligned(as: V.self), b1 = pb.loadUnaligned(fromByteOffset: 32, as: V.self)
            var x = V(repeating: pa[0]); c00.addProduct(x, b0); c01.addProduct(x, b1)
            x = V(repeating: pa[1]); c10.addProduct(x, b0); c11.addProduct(x, b1)
            x = V(repeating: pa[2]); c20.addProduct(x, b0); c21.addProduct(x, b1)
            x = V(repeating: pa[3]); c30.addProduct(x, b0); c31.addProduct(x, b1)
            x = V(repeating: pa[4]); c40.addProduct(x, b0); c41.addProduct(x, b1)
            x = V(repeating: pa[5]); c50.addProduct(x, b0); c51.addProduct(x, b1)
            pa += 6
            pb += 64
        }
        @inline(__always) func store(_ row: Int, _ lo: V, _ hi: V) {
            let p = UnsafeMutableRawPointer(c + row * ldc)
            if beta == 0 {
                p.storeBytes(of: lo * alpha, as: V.self)
                p.storeBytes(of: hi * alpha, toByteOffset: 32, as: V.self)
            } else {
                p.storeBytes(of: lo * alpha + p.loadUnaligned(as: V.self) * beta, as: V.self)
                p.storeBytes(of: hi * alpha + p.loadUnaligned(fromByteOffset: 32, as: V.self) * beta, toByteOffset: 32, as: V.self)
            }
        }
        store(0, c00, c01); store(1, c10, c11); store(2, c20, c21)
        store(3, c30, c31); store(4, c40, c41); store(5, c50, c51)
    }
}

extension AVX2SGEMM {
    /// Y[i, j] = alpha * <row i of A, row j of B> + beta * Y[i, j] (beta 0: Y not read), rows of length k:
    /// A B^T with few columns (a layer's output of 2-D points), where packing 16-column panels would mostly pad.
    @inline(never)
    public static func rowDots(k: Int, a: UnsafePointer<Float>, m: Int, b: UnsafePointer<Float>, n: Int,
                               y: UnsafeMutablePointer<Float>, alpha: Float, beta: Float) {
        typealias V = SIMD8<Float>
        let vectors = k / 8
        for i in 0..<m {
            let ra = UnsafeRawPointer(a + i * k)
            for j in 0..<n {
                let rb = UnsafeRawPointer(b + j * k)
                var s0 = V(), s1 = V()
                var v = 0
                while v + 2 <= vectors {
                    s0.addProduct(ra.loadUnaligned(fromByteOffset: v * 32, as: V.self), rb.loadUnaligned(fromByteOffset: v * 32, as: V.self))
                    s1.addProduct(ra.loadUnaligned(fromByteOffset: v * 32 + 32, as: V.self), rb.loadUnaligned(fromByteOffset: v * 32 + 32, as: V.self))
                    v += 2
                }
                if v < vectors {
                    s0.addProduct(ra.loadUnaligned(fromByteOffset: v * 32, as: V.self), rb.loadUnaligned(fromByteOffset: v * 32, as: V.self))
                }
                var s = (s0 + s1).sum()
                for p in (vectors * 8)..<k { s += a[i * k + p] * b[j * k + p] }
                y[i * n + j] = beta == 0 ? alpha * s : alpha * s + beta * y[i * n + j]
            }
        }
    }
}
