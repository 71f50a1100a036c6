import AVX2Kernels

/// Float32 matrix products without a BLAS: the operands packed into the layout of `AVX2SGEMM`'s 6 x 16 register
/// tile (B once per product, A in groups of rows per thread), blocked in depth so that a block of B stays in the
/// core's L2 cache, and split over the cores by blocks of rows. Used where `AVX2.enabled`; elsewhere
/// `Kernels.portableGemm` runs.
enum PackedGEMM {
    /// Depth of the panels packed at once: a block of B (256 x n floats) stays in the core's L2 cache.
    static let depthBlock = 256
    /// Blocks of rows of A packed at once (48 rows x 256 depths: 48 KB, in L1 and L2).
    static let groupBlocks = 8

    /// y_i = alpha op(a_i) op(b_i) + beta y_i for every batch entry i (row-major; op transposes when asked).
    /// Entries run in parallel when there are enough of them to occupy the cores, else blocks of rows do.
    static func multiply(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                         batch: Int, m: Int, n: Int, k: Int, transA: Bool, transB: Bool, strideA: Int, strideB: Int,
                         alpha: Float, beta: Float) {
        if batch >= Parallel.cores {
            Parallel.forRanges(batch, grain: Swift.max(1, 200_000 / Swift.max(m * n * k, 1))) { entries in
                for i in entries {
                    multiply(a + i * strideA, b + i * strideB, y + i * m * n, m: m, n: n, k: k, transA: transA, transB: transB,
                             alpha: alpha, beta: beta, parallel: false)
                }
            }
        } else {
            for i in 0..<batch {
                multiply(a + i * strideA, b + i * strideB, y + i * m * n, m: m, n: n, k: k, transA: transA, transB: transB,
                         alpha: alpha, beta: beta, parallel: true)
            }
        }
    }

    /// One product; `parallel`: split over the cores by blocks of rows where it is large enough.
    static func multiply(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                         m: Int, n: Int, k: Int, transA: Bool, transB: Bool, alpha: Float, beta: Float, parallel: Bool) {
        let mr = AVX2SGEMM.rows, nr = AVX2SGEMM.columns
        // A piece of work below about 200k multiply-adds runs on one core: waking others costs more.
        let grainFlops = 200_000
        if k == 0 {
            for i in 0..<(m * n) { y[i] = beta == 0 ? 0 : beta * y[i] }
            return
        }
        if !transA && transB && n < nr / 2 {
            // A few columns (a layer's 2-D output): dot products of rows, where panels of 16 would be mostly padding.
            let rows = { (r: Range<Int>) in
                AVX2SGEMM.rowDots(k: k, a: a + r.lowerBound * k, m: r.count, b: b, n: n, y: y + r.lowerBound * n,
                                  alpha: alpha, beta: beta)
            }
            if parallel { Parallel.forRanges(m, grain: Swift.max(1, grainFlops / Swift.max(n * k, 1)), rows) } else { rows(0..<m) }
            return
        }
        let panels = (n + nr - 1) / nr, rowBlocks = (m + mr - 1) / mr
        // From the buffer cache: products of the same sizes come back every step.
        let packedBytes = k * panels * nr * MemoryLayout<Float>.stride
        let packedB = BufferCache.shared.take(packedBytes).assumingMemoryBound(to: Float.self)
        defer { BufferCache.shared.give(UnsafeMutableRawPointer(packedB), bytes: packedBytes) }
        if parallel {
            // Panels packed on every core, so that the others do not wait while one packs (B of a weight gradient
            // is the layer's whole input: 1 MB for the 2-D MLP's batch of 1024).
            Parallel.forRanges(panels, grain: Swift.max(1, 16_384 / (k * nr))) { r in
                packB(b, packedB, n: n, k: k, transB: transB, panels: panels, packing: r)
            }
        } else {
            packB(b, packedB, n: n, k: k, transB: transB, panels: panels, packing: 0..<panels)
        }
        let work = { (blocks: Range<Int>) in
            let packedA = UnsafeMutablePointer<Float>.allocate(capacity: groupBlocks * mr * depthBlock)
            defer { packedA.deallocate() }
            var p0 = 0
            while p0 < k {
                let depth = Swift.min(depthBlock, k - p0)
                var g = blocks.lowerBound
                while g < blocks.upperBound {
                    let group = g..<Swift.min(g + groupBlocks, blocks.upperBound)
                    let i0 = group.lowerBound * mr, rows = Swift.min(group.count * mr, m - i0)
                    packA(a, packedA, m: m, k: k, transA: transA, i0: i0, rows: rows, p0: p0, depth: depth)
                    for block in 0..<group.count {
                        let first = i0 + block * mr
                        // Later depth blocks add to what the first one wrote.
                        AVX2SGEMM.multiplyBlock(depth: depth, a: packedA + block * mr * depth, b: packedB + p0 * panels * nr,
                                                c: y + first * n, ldc: n, rowCount: Swift.min(mr, m - first), columnCount: n,
                                                alpha: alpha, beta: p0 == 0 ? beta : 1)
                    }
                    g = group.upperBound
                }
                p0 += depth
            }
        }
        if parallel {
            Parallel.forRanges(rowBlocks, grain: Swift.max(1, grainFlops / Swift.max(mr * n * k, 1)), work)
        } else {
            work(0..<rowBlocks)
        }
    }

    /// op(B) (k x n) as depth blocks of panels: within a block of depth d starting at p0 (offset p0 * panels * 16),
    /// panel j holds d groups of 16 columns, zero past n. Writes the panels in `packing` (of 0..<panels).
    static func packB(_ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, n: Int, k: Int, transB: Bool, panels: Int,
                      packing: Range<Int>) {
        let nr = AVX2SGEMM.columns
        var p0 = 0
        while p0 < k {
            let depth = min(depthBlock, k - p0), base = out + p0 * panels * nr
            for panel in packing {
                let j0 = panel * nr, width = min(nr, n - j0), dst = base + panel * depth * nr
                if width < nr { dst.update(repeating: 0, count: depth * nr) }
                if transB {
                    // op(B)[p, j] = B[j, p]: column j of op(B) is row j of B.
                    for jj in 0..<width {
                        let src = b + (j0 + jj) * k + p0
                        for p in 0..<depth { dst[p * nr + jj] = src[p] }
                    }
                } else if width == nr {
                    for p in 0..<depth {
                        let row = UnsafeRawPointer(b + (p0 + p) * n + j0).loadUnaligned(as: SIMD16<Float>.self)
                        UnsafeMutableRawPointer(dst + p * nr).storeBytes(of: row, as: SIMD16<Float>.self)
                    }
                } else {
                    for p in 0..<depth { (dst + p * nr).update(from: b + (p0 + p) * n + j0, count: width) }
                }
            }
            p0 += depth
        }
    }

    /// Rows i0 ..< i0 + rows, depths p0 ..< p0 + depth of op(A), as blocks of 6 rows one after another, each
    /// depth groups of 6 values; zero past the last row. Reads A along its rows either way.
    static func packA(_ a: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, m: Int, k: Int, transA: Bool,
                      i0: Int, rows: Int, p0: Int, depth: Int) {
        let mr = AVX2SGEMM.rows, blocks = (rows + mr - 1) / mr
        if rows % mr != 0 { (out + (blocks - 1) * mr * depth).update(repeating: 0, count: mr * depth) }
        if transA {
            for p in 0..<depth {
                let src = a + (p0 + p) * m + i0
                var r = 0
                while r < rows {
                    let dst = out + (r / mr) * mr * depth + p * mr, count = min(mr, rows - r)
                    if count == mr {
                        dst[0] = src[r]; dst[1] = src[r + 1]; dst[2] = src[r + 2]
                        dst[3] = src[r + 3]; dst[4] = src[r + 4]; dst[5] = src[r + 5]
                    } else {
                        for q in 0..<count { dst[q] = src[r + q] }
                    }
                    r += mr
                }
            }
        } else {
            for r in 0..<rows {
                let src = a + (i0 + r) * k + p0, dst = out + (r / mr) * mr * depth + r % mr
                for p in 0..<depth { dst[p * mr] = src[p] }
            }
        }
    }
}
