#if canImport(Glibc)
import Glibc
#endif
import TensorCore

/// A bad argument to a data routine; the message is one line saying what was wrong.
public struct DataError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Seeded 2-D toy distributions, all laid out to fit roughly in [-2.5, 2.5]² with mean ≈ 0 and
/// per-axis variance of order 1, so one model / step-size setting works across all of them.
///
/// `sample(n, rng:)` returns n points as `[x0, y0, x1, y1, ...]`. Each call draws all its random
/// numbers from `rng` in a fixed order, so the output depends only on the generator's state.
///
/// Documented choices (tests check the moments listed here):
/// - `checkerboard`: uniform on the 8 unit squares [i, i+1) × [j, j+1), i, j ∈ {−2, −1, 0, 1},
///   i + j even (so [−2, −1] × [−2, −1] is included). Marginals are uniform on [−2, 2]:
///   mean 0, variance 4/3 per axis.
/// - `eightGaussians`: equal mixture of N(2(cos kπ/4, sin kπ/4), 0.1² I), k = 0..7. Std 0.1 keeps the
///   modes well separated (gap ≈ 1.53 between neighbouring centres, > 15 std) while not degenerate.
///   Mean 0, variance 2 + 0.01 per axis.
/// - `gaussianGrid25`: equal mixture of N((i, j), 0.05² I), i, j ∈ {−2, −1, 0, 1, 2}: spacing 1,
///   std 0.05 (20 std between neighbours: sharply separated modes, the classic mode-dropping test).
///   Mean 0, variance 2 + 0.0025 per axis.
/// - `twoMoons`: the usual interleaved half circles of radius 1 (as in scikit-learn's make_moons):
///   upper (cos t, sin t) and lower (1 − cos t, 0.5 − sin t), i.e. the point reflection of the first
///   placed so the moons interlock, t ~ U[0, π], each moon with probability 1/2, plus N(0, 0.05²) noise
///   per axis; then the exact mixture mean (0.5, 0.25) is subtracted and everything scaled by 1.5.
///   Range ≈ [−2.25, 2.25] × [−1.125, 1.125] (+ noise); mean 0; variance per axis
///   x: 1.5² (0.75 + 0.0025) ≈ 1.6931, y: 1.5² (0.625 − 1/π − 0.0625 + 0.0025) ≈ 0.5551.
/// - `spirals`: two Archimedean spirals r = 2.4 θ / (3π), θ ∈ [0, 3π] (1.5 turns, outer radius 2.4);
///   the second is the first rotated by π, so the arms interleave with gap 0.8. θ = 3π √u makes the
///   density uniform along the arc length (arc length grows like θ²). N(0, 0.05²) noise per axis.
///   Mean 0 by symmetry; E[x² + y²] = 2.4² / 2 + 2 · 0.05² = 2.885.
public enum Toy2D: String, CaseIterable, Sendable {
    case checkerboard
    case eightGaussians = "8gaussians"
    case gaussianGrid25 = "25gaussians"
    case twoMoons = "moons"
    case spirals

    /// `n` points, row-major. n ≤ 0 gives an empty array.
    public func sample(_ n: Int, rng: inout RandomGenerator) -> [Float] {
        let n = max(n, 0)
        if n == 0 { return [] }
        switch self {
        case .checkerboard: return Toy2D.drawCheckerboard(n, &rng)
        case .eightGaussians: return Toy2D.drawEightGaussians(n, &rng)
        case .gaussianGrid25: return Toy2D.drawGrid25(n, &rng)
        case .twoMoons: return Toy2D.drawMoons(n, &rng)
        case .spirals: return Toy2D.drawSpirals(n, &rng)
        }
    }

    /// Looks a distribution up by its raw value or an obvious alias; case, '-', '_' and spaces are ignored.
    public static func named(_ s: String) throws -> Toy2D {
        let key = String(s.lowercased().filter { $0 != "-" && $0 != "_" && $0 != " " })
        switch key {
        case "checkerboard", "checkers", "checker", "chessboard": return .checkerboard
        case "8gaussians", "eightgaussians", "8gauss", "gaussians8": return .eightGaussians
        case "25gaussians", "twentyfivegaussians", "25gauss", "gaussiangrid25", "gaussiangrid", "grid25": return .gaussianGrid25
        case "moons", "twomoons", "2moons": return .twoMoons
        case "spirals", "twospirals", "2spirals", "spiral": return .spirals
        default:
            let names = Toy2D.allCases.map(\.rawValue).joined(separator: ", ")
            throw DataError("unknown distribution '\(s)'; choose one of \(names)")
        }
    }

    /// Index in 0..<k from a uniform in [0, 1); the clamp guards the (impossible for 24-bit draws,
    /// but cheap to rule out) case u·k rounding up to k.
    @inline(__always) static func pick(_ u: Float, _ k: Int) -> Int { min(Int(u * Float(k)), k - 1) }

    // The 8 included squares, as lower-left corners (i, j) with i + j even.
    static let squares: [(Float, Float)] = {
        var s: [(Float, Float)] = []
        for i in -2...1 { for j in -2...1 where (i + j) & 1 == 0 { s.append((Float(i), Float(j))) } }
        return s
    }()

    static func drawCheckerboard(_ n: Int, _ rng: inout RandomGenerator) -> [Float] {
        let u = rng.uniformFloats(3 * n)
        var out = [Float](repeating: 0, count: 2 * n)
        for p in 0..<n {
            let (i, j) = squares[pick(u[3 * p], squares.count)]
            out[2 * p] = i + u[3 * p + 1]
            out[2 * p + 1] = j + u[3 * p + 2]
        }
        return out
    }

    static func drawEightGaussians(_ n: Int, _ rng: inout RandomGenerator) -> [Float] {
        let u = rng.uniformFloats(n), z = rng.normalFloats(2 * n)
        var out = [Float](repeating: 0, count: 2 * n)
        for p in 0..<n {
            let angle = Double(pick(u[p], 8)) * Double.pi / 4
            out[2 * p] = Float(2 * cos(angle)) + 0.1 * z[2 * p]
            out[2 * p + 1] = Float(2 * sin(angle)) + 0.1 * z[2 * p + 1]
        }
        return out
    }

    static func drawGrid25(_ n: Int, _ rng: inout RandomGenerator) -> [Float] {
        let u = rng.uniformFloats(n), z = rng.normalFloats(2 * n)
        var out = [Float](repeating: 0, count: 2 * n)
        for p in 0..<n {
            let m = pick(u[p], 25)
            out[2 * p] = Float(m / 5 - 2) + 0.05 * z[2 * p]
            out[2 * p + 1] = Float(m % 5 - 2) + 0.05 * z[2 * p + 1]
        }
        return out
    }

    static func drawMoons(_ n: Int, _ rng: inout RandomGenerator) -> [Float] {
        let u = rng.uniformFloats(2 * n), z = rng.normalFloats(2 * n)
        var out = [Float](repeating: 0, count: 2 * n)
        for p in 0..<n {
            let t = Double(u[2 * p + 1]) * Double.pi
            let (x, y) = u[2 * p] < 0.5 ? (cos(t), sin(t)) : (1 - cos(t), 0.5 - sin(t))
            out[2 * p] = Float(1.5 * (x + 0.05 * Double(z[2 * p]) - 0.5))
            out[2 * p + 1] = Float(1.5 * (y + 0.05 * Double(z[2 * p + 1]) - 0.25))
        }
        return out
    }

    static func drawSpirals(_ n: Int, _ rng: inout RandomGenerator) -> [Float] {
        let u = rng.uniformFloats(2 * n), z = rng.normalFloats(2 * n)
        var out = [Float](repeating: 0, count: 2 * n)
        let turns = 3 * Double.pi, rmax = 2.4
        for p in 0..<n {
            let theta = turns * Double(u[2 * p + 1]).squareRoot()
            let r = rmax * theta / turns
            let sign: Double = u[2 * p] < 0.5 ? 1 : -1
            out[2 * p] = Float(sign * r * cos(theta) + 0.05 * Double(z[2 * p]))
            out[2 * p + 1] = Float(sign * r * sin(theta) + 0.05 * Double(z[2 * p + 1]))
        }
        return out
    }
}
