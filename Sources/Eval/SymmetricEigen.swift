#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// Eigenvalues (ascending) and, when asked for, eigenvectors of a real symmetric matrix, in float64.
///
/// LAPACK's dsyevd (divide and conquer) from the OpenBLAS found at run time, the way TensorCore finds its
/// BLAS, so building needs nothing but the toolchain; without it (or with TVM_NO_BLAS=1), a Householder
/// reduction to tridiagonal form and implicit QR steps with Wilkinson shifts, written here. The fallback is
/// several times slower on a 2048 x 2048 covariance (seconds to tens of seconds) and as accurate.
public enum SymmetricEigen {
    public struct Result {
        /// Ascending.
        public var values: [Double]
        /// Row k (row-major n x n) is a unit eigenvector of values[k]; nil when vectors were not asked for.
        public var vectors: [Double]?
    }

    /// The decomposition of the n x n row-major symmetric matrix `a` (only its lower triangle is read by
    /// LAPACK; the fallback reads the whole matrix, so pass an exactly symmetric one).
    public static func decompose(_ a: [Double], n: Int, vectors: Bool) throws -> Result {
        guard n >= 1, a.count == n * n else {
            throw EvalError("eigen-decomposition: \(a.count) values do not form an \(n)x\(n) matrix")
        }
        if let k = a.firstIndex(where: { !$0.isFinite }) {
            throw EvalError("eigen-decomposition: entry (\(k / n), \(k % n)) is not finite (\(a[k]))")
        }
        if let lapack = LAPACK.dsyevd { return try decomposeLAPACK(lapack, a, n: n, vectors: vectors) }
        return try decomposeTridiagonalQR(a, n: n, vectors: vectors)
    }

    /// Whether `decompose` uses LAPACK (for logs).
    public static var usesLAPACK: Bool { LAPACK.dsyevd != nil }

    // MARK: - LAPACK

    static func decomposeLAPACK(_ dsyevd: LAPACK.Dsyevd, _ a: [Double], n: Int, vectors: Bool) throws -> Result {
        // Column-major in, column-major out: for a symmetric matrix the input reads the same either way, and
        // eigenvector k, column k of the output, is row k of the buffer read row-major.
        var m = a, w = [Double](repeating: 0, count: n)
        var jobz = CChar(UInt8(ascii: vectors ? "V" : "N")), uplo = CChar(UInt8(ascii: "L"))
        var nn = Int32(n), lda = Int32(n), info: Int32 = 0
        // Workspace query first (lwork = liwork = -1), then the real call.
        var lwork: Int32 = -1, liwork: Int32 = -1
        var workSize = 0.0, iworkSize: Int32 = 0
        dsyevd(&jobz, &uplo, &nn, &m, &lda, &w, &workSize, &lwork, &iworkSize, &liwork, &info, 1, 1)
        guard info == 0 else { throw EvalError("LAPACK dsyevd workspace query failed (info \(info))") }
        lwork = Int32(workSize.rounded(.up))
        liwork = iworkSize
        var work = [Double](repeating: 0, count: Int(lwork))
        var iwork = [Int32](repeating: 0, count: Swift.max(1, Int(liwork)))
        dsyevd(&jobz, &uplo, &nn, &m, &lda, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        guard info == 0 else {
            throw EvalError("LAPACK dsyevd failed (info \(info)): the eigenvalue iteration did not converge")
        }
        return Result(values: w, vectors: vectors ? m : nil)
    }

    // MARK: - Fallback

    /// Householder tridiagonalisation A = Q T Q^T, then implicit symmetric QR steps on T (Golub and Van Loan,
    /// Matrix Computations, 8.3), the rotations applied to Q^T when vectors are wanted. Q^T is kept row-major
    /// so both the reflections and the rotations update whole contiguous rows.
    static func decomposeTridiagonalQR(_ a: [Double], n: Int, vectors: Bool) throws -> Result {
        var m = a
        var diagonal = [Double](repeating: 0, count: n), offDiagonal = [Double](repeating: 0, count: n)
        var qt: [Double] = vectors ? identity(n) : []
        m.withUnsafeMutableBufferPointer { m in
            qt.withUnsafeMutableBufferPointer { qt in
                tridiagonalize(m, n: n, qt: vectors ? qt : nil)
            }
            for i in 0..<n { diagonal[i] = m[i * n + i] }
            for i in 0..<(n - 1) { offDiagonal[i] = m[i * n + i + 1] }
        }
        try qt.withUnsafeMutableBufferPointer { qt in
            try tridiagonalQR(&diagonal, &offDiagonal, n: n, qt: vectors ? qt : nil)
        }
        let order = (0..<n).sorted { diagonal[$0] < diagonal[$1] }
        var sortedVectors: [Double]?
        if vectors {
            var v = [Double](repeating: 0, count: n * n)
            for (row, k) in order.enumerated() {
                for j in 0..<n { v[row * n + j] = qt[k * n + j] }
            }
            sortedVectors = v
        }
        return Result(values: order.map { diagonal[$0] }, vectors: sortedVectors)
    }

    static func identity(_ n: Int) -> [Double] {
        var q = [Double](repeating: 0, count: n * n)
        for i in 0..<n { q[i * n + i] = 1 }
        return q
    }

    /// Reduces the symmetric m (row-major, in place) to tridiagonal form with reflections H_k = I - beta v v^T
    /// that zero column k below its subdiagonal; qt (if given) becomes H_{n-3} ... H_0 qt, i.e. Q^T.
    static func tridiagonalize(_ m: UnsafeMutableBufferPointer<Double>, n: Int, qt: UnsafeMutableBufferPointer<Double>?) {
        guard n >= 3 else { return }
        // Raw buffers: these loops are the whole cost, and array bounds checks would stop them vectorising.
        let v = UnsafeMutablePointer<Double>.allocate(capacity: n), p = UnsafeMutablePointer<Double>.allocate(capacity: n)
        let wRow = UnsafeMutablePointer<Double>.allocate(capacity: n)
        defer { v.deallocate(); p.deallocate(); wRow.deallocate() }
        for k in 0..<(n - 2) {
            let lo = k + 1
            // x = m[lo..., k] (= row k by symmetry); v = x - alpha e1 with alpha = -sign(x0) |x| (no cancellation).
            var norm2 = 0.0
            for i in lo..<n { norm2 += m[k * n + i] * m[k * n + i] }
            let x0 = m[k * n + lo]
            let tail2 = norm2 - x0 * x0
            if tail2 == 0 { continue }  // already tridiagonal in this column
            let alpha = x0 >= 0 ? -norm2.squareRoot() : norm2.squareRoot()
            for i in lo..<n { v[i] = m[k * n + i] }
            v[lo] = x0 - alpha
            let vv = v[lo] * v[lo] + tail2
            let beta = 2 / vv
            // p = beta M v on the trailing block; w = p - (beta p.v / 2) v; M -= v w^T + w v^T.
            var pv = 0.0
            for i in lo..<n {
                var s = 0.0
                let row = m.baseAddress! + i * n
                for j in lo..<n { s += row[j] * v[j] }
                p[i] = beta * s
                pv += p[i] * v[i]
            }
            let half = beta * pv / 2
            for i in lo..<n { p[i] -= half * v[i] }
            for i in lo..<n {
                let row = m.baseAddress! + i * n
                let vi = v[i], wi = p[i]
                for j in lo..<n { row[j] -= vi * p[j] + wi * v[j] }
            }
            for i in lo..<n { m[k * n + i] = 0; m[i * n + k] = 0 }
            m[k * n + lo] = alpha
            m[lo * n + k] = alpha
            if let qt {
                // qt = H qt: qt -= beta v (v^T qt), over the rows lo..<n that v touches.
                for j in 0..<n { wRow[j] = 0 }
                for i in lo..<n {
                    let vi = v[i]
                    let row = qt.baseAddress! + i * n
                    for j in 0..<n { wRow[j] += vi * row[j] }
                }
                for i in lo..<n {
                    let f = beta * v[i]
                    let row = qt.baseAddress! + i * n
                    for j in 0..<n { row[j] -= f * wRow[j] }
                }
            }
        }
    }

    /// Diagonalises the symmetric tridiagonal (d, e) (e[i] couples i and i + 1) in place: d ends as the
    /// eigenvalues. Each step works on the lowest unreduced block [lo, hi], shifts by the eigenvalue of its
    /// trailing 2x2 nearer the corner (Wilkinson) and chases the bulge down with rotations.
    static func tridiagonalQR(_ d: inout [Double], _ e: inout [Double], n: Int, qt: UnsafeMutableBufferPointer<Double>?) throws {
        var hi = n - 1
        var steps = 0
        let eps = Double.ulpOfOne
        while hi > 0 {
            if Swift.abs(e[hi - 1]) <= eps * (Swift.abs(d[hi - 1]) + Swift.abs(d[hi])) {
                e[hi - 1] = 0
                hi -= 1
                continue
            }
            var lo = hi - 1
            while lo > 0 && Swift.abs(e[lo - 1]) > eps * (Swift.abs(d[lo - 1]) + Swift.abs(d[lo])) { lo -= 1 }
            if lo > 0 { e[lo - 1] = 0 }
            steps += 1
            if steps > 50 * n {
                throw EvalError("eigen-decomposition: the QR iteration did not converge after \(steps) steps")
            }
            let half = (d[hi - 1] - d[hi]) / 2, b = e[hi - 1]
            let root = (half * half + b * b).squareRoot()
            let shift = d[hi] - b * b / (half + (half >= 0 ? root : -root))
            var x = d[lo] - shift, z = e[lo]
            for k in lo..<hi {
                // Rotation on coordinates k, k + 1 taking (x, z) to (r, 0).
                let r = (x * x + z * z).squareRoot()
                let c = r == 0 ? 1 : x / r, s = r == 0 ? 0 : z / r
                if k > lo { e[k - 1] = r }
                let dk = d[k], dk1 = d[k + 1], ek = e[k]
                d[k] = c * c * dk + 2 * c * s * ek + s * s * dk1
                d[k + 1] = s * s * dk - 2 * c * s * ek + c * c * dk1
                e[k] = c * s * (dk1 - dk) + (c * c - s * s) * ek
                if k + 1 < hi {
                    // The rotation fills (k, k + 2): the bulge the next rotation removes.
                    x = e[k]
                    z = s * e[k + 1]
                    e[k + 1] *= c
                }
                if let qt {
                    let rk = qt.baseAddress! + k * n, rk1 = qt.baseAddress! + (k + 1) * n
                    for j in 0..<n {
                        let a = rk[j], b = rk1[j]
                        rk[j] = c * a + s * b
                        rk1[j] = c * b - s * a
                    }
                }
            }
        }
    }
}

/// dsyevd from a LAPACK found at run time (OpenBLAS bundles one; Debian's liblapack.so.3 also has it).
enum LAPACK {
    /// Fortran calling convention: every argument by reference, then the hidden lengths of the two
    /// character arguments (ignored by implementations that do not use them).
    typealias Dsyevd = @convention(c) (UnsafeMutablePointer<CChar>, UnsafeMutablePointer<CChar>, UnsafeMutablePointer<Int32>,
                                       UnsafeMutablePointer<Double>, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Double>,
                                       UnsafeMutablePointer<Double>, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>,
                                       UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>, Int, Int) -> Void

    static let candidates = ["libopenblas.so.0", "libopenblas.so", "liblapack.so.3"]

    /// Loaded once; TVM_NO_BLAS=1 forces the fallback, as it does for TensorCore's BLAS.
    static let dsyevd: Dsyevd? = {
        if getenv("TVM_NO_BLAS") != nil { return nil }
        for name in candidates {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            if let f = dlsym(handle, "dsyevd_") { return unsafeBitCast(f, to: Dsyevd.self) }
            dlclose(handle)
        }
        return nil
    }()
}
