#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Bit-exact conversions between Float and the 16-bit formats, written out by hand so results do not
/// depend on whether the platform has `Float16` (macOS on Intel does not).
public enum HalfConversion {
    /// IEEE 754 binary16 to Float. Every half value, subnormals included, is exactly representable.
    @inline(__always)
    public static func halfToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32(h >> 10) & 0x1F
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            // Subnormal (or zero): mantissa * 2^-24; exact because the product is a normal float.
            let magnitude = Float(mantissa) * 0x1p-24
            return sign != 0 ? -magnitude : magnitude
        }
        if exponent == 0x1F {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    /// Float to binary16 with round-to-nearest-even; overflow gives infinity, NaN stays a (quiet) NaN.
    @inline(__always)
    public static func floatToHalf(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        let exponent = Int((bits >> 23) & 0xFF)
        let mantissa = bits & 0x7F_FFFF
        if exponent == 0xFF {
            if mantissa == 0 { return sign | 0x7C00 }
            return sign | 0x7E00 | UInt16(mantissa >> 13)
        }
        let e = exponent - 127
        if e > 15 { return sign | 0x7C00 }
        if e >= -14 {
            var result = UInt32(e + 15) << 10 | (mantissa >> 13)
            let rest = mantissa & 0x1FFF
            // A carry out of the mantissa correctly bumps the exponent (and 65520 up to infinity).
            if rest > 0x1000 || (rest == 0x1000 && (result & 1) == 1) { result += 1 }
            return sign | UInt16(result)
        }
        if e >= -25 {
            let full = mantissa | 0x80_0000
            let shift = UInt32(-(e + 1))
            var result = full >> shift
            let rest = full & ((1 << shift) - 1)
            let half: UInt32 = 1 << (shift - 1)
            if rest > half || (rest == half && (result & 1) == 1) { result += 1 }
            return sign | UInt16(result)
        }
        return sign
    }

    /// bfloat16 is the upper half of a float32, so widening is a shift.
    @inline(__always)
    public static func bfloat16ToFloat(_ h: UInt16) -> Float {
        Float(bitPattern: UInt32(h) << 16)
    }

    /// Float to bfloat16 with round-to-nearest-even (the rounding PyTorch uses).
    @inline(__always)
    public static func floatToBfloat16(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(bits >> 16) | 0x0040 }
        let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16((bits &+ roundingBias) >> 16)
    }
}

/// Little-endian element access on raw byte buffers; on little-endian hosts the bulk paths use memcpy.
enum RawLE {
    @inline(__always)
    static func u16(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
    }

    @inline(__always)
    static func u32(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
    }

    @inline(__always)
    static func u64(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt64 {
        UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
    }

    /// `count` little-endian float32 values starting at byte `offset`.
    static func floats(_ p: UnsafeRawBufferPointer, offset: Int = 0, count: Int) -> [Float] {
        guard count > 0 else { return [] }
        return [Float](unsafeUninitializedCapacity: count) { out, n in
            let src = UnsafeRawBufferPointer(rebasing: p[offset..<(offset + count * 4)])
            #if _endian(little)
            if let dst = out.baseAddress, let s = src.baseAddress { memcpy(dst, s, count * 4) }
            #else
            for i in 0..<count { out[i] = Float(bitPattern: u32(src, i)) }
            #endif
            n = count
        }
    }

    static func doubles(_ p: UnsafeRawBufferPointer, offset: Int = 0, count: Int) -> [Double] {
        guard count > 0 else { return [] }
        return [Double](unsafeUninitializedCapacity: count) { out, n in
            let src = UnsafeRawBufferPointer(rebasing: p[offset..<(offset + count * 8)])
            #if _endian(little)
            if let dst = out.baseAddress, let s = src.baseAddress { memcpy(dst, s, count * 8) }
            #else
            for i in 0..<count { out[i] = Double(bitPattern: u64(src, i)) }
            #endif
            n = count
        }
    }

    static func bytes(ofFloats values: [Float]) -> [UInt8] {
        guard !values.isEmpty else { return [] }
        #if _endian(little)
        return values.withUnsafeBytes { Array($0) }
        #else
        var out = [UInt8](repeating: 0, count: values.count * 4)
        for (i, v) in values.enumerated() {
            let b = v.bitPattern
            for k in 0..<4 { out[i * 4 + k] = UInt8(truncatingIfNeeded: b >> (8 * k)) }
        }
        return out
        #endif
    }

    static func bytes(ofDoubles values: [Double]) -> [UInt8] {
        guard !values.isEmpty else { return [] }
        #if _endian(little)
        return values.withUnsafeBytes { Array($0) }
        #else
        var out = [UInt8](repeating: 0, count: values.count * 8)
        for (i, v) in values.enumerated() {
            let b = v.bitPattern
            for k in 0..<8 { out[i * 8 + k] = UInt8(truncatingIfNeeded: b >> (8 * k)) }
        }
        return out
        #endif
    }

    static func bytes(ofHalves values: [UInt16]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * 2)
        for (i, v) in values.enumerated() {
            out[i * 2] = UInt8(truncatingIfNeeded: v)
            out[i * 2 + 1] = UInt8(truncatingIfNeeded: v >> 8)
        }
        return out
    }
}
