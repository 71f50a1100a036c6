import XCTest
import Foundation
import TensorCore
import Formats
import Data
@testable import Eval

/// The linear algebra of FID (eigen-decomposition, matrix square root, Fréchet distance) against closed forms,
/// and the statistics it is computed from.
final class FIDTests: XCTestCase {
    var rng = RandomGenerator(seed: 5)

    func randomMatrix(_ rows: Int, _ cols: Int) -> [Double] { rng.normalFloats(rows * cols).map(Double.init) }

    /// a b for row-major matrices, by loops (independent of the code under test).
    func multiply(_ a: [Double], _ b: [Double], _ n: Int, _ k: Int, _ m: Int) -> [Double] {
        var y = [Double](repeating: 0, count: n * m)
        for i in 0..<n { for p in 0..<k { let v = a[i * k + p]; for j in 0..<m { y[i * m + j] += v * b[p * m + j] } } }
        return y
    }

    func transpose(_ a: [Double], _ n: Int, _ m: Int) -> [Double] {
        var t = [Double](repeating: 0, count: n * m)
        for i in 0..<n { for j in 0..<m { t[j * n + i] = a[i * m + j] } }
        return t
    }

    /// A random symmetric positive semi-definite matrix of rank `rank` (B B^T with B n x rank).
    func randomPSD(_ n: Int, rank: Int) -> [Double] {
        let b = randomMatrix(n, rank)
        return multiply(b, transpose(b, n, rank), n, rank, n)
    }

    func maxAbs(_ a: [Double]) -> Double { a.map(Swift.abs).max() ?? 0 }

    func checkDecomposition(_ a: [Double], _ n: Int, _ r: SymmetricEigen.Result, _ label: String) {
        let v = r.vectors!
        XCTAssertEqual(r.values, r.values.sorted(), "\(label): ascending")
        let scale = Swift.max(maxAbs(a), 1)
        for k in 0..<n {
            let vk = Array(v[(k * n)..<((k + 1) * n)])
            let av = multiply(a, vk, n, n, 1)
            let residual = zip(av, vk).map { $0 - r.values[k] * $1 }
            XCTAssertLessThan(maxAbs(residual), 1e-12 * scale * Double(n), "\(label): A v = lambda v for k \(k)")
        }
        let gram = multiply(v, transpose(v, n, n), n, n, n)
        for i in 0..<n { for j in 0..<n {
            XCTAssertEqual(gram[i * n + j], i == j ? 1 : 0, accuracy: 1e-12, "\(label): orthonormal \(i), \(j)")
        } }
    }

    func testEigenDecompositionBothImplementations() throws {
        for n in [1, 2, 3, 7, 40] {
            let b = randomMatrix(n, n)
            let a = FID.symmetrized(zip(b, transpose(b, n, n)).map { $0 + $1 }, n: n)
            let fallback = try SymmetricEigen.decomposeTridiagonalQR(a, n: n, vectors: true)
            checkDecomposition(a, n, fallback, "fallback n \(n)")
            let valuesOnly = try SymmetricEigen.decomposeTridiagonalQR(a, n: n, vectors: false)
            for (x, y) in zip(valuesOnly.values, fallback.values) { XCTAssertEqual(x, y, accuracy: 1e-12 * Swift.max(1, maxAbs(a))) }
            XCTAssertNil(valuesOnly.vectors)
            let viaPublic = try SymmetricEigen.decompose(a, n: n, vectors: true)
            checkDecomposition(a, n, viaPublic, "\(SymmetricEigen.usesLAPACK ? "LAPACK" : "fallback") n \(n)")
            for (x, y) in zip(viaPublic.values, fallback.values) { XCTAssertEqual(x, y, accuracy: 1e-11 * Swift.max(1, maxAbs(a))) }
        }
    }

    func testEigenvaluesOfAKnownSpectrumWithRepeatsAndZeros() throws {
        // Q diag(lambda) Q^T with Q orthogonal (from the fallback's own decomposition of a random matrix).
        let n = 12
        let b = randomMatrix(n, n)
        let q = try XCTUnwrap(SymmetricEigen.decomposeTridiagonalQR(FID.symmetrized(zip(b, transpose(b, n, n)).map { $0 + $1 }, n: n),
                                                                    n: n, vectors: true).vectors)
        let lambda: [Double] = [-2, 0, 0, 0, 1e-9, 0.5, 1, 1, 1, 3, 3, 1e4]
        var scaled = q
        for k in 0..<n { for j in 0..<n { scaled[k * n + j] *= lambda[k] } }
        let a = FID.symmetrized(multiply(transpose(q, n, n), scaled, n, n, n), n: n)
        for r in [try SymmetricEigen.decompose(a, n: n, vectors: true), try SymmetricEigen.decomposeTridiagonalQR(a, n: n, vectors: true)] {
            for (x, y) in zip(r.values, lambda) { XCTAssertEqual(x, y, accuracy: 1e-10 * 1e4) }
            checkDecomposition(a, n, r, "known spectrum")
        }
        XCTAssertThrowsError(try SymmetricEigen.decompose([1, .nan, .nan, 1], n: 2, vectors: false))
    }

    func testMatrixSquareRootSquaresBack() throws {
        for (n, rank) in [(1, 1), (5, 5), (30, 30), (30, 7)] {
            let s = randomPSD(n, rank: rank)
            let root = try FID.symmetricSquareRoot(s, n: n)
            XCTAssertEqual(root, FID.symmetrized(root, n: n), "symmetric")
            let back = multiply(root, root, n, n, n)
            XCTAssertLessThan(maxAbs(zip(back, s).map { $0 - $1 }), 1e-10 * maxAbs(s), "n \(n) rank \(rank)")
            // Positive semi-definite: its eigenvalues are the square roots of S's (up to rounding).
            let values = try SymmetricEigen.decompose(root, n: n, vectors: false).values
            XCTAssertGreaterThan(values.min()!, -1e-6 * maxAbs(s).squareRoot())
        }
        // A diagonal matrix: the root is the root of each entry.
        let root = try FID.symmetricSquareRoot([4, 0, 0, 9], n: 2)
        for (x, y) in zip(root, [2, 0, 0, 3] as [Double]) { XCTAssertEqual(x, y, accuracy: 1e-14) }
    }

    func testFrechetDistanceClosedForms() throws {
        // Identical statistics: 0. With a rank-deficient covariance (fewer samples than features, as with small
        // FID sets), the square roots of eigenvalues that are zero up to rounding (1e-16 relative) contribute
        // about 1e-8 of the trace each: that is the float64 floor, for this method and for scipy's sqrtm.
        let d = 20
        let s = randomPSD(d, rank: 12)
        let mu = randomMatrix(1, d)
        let a = try FeatureStatistics(count: 100, mean: mu, covariance: s)
        let trace = (0..<d).reduce(0.0) { $0 + s[$1 * d + $1] }
        XCTAssertEqual(try FID.distance(a, a), 0, accuracy: 1e-7 * trace)
        let full = try FeatureStatistics(count: 100, mean: mu, covariance: randomPSD(d, rank: d))
        XCTAssertEqual(try FID.distance(full, full), 0, accuracy: 1e-11 * trace)

        // Commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
        let da: [Double] = [1, 4, 9, 0.25], db: [Double] = [4, 4, 1, 0]
        func diag(_ v: [Double]) -> [Double] {
            var m = [Double](repeating: 0, count: 16)
            for i in 0..<4 { m[i * 4 + i] = v[i] }
            return m
        }
        let x = try FeatureStatistics(count: 10, mean: [0, 1, 2, 3], covariance: diag(da))
        let y = try FeatureStatistics(count: 10, mean: [1, 1, 0, 3], covariance: diag(db))
        let expected = 1 + 4 + zip(da, db).reduce(0) { $0 + ($1.0.squareRoot() - $1.1.squareRoot()) * ($1.0.squareRoot() - $1.1.squareRoot()) }
        XCTAssertEqual(try FID.distance(x, y), expected, accuracy: 1e-12)

        // Non-commuting 2x2 covariances: for 2x2 M with non-negative eigenvalues, tr(M^(1/2)) = sqrt(tr M + 2 sqrt(det M)),
        // and det(S1 S2) = det S1 det S2. Includes a singular S1 (det 0).
        for singular in [false, true] {
            let b1 = randomMatrix(2, 2), b2 = randomMatrix(2, 2)
            var s1 = multiply(b1, transpose(b1, 2, 2), 2, 2, 2)
            if singular { s1 = [b1[0] * b1[0], b1[0] * b1[1], b1[0] * b1[1], b1[1] * b1[1]] }
            let s2 = multiply(b2, transpose(b2, 2, 2), 2, 2, 2)
            let m1: [Double] = [0.3, -1], m2: [Double] = [2, 0.5]
            // A singular S1's determinant is 0 exactly (the rounded product would put sqrt(1e-16) into the formula).
            let det1 = singular ? 0 : s1[0] * s1[3] - s1[1] * s1[2], det2 = s2[0] * s2[3] - s2[1] * s2[2]
            let product = multiply(s1, s2, 2, 2, 2)
            let traceRoot = (product[0] + product[3] + 2 * Swift.max(det1 * det2, 0).squareRoot()).squareRoot()
            let closed = (m1[0] - m2[0]) * (m1[0] - m2[0]) + (m1[1] - m2[1]) * (m1[1] - m2[1])
                + s1[0] + s1[3] + s2[0] + s2[3] - 2 * traceRoot
            let fid = try FID.distance(FeatureStatistics(count: 5, mean: m1, covariance: s1),
                                       FeatureStatistics(count: 5, mean: m2, covariance: s2))
            // Singular: the zero eigenvalue's rounding enters through a square root (see above).
            XCTAssertEqual(fid, closed, accuracy: (singular ? 1e-7 : 1e-11) * Swift.max(1, closed), "singular \(singular)")
            // Symmetric in its arguments, to the same rounding: with S1 singular, the product the other way round has
            // the zero eigenvalue too (the built-in eigen-solver, without LAPACK, leaves it at 1e-16 and its root at 1e-8).
            XCTAssertEqual(try FID.distance(FeatureStatistics(count: 5, mean: m2, covariance: s2),
                                            FeatureStatistics(count: 5, mean: m1, covariance: s1)), fid,
                           accuracy: (singular ? 1e-7 : 1e-10) * Swift.max(1, fid))
        }
        XCTAssertThrowsError(try FID.distance(x, a))  // 4 vs 20 features
    }

    func testAccumulatedStatisticsMatchTwoPassFormulas() throws {
        let n = 37, d = 6
        let f = rng.normalFloats(n * d).enumerated().map { $0.element + Float($0.offset % d) }  // means 0 ... 5
        var acc = FeatureAccumulator(dimension: d, device: .cpu)
        acc.add(Tensor(Array(f[0..<(10 * d)]), shape: [10, d], on: .cpu))
        acc.add(Tensor(Array(f[(10 * d)...]), shape: [n - 10, d], on: .cpu))
        XCTAssertEqual(acc.count, n)
        let s = try acc.statistics()
        let x = f.map(Double.init)
        for i in 0..<d {
            let mean = (0..<n).reduce(0.0) { $0 + x[$1 * d + i] } / Double(n)
            XCTAssertEqual(s.mean[i], mean, accuracy: 1e-12)
            for j in 0..<d {
                let meanJ = (0..<n).reduce(0.0) { $0 + x[$1 * d + j] } / Double(n)
                let cov = (0..<n).reduce(0.0) { $0 + (x[$1 * d + i] - mean) * (x[$1 * d + j] - meanJ) } / Double(n - 1)
                XCTAssertEqual(s.covariance[i * d + j], cov, accuracy: 1e-12)
            }
        }
        // All rows in one product: the same up to the order of the float64 sums.
        let direct = try FeatureStatistics(features: f, dimension: d)
        for (x, y) in zip(direct.mean + direct.covariance, s.mean + s.covariance) { XCTAssertEqual(x, y, accuracy: 1e-13) }
        // A set against itself in two halves of the same distribution: small; against a shifted copy: the shift.
        let shifted = try FeatureStatistics(count: n, mean: s.mean.map { $0 + 2 }, covariance: s.covariance)
        XCTAssertEqual(try FID.distance(s, shifted), 4 * Double(d), accuracy: 1e-9)
        XCTAssertThrowsError(try FeatureAccumulator(dimension: d, device: .cpu).statistics())
    }

    func testStatisticsFileRoundTrip() throws {
        let s = try FeatureStatistics(count: 9, mean: [1, -2.5, 3e-7], covariance: randomPSD(3, rank: 3))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fid-stats-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try s.write(path: path, metadata: [("key", "abc")])
        let (back, meta) = try FeatureStatistics.read(path: path)
        XCTAssertEqual(back.count, 9)
        XCTAssertEqual(back.mean, s.mean)
        XCTAssertEqual(back.covariance, s.covariance)
        XCTAssertTrue(meta.contains { $0 == ("key", "abc") })
        try SafetensorsFile(tensors: [NamedArray(name: "mean", shape: [3], doubles: [1, 2, 3])]).write(path: path)
        XCTAssertThrowsError(try FeatureStatistics.read(path: path))
    }

    func testByteImagesQuantiseLikePNGExportAndFingerprintThePixels() throws {
        let v: [Float] = [-1, 1, 0, -0.999, 0.5, 1.3, -7, 0.99999]
        let images = try ByteImages(unitValues: v, count: 2, channels: 1, height: 2, width: 2)
        // round((x + 1) * 127.5), clamped: 0 -> 127.5 rounds half away from zero to 128.
        XCTAssertEqual(images.pixels, [0, 255, 128, 0, 191, 255, 0, 255])
        XCTAssertThrowsError(try ByteImages(unitValues: [0, .nan, 0, 0], count: 1, channels: 1, height: 2, width: 2))
        XCTAssertThrowsError(try ByteImages(pixels: [0, 0], count: 1, channels: 2, height: 1, width: 1))
        XCTAssertThrowsError(try ByteImages(pixels: [0, 0, 0], count: 2, channels: 1, height: 1, width: 1))
        var changed = images.pixels
        changed[5] = 254
        let other = try ByteImages(pixels: changed, count: 2, channels: 1, height: 2, width: 2)
        XCTAssertNotEqual(images.fingerprint, other.fingerprint)
        XCTAssertEqual(images.fingerprint, try ByteImages(pixels: images.pixels, count: 2, channels: 1, height: 2, width: 2).fingerprint)
        XCTAssertNotEqual(images.fingerprint, try ByteImages(pixels: images.pixels, count: 1, channels: 1, height: 2, width: 4).fingerprint)
        XCTAssertEqual(images.prefix(1).pixels, [0, 255, 128, 0])
    }

    /// A data set ZIP read a batch at a time: the pixels in CHW order, any range, the fingerprint from the archive's
    /// entries (the same archive written again has it, a changed image or another count does not), and an image of
    /// another size named.
    func testDatasetArchiveIsReadABatchAtATime() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tvm-fidset-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func image(_ k: Int, width: Int = 5) -> Image {
            Image(width: width, height: 3, channels: 3, pixels: (0..<(width * 9)).map { UInt8(($0 * 7 + k * 31) % 256) })
        }
        func write(_ name: String, _ images: [Image]) throws -> String {
            let writer = try ZIPWriter(path: dir + "/" + name)
            for (k, image) in images.enumerated() { try writer.add(name: "00000/img0000000\(k).png", bytes: try image.pngBytes()) }
            try writer.finish()
            return dir + "/" + name
        }
        let images = (0..<7).map { image($0) }
        let set = try DatasetArchiveImages(path: try write("a.zip", images))
        XCTAssertEqual([set.count, set.channels, set.height, set.width], [7, 3, 3, 5])
        let all = try set.images(0..<7)
        for (k, source) in images.enumerated() {
            for c in 0..<3 {
                for p in 0..<15 { XCTAssertEqual(all.pixels[(k * 3 + c) * 15 + p], source.pixels[p * 3 + c], "image \(k) channel \(c)") }
            }
        }
        XCTAssertEqual(try set.images(2..<5).pixels, Array(all.pixels[(2 * 45)..<(5 * 45)]))
        XCTAssertEqual(try DatasetArchiveImages(path: try write("again.zip", images)).fingerprint, set.fingerprint)
        XCTAssertNotEqual(try DatasetArchiveImages(path: try write("b.zip", images.enumerated().map { $0.offset == 4 ? image(9) : $0.element }))
            .fingerprint, set.fingerprint)
        let first3 = try DatasetArchiveImages(path: dir + "/a.zip", limit: 3)
        XCTAssertEqual(first3.count, 3)
        XCTAssertNotEqual(first3.fingerprint, set.fingerprint)
        XCTAssertEqual(try first3.images(0..<3).pixels, Array(all.pixels[0..<(3 * 45)]))

        let mixed = try DatasetArchiveImages(path: try write("mixed.zip", images.enumerated().map { $0.offset == 5 ? image(5, width: 4) : $0.element }))
        XCTAssertNoThrow(try mixed.images(0..<5))
        XCTAssertThrowsError(try mixed.images(3..<7)) { error in
            XCTAssertEqual("\(error)", "\(dir)/mixed.zip: entry \"00000/img00000005.png\": 4x3 pixels, while the images before it are 5x3")
        }
    }
}
