#if canImport(Glibc)
import Glibc
#endif

/// Counter-based Philox4x32-10 generator (Salmon et al., 2011).
///
/// Counter-based so that the CPU and the CUDA backend produce the same numbers: value `i` of a draw
/// depends only on `(seed, offset + i / 4, i % 4)`, never on how the work is split across threads.
/// A draw of `n` values advances the offset by `ceil(n / 4)` blocks.
public struct RandomGenerator: Sendable, Equatable {
    public let seed: UInt64
    /// Number of 128-bit blocks consumed so far (the Philox counter of the next block).
    public var offset: UInt64

    public init(seed: UInt64, offset: UInt64 = 0) {
        self.seed = seed
        self.offset = offset
    }

    /// An independent stream (a different key), e.g. one per data set or per rank.
    public func split(_ stream: UInt64) -> RandomGenerator {
        RandomGenerator(seed: Philox.mix(seed &+ 0x9E37_79B9_7F4A_7C15 &* (stream &+ 1)))
    }

    /// Reserves `count` values' worth of blocks and returns the first block's counter.
    public mutating func reserve(_ count: Int) -> UInt64 {
        let start = offset
        offset &+= UInt64((count + 3) / 4)
        return start
    }

    /// `count` uniform values in [0, 1) with 24 bits of resolution.
    public mutating func uniformFloats(_ count: Int) -> [Float] {
        let start = reserve(count)
        return [Float](unsafeUninitializedCapacity: count) { buf, n in
            Philox.fillUniform(buf.baseAddress!, count: count, seed: seed, counter: start)
            n = count
        }
    }

    /// `count` standard normal values (Box-Muller on pairs of lanes).
    public mutating func normalFloats(_ count: Int) -> [Float] {
        let start = reserve(count)
        return [Float](unsafeUninitializedCapacity: count) { buf, n in
            Philox.fillNormal(buf.baseAddress!, count: count, seed: seed, counter: start)
            n = count
        }
    }

    /// A uniform integer in 0 ..< bound (bound > 0), from one block.
    public mutating func int(below bound: Int) -> Int {
        let block = Philox.block(seed: seed, counter: reserve(4))
        let wide = (UInt64(block.0) << 32) | UInt64(block.1)
        return Int(wide % UInt64(bound))
    }
}

/// The Philox4x32-10 bijection and the conversions to floats, shared with the CUDA kernels (same constants).
public enum Philox {
    static let m0: UInt32 = 0xD251_1F53, m1: UInt32 = 0xCD9E_8D57
    static let w0: UInt32 = 0x9E37_79B9, w1: UInt32 = 0xBB67_AE85

    @inline(__always)
    public static func block(seed: UInt64, counter: UInt64) -> (UInt32, UInt32, UInt32, UInt32) {
        var c0 = UInt32(truncatingIfNeeded: counter), c1 = UInt32(truncatingIfNeeded: counter >> 32)
        var c2: UInt32 = 0, c3: UInt32 = 0
        var k0 = UInt32(truncatingIfNeeded: seed), k1 = UInt32(truncatingIfNeeded: seed >> 32)
        for _ in 0..<10 {
            let p0 = UInt64(m0) * UInt64(c0), p1 = UInt64(m1) * UInt64(c2)
            let hi0 = UInt32(truncatingIfNeeded: p0 >> 32), lo0 = UInt32(truncatingIfNeeded: p0)
            let hi1 = UInt32(truncatingIfNeeded: p1 >> 32), lo1 = UInt32(truncatingIfNeeded: p1)
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
            k0 &+= w0; k1 &+= w1
        }
        return (c0, c1, c2, c3)
    }

    /// Uniform in [0, 1): the top 24 bits.
    @inline(__always) public static func unit(_ u: UInt32) -> Float { Float(u >> 8) * (1.0 / 16_777_216.0) }
    /// Uniform in (0, 1]: safe for a logarithm.
    @inline(__always) public static func unitOpen(_ u: UInt32) -> Float { Float((u >> 8) + 1) * (1.0 / 16_777_216.0) }

    static func fillUniform(_ out: UnsafeMutablePointer<Float>, count: Int, seed: UInt64, counter: UInt64) {
        var i = 0, c = counter
        while i < count {
            let b = block(seed: seed, counter: c)
            for l in 0..<min(4, count - i) { out[i + l] = unit(lane(b, l)) }
            i += 4; c &+= 1
        }
    }

    static func fillNormal(_ out: UnsafeMutablePointer<Float>, count: Int, seed: UInt64, counter: UInt64) {
        var i = 0, c = counter
        while i < count {
            let b = block(seed: seed, counter: c)
            let (z0, z1) = boxMuller(b.0, b.1), (z2, z3) = boxMuller(b.2, b.3)
            for l in 0..<min(4, count - i) { out[i + l] = l == 0 ? z0 : l == 1 ? z1 : l == 2 ? z2 : z3 }
            i += 4; c &+= 1
        }
    }

    @inline(__always)
    static func lane(_ b: (UInt32, UInt32, UInt32, UInt32), _ l: Int) -> UInt32 {
        l == 0 ? b.0 : l == 1 ? b.1 : l == 2 ? b.2 : b.3
    }

    @inline(__always)
    public static func boxMuller(_ a: UInt32, _ b: UInt32) -> (Float, Float) {
        let r = (-2 * logf(unitOpen(a))).squareRoot()
        let theta = 2 * Float.pi * unit(b)
        return (r * cosf(theta), r * sinf(theta))
    }

    /// SplitMix64 finaliser: turns a seed into a well-mixed key.
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
