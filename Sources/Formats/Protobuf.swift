/// A protocol buffer message in the wire format, built field by field: what TensorBoard's event files
/// need, and nothing of the schema machinery. Fields come out in the order they are added; adding them
/// in field-number order gives the bytes the official encoders give.
struct ProtobufMessage {
    private(set) var encoded: [UInt8] = []

    /// The wire types used here (3 and 4, groups, are obsolete).
    private enum WireType: UInt64 {
        case varint = 0, fixed64 = 1, lengthDelimited = 2, fixed32 = 5
    }

    private mutating func appendVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            encoded.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        encoded.append(UInt8(v))
    }

    private mutating func appendKey(_ field: Int, _ type: WireType) {
        appendVarint(UInt64(field) << 3 | type.rawValue)
    }

    private mutating func appendLittleEndian(_ value: UInt64, byteCount: Int) {
        for k in 0..<byteCount { encoded.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(k)))) }
    }

    /// int32, int64 and enum fields: a varint of the two's complement, so a negative value takes ten bytes.
    mutating func int64(_ field: Int, _ value: Int64) {
        appendKey(field, .varint)
        appendVarint(UInt64(bitPattern: value))
    }

    mutating func fixed32(_ field: Int, _ value: UInt32) {
        appendKey(field, .fixed32)
        appendLittleEndian(UInt64(value), byteCount: 4)
    }

    mutating func fixed64(_ field: Int, _ value: UInt64) {
        appendKey(field, .fixed64)
        appendLittleEndian(value, byteCount: 8)
    }

    mutating func float(_ field: Int, _ value: Float) { fixed32(field, value.bitPattern) }

    mutating func double(_ field: Int, _ value: Double) { fixed64(field, value.bitPattern) }

    /// bytes fields, and the length-delimited form of strings and embedded messages.
    mutating func bytes(_ field: Int, _ value: some Collection<UInt8>) {
        appendKey(field, .lengthDelimited)
        appendVarint(UInt64(value.count))
        encoded.append(contentsOf: value)
    }

    mutating func string(_ field: Int, _ value: String) { bytes(field, value.utf8) }

    mutating func message(_ field: Int, _ value: ProtobufMessage) { bytes(field, value.encoded) }
}
