import Formats

/// Reads back what the training loop wrote to TensorBoard event files: the TFRecord framing and just enough of
/// the Event and Summary messages (by field number, as event.proto and summary.proto define them) to list the
/// session starts, scalars, images and texts with their steps.
struct LoggedEvent: Equatable {
    enum Kind: Equatable {
        case sessionStart
        case scalar(Float)
        case image(width: Int, height: Int)
        case text(String)
    }
    var step: Int
    var tag: String
    var kind: Kind
}

enum EventFileReader {
    static func events(path: String) throws -> [LoggedEvent] {
        let file = try AtomicFile.read(path: path)
        var out: [LoggedEvent] = []
        var pos = 0
        while pos + 12 <= file.count {
            let length = (0..<8).reduce(0) { $0 | Int(file[pos + $1]) << (8 * $1) }
            let data = Array(file[(pos + 12)..<(pos + 12 + length)])
            pos += 16 + length
            let event = fields(data)
            let step = event.first { $0.number == 2 }?.varint ?? 0
            if event.contains(where: { $0.number == 7 }) { out.append(LoggedEvent(step: step, tag: "", kind: .sessionStart)) }
            guard let summary = event.first(where: { $0.number == 5 })?.bytes else { continue }
            for value in fields(summary) where value.number == 1 {
                let v = fields(value.bytes)
                let tag = String(decoding: v.first { $0.number == 1 }?.bytes ?? [], as: UTF8.self)
                if let bits = v.first(where: { $0.number == 2 })?.fixed32 {
                    out.append(LoggedEvent(step: step, tag: tag, kind: .scalar(Float(bitPattern: bits))))
                } else if let image = v.first(where: { $0.number == 4 })?.bytes {
                    let f = fields(image)
                    out.append(LoggedEvent(step: step, tag: tag, kind: .image(width: f.first { $0.number == 2 }?.varint ?? 0,
                                                                              height: f.first { $0.number == 1 }?.varint ?? 0)))
                } else if let tensor = v.first(where: { $0.number == 8 })?.bytes {
                    let text = fields(tensor).first { $0.number == 8 }?.bytes ?? []
                    out.append(LoggedEvent(step: step, tag: tag, kind: .text(String(decoding: text, as: UTF8.self))))
                }
            }
        }
        return out
    }

    struct Field {
        var number: Int
        var varint: Int?
        var fixed32: UInt32?
        var bytes: [UInt8] = []
    }

    /// The fields of one protobuf message (varints, 64- and 32-bit values, length-delimited bytes).
    static func fields(_ m: [UInt8]) -> [Field] {
        var out: [Field] = []
        var i = 0
        func varint() -> Int {
            var v = 0, shift = 0
            while i < m.count {
                let b = m[i]
                i += 1
                v |= Int(b & 0x7F) << shift
                shift += 7
                if b < 0x80 { break }
            }
            return v
        }
        while i < m.count {
            let key = varint()
            var f = Field(number: key >> 3)
            switch key & 7 {
            case 0: f.varint = varint()
            case 1: i += 8
            case 2:
                let n = varint()
                f.bytes = Array(m[i..<(i + n)])
                i += n
            case 5:
                f.fixed32 = (0..<4).reduce(UInt32(0)) { $0 | UInt32(m[i + $1]) << (8 * UInt32($1)) }
                i += 4
            default: return out
            }
            out.append(f)
        }
        return out
    }
}
