/// SiLU and GELU (tanh form) over float32 arrays, eight lanes at a time with fused multiply-adds: the values,
/// their tangents and the backward passes of both, for TensorCore's activation kernels. TensorCore's generic
/// loops (`SiluPair`, `GeluPair`) are the scalar reference; these compute the same formulas, with the same
/// exp (2^n times a degree-7 polynomial, not libm) but its polynomial and reductions fused, so values agree to
/// about 1e-7 relative rather than bit for bit. Every entry point takes a range of elements so that the caller
/// splits the work over the cores; a range's last partial vector runs in the same code, zero-padded.
public enum AVX2Activation {
    public enum Function: Sendable { case silu, gelu }

    /// y = f(x).
    @inline(never)
    public static func value(_ f: Function, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, range: Range<Int>) {
        switch f {
        case .silu: value(SiLU.self, x, y, range)
        case .gelu: value(GELU.self, x, y, range)
        }
    }

    /// y = f(x), ty = f'(x) t.
    @inline(never)
    public static func valueAndTangent(_ f: Function, x: UnsafePointer<Float>, t: UnsafePointer<Float>,
                                       y: UnsafeMutablePointer<Float>, ty: UnsafeMutablePointer<Float>, range: Range<Int>) {
        switch f {
        case .silu: valueAndTangent(SiLU.self, x, t, y, ty, range)
        case .gelu: valueAndTangent(GELU.self, x, t, y, ty, range)
        }
    }

    /// The backward pass of `valueAndTangent`: gx = gy f'(x) + gty f''(x) t, gt = gty f'(x); a nil gy or gty is zero.
    @inline(never)
    public static func tangentBackward(_ f: Function, x: UnsafePointer<Float>, t: UnsafePointer<Float>,
                                       gy: UnsafePointer<Float>?, gty: UnsafePointer<Float>?,
                                       gx: UnsafeMutablePointer<Float>, gt: UnsafeMutablePointer<Float>, range: Range<Int>) {
        switch f {
        case .silu: tangentBackward(SiLU.self, x, t, gy, gty, gx, gt, range)
        case .gelu: tangentBackward(GELU.self, x, t, gy, gty, gx, gt, range)
        }
    }

    /// The backward pass of `value`: gx = g f'(x).
    @inline(never)
    public static func slopeTimes(_ f: Function, x: UnsafePointer<Float>, g: UnsafePointer<Float>,
                                  gx: UnsafeMutablePointer<Float>, range: Range<Int>) {
        switch f {
        case .silu: slopeTimes(SiLU.self, x, g, gx, range)
        case .gelu: slopeTimes(GELU.self, x, g, gx, range)
        }
    }
}

typealias Lanes = SIMD8<Float>

extension AVX2Activation {
    @inline(__always)
    static func value<F: LaneActivation>(_: F.Type, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ range: Range<Int>) {
        forEachVector(range) { i, lanes in store(F.value(load(x, i, lanes)), y, i, lanes) }
    }

    @inline(__always)
    static func valueAndTangent<F: LaneActivation>(_: F.Type, _ x: UnsafePointer<Float>, _ t: UnsafePointer<Float>,
                                                   _ y: UnsafeMutablePointer<Float>, _ ty: UnsafeMutablePointer<Float>,
                                                   _ range: Range<Int>) {
        forEachVector(range) { i, lanes in
            let (f, d1) = F.valueAndSlope(load(x, i, lanes))
            store(f, y, i, lanes)
            store(d1 * load(t, i, lanes), ty, i, lanes)
        }
    }

    @inline(__always)
    static func tangentBackward<F: LaneActivation>(_: F.Type, _ x: UnsafePointer<Float>, _ t: UnsafePointer<Float>,
                                                   _ gy: UnsafePointer<Float>?, _ gty: UnsafePointer<Float>?,
                                                   _ gx: UnsafeMutablePointer<Float>, _ gt: UnsafeMutablePointer<Float>,
                                                   _ range: Range<Int>) {
        switch (gy, gty) {
        case let (gy?, gty?):
            forEachVector(range) { i, lanes in
                let (d1, d2) = F.slopes(load(x, i, lanes))
                let g = load(gty, i, lanes)
                store((g * d2 * load(t, i, lanes)).addingProduct(load(gy, i, lanes), d1), gx, i, lanes)
                store(g * d1, gt, i, lanes)
            }
        case let (gy?, nil):
            forEachVector(range) { i, lanes in
                store(load(gy, i, lanes) * F.slopes(load(x, i, lanes)).d1, gx, i, lanes)
                store(Lanes(), gt, i, lanes)
            }
        case let (nil, gty?):
            forEachVector(range) { i, lanes in
                let (d1, d2) = F.slopes(load(x, i, lanes))
                let g = load(gty, i, lanes)
                store(g * d2 * load(t, i, lanes), gx, i, lanes)
                store(g * d1, gt, i, lanes)
            }
        case (nil, nil):
            forEachVector(range) { i, lanes in
                store(Lanes(), gx, i, lanes)
                store(Lanes(), gt, i, lanes)
            }
        }
    }

    @inline(__always)
    static func slopeTimes<F: LaneActivation>(_: F.Type, _ x: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                                              _ gx: UnsafeMutablePointer<Float>, _ range: Range<Int>) {
        forEachVector(range) { i, lanes in store(load(g, i, lanes) * F.valueAndSlope(load(x, i, lanes)).d1, gx, i, lanes) }
    }

    /// Calls body(i, 8) for each whole vector of the range, then body(i, lanes) once for the rest (lanes < 8).
    @inline(__always)
    static func forEachVector(_ range: Range<Int>, _ body: (_ i: Int, _ lanes: Int) -> Void) {
        var i = range.lowerBound
        while i + 8 <= range.upperBound {
            body(i, 8)
            i += 8
        }
        if i < range.upperBound { body(i, range.upperBound - i) }
    }

    /// The `lanes` values at p + i, zeros after them.
    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ i: Int, _ lanes: Int) -> Lanes {
        if lanes == 8 { return UnsafeRawPointer(p + i).loadUnaligned(as: Lanes.self) }
        var v = Lanes()
        for l in 0..<lanes { v[l] = p[i + l] }
        return v
    }

    @inline(__always)
    static func store(_ v: Lanes, _ p: UnsafeMutablePointer<Float>, _ i: Int, _ lanes: Int) {
        if lanes == 8 {
            UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: Lanes.self)
        } else {
            for l in 0..<lanes { p[i + l] = v[l] }
        }
    }
}

/// An activation on eight lanes: its value and first derivative, or its first two derivatives, sharing the
/// exp and the division. The lane functions are @_transparent: with @inline(__always) the optimizer still left
/// some as calls (measured: each a call with the vector split over two registers and a vzeroupper).
protocol LaneActivation {
    static func value(_ x: Lanes) -> Lanes
    static func valueAndSlope(_ x: Lanes) -> (value: Lanes, d1: Lanes)
    static func slopes(_ x: Lanes) -> (d1: Lanes, d2: Lanes)
}

enum SiLU: LaneActivation {
    @_transparent static func value(_ x: Lanes) -> Lanes { x * laneSigmoid(x) }
    @_transparent static func valueAndSlope(_ x: Lanes) -> (value: Lanes, d1: Lanes) {
        let s = laneSigmoid(x)
        return (x * s, s * Lanes(repeating: 1).addingProduct(x, 1 - s))
    }
    @_transparent static func slopes(_ x: Lanes) -> (d1: Lanes, d2: Lanes) {
        let s = laneSigmoid(x), q = 1 - s
        return (s * Lanes(repeating: 1).addingProduct(x, q), s * q * Lanes(repeating: 2).addingProduct(x, 1 - 2 * s))
    }
}

enum GELU: LaneActivation {
    @inline(__always) static var c: Float { 0.7978845608028654 }  // sqrt(2 / pi)
    @inline(__always) static var k: Float { 0.044715 }

    /// u' for u = c (x + k x^3), and sigmoid(2u) = (1 + tanh u) / 2.
    @_transparent static func parts(_ x: Lanes) -> (du: Lanes, s: Lanes) {
        let x2 = x * x
        let u = c * x.addingProduct(k * x2, x)
        return (c * Lanes(repeating: 1).addingProduct(3 * k, x2), laneSigmoid(2 * u))
    }
    @_transparent static func value(_ x: Lanes) -> Lanes { x * parts(x).s }
    @_transparent static func valueAndSlope(_ x: Lanes) -> (value: Lanes, d1: Lanes) {
        let (du, s) = parts(x)
        return (x * s, s.addingProduct(2 * x * s * (1 - s), du))
    }
    @_transparent static func slopes(_ x: Lanes) -> (d1: Lanes, d2: Lanes) {
        let (du, s) = parts(x)
        let th = 2 * s - 1, d2u = (6 * c * k) * x, ss = s * (1 - s)
        return (s.addingProduct(2 * x * ss, du), 4 * ss * du.addingProduct(0.5 * x, d2u - 2 * th * du * du))
    }
}

/// 1 / (1 + exp(-x)).
@_transparent
func laneSigmoid(_ x: Lanes) -> Lanes { 1 / (1 + laneExp(-x)) }

/// exp(x) as TensorCore's float32 `vexp` computes it: x = n ln 2 + r with n = round(x / ln 2) (rounded by adding
/// 1.5 * 2^23, which leaves n in the low mantissa bits), exp(r) by its Taylor series to r^7, times 2^n from the
/// exponent bits. 0 below -87, +infinity above 88, NaN stays NaN. (The clamp is two selects: SIMD's `clamped`
/// calls a generic lane-by-lane loop.)
@_transparent
func laneExp(_ x: Lanes) -> Lanes {
    var xc = x
    xc.replace(with: -87, where: x .< -87)
    xc.replace(with: 88, where: x .> 88)
    let shifted = Lanes(repeating: 12_582_912).addingProduct(xc, 1.442695041)
    let n = shifted - 12_582_912
    let r = xc.addingProduct(n, -0.693145751953125).addingProduct(n, -1.428606765330187e-06)
    var p = Lanes(repeating: 1.0 / 5040)
    p = Lanes(repeating: 1.0 / 720).addingProduct(p, r)
    p = Lanes(repeating: 1.0 / 120).addingProduct(p, r)
    p = Lanes(repeating: 1.0 / 24).addingProduct(p, r)
    p = Lanes(repeating: 1.0 / 6).addingProduct(p, r)
    p = Lanes(repeating: 0.5).addingProduct(p, r)
    p = Lanes(repeating: 1).addingProduct(p, r)
    p = Lanes(repeating: 1).addingProduct(p, r)
    let bits = (unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    var y = p * unsafeBitCast(bits, to: Lanes.self)
    y.replace(with: 0, where: x .< -87)
    y.replace(with: .infinity, where: x .> 88)
    y.replace(with: x, where: x .!= x)
    return y
}
