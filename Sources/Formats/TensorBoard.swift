#if canImport(Glibc)
import Glibc
#endif

/// Writes a run's TensorBoard event file: scalars, images and text that `tensorboard --logdir` shows
/// while the run goes on.
///
/// Each writer creates a new file, `events.out.tfevents.<seconds>.<host>` in the run folder (with `.1`,
/// `.2`, ... added when that name is taken), and never touches an existing one, so a resumed run appends
/// a new file beside the old. Every event is handed to the kernel as soon as it is logged, in one write,
/// so a watching TensorBoard sees it at once; a crash can cut only the last record short, which
/// TensorBoard leaves unread. Events are not fsynced one by one (that would cost a disk flush per step); `close`
/// syncs the file.
public final class TensorBoardWriter {
    /// The event file this writer appends to.
    public let path: String
    private var descriptor: Int32
    private let clock: () -> Double

    /// Starts a new event file in `directory` (which must exist) with the version event TensorBoard
    /// expects first and a session start at `firstStep`, the first step this run logs: 0 for a new run,
    /// the step after its checkpoint for a resumed one. TensorBoard treats every session start after a
    /// run's first as a restart and drops what was logged at `firstStep` and after, which the interrupted
    /// run wrote after its last checkpoint and the resumed run writes again. `clock` gives each event's
    /// wall time in seconds since 1970 (tests fix it).
    public init(directory: String, firstStep: Int = 0,
                clock: @escaping () -> Double = TensorBoardWriter.secondsSince1970) throws {
        self.clock = clock
        let base = directory + "/" + TensorBoardWriter.fileName(seconds: Int(clock()), host: TensorBoardWriter.hostName())
        var candidate = base
        var fd: Int32 = -1
        for suffix in 1...1000 {
            fd = open(candidate, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o644)
            if fd >= 0 || errno != EEXIST { break }
            candidate = base + ".\(suffix)"
        }
        guard fd >= 0 else {
            throw FormatError("\(candidate): cannot create the TensorBoard event file: \(AtomicFile.reason(errno))")
        }
        path = candidate
        descriptor = fd
        try append(TensorBoardEvent.fileVersion(wallTime: clock()))
        try append(TensorBoardEvent.sessionStart(wallTime: clock(), step: firstStep))
    }

    deinit {
        if descriptor >= 0 { Glibc.close(descriptor) }
    }

    /// Logs scalars of one step as one event (tags such as "loss/total" group under "loss" in TensorBoard).
    /// TensorBoard keeps scalars as 32-bit floats.
    public func scalars(_ values: [(tag: String, value: Double)], step: Int) throws {
        guard !values.isEmpty else { return }
        let summary = values.map { TensorBoardEvent.scalarValue(tag: $0.tag, value: Float($0.value)) }
        try append(TensorBoardEvent.summary(wallTime: clock(), step: step, values: summary))
    }

    public func scalar(_ tag: String, _ value: Double, step: Int) throws {
        try scalars([(tag, value)], step: step)
    }

    /// Logs an image (gray, gray+alpha, RGB or RGBA), stored as PNG.
    public func image(_ tag: String, _ image: Image, step: Int) throws {
        let png: [UInt8]
        do {
            png = try image.pngBytes()
        } catch let e as FormatError {
            throw FormatError("\(path): image \(quoted(tag)): \(e.message)")
        }
        let value = TensorBoardEvent.imageValue(tag: tag, png: png, width: image.width, height: image.height,
                                                channels: image.channels)
        try append(TensorBoardEvent.summary(wallTime: clock(), step: step, values: [value]))
    }

    /// Logs text, which TensorBoard's text dashboard renders as Markdown.
    public func text(_ tag: String, _ markdown: String, step: Int) throws {
        let value = TensorBoardEvent.textValue(tag: tag, text: markdown)
        try append(TensorBoardEvent.summary(wallTime: clock(), step: step, values: [value]))
    }

    /// Logs a run's configuration under the tag "config", as indented JSON in a code block (Markdown
    /// would otherwise reflow it and read underscores as emphasis).
    public func config(_ config: JSONValue, step: Int) throws {
        try text("config", "```json\n" + config.serialized(pretty: true) + "\n```", step: step)
    }

    /// Syncs and closes the file; later calls throw.
    public func close() throws {
        guard descriptor >= 0 else { return }
        let fd = descriptor
        descriptor = -1
        let synced = fsync(fd) == 0 ? 0 : errno
        guard Glibc.close(fd) == 0, synced == 0 else {
            throw FormatError("\(path): closing the TensorBoard event file failed: \(AtomicFile.reason(synced == 0 ? errno : synced))")
        }
    }

    /// Writes one framed event with a single write call, so a reader never sees two events interleaved.
    private func append(_ event: [UInt8]) throws {
        guard descriptor >= 0 else { throw FormatError("\(path): the TensorBoard event file is closed") }
        let record = TFRecord.framed(event)
        try record.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(descriptor, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FormatError("\(path): writing a TensorBoard event failed: \(AtomicFile.reason(errno))")
                }
                done += n
            }
        }
    }

    /// TensorFlow's name for event files: TensorBoard loads files whose name contains "tfevents", in name
    /// order, which the zero-padded time makes the order they were written.
    static func fileName(seconds: Int, host: String) -> String {
        let digits = String(max(seconds, 0))
        return "events.out.tfevents." + String(repeating: "0", count: max(0, 10 - digits.count)) + digits + "." + host
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name.replacingSlashes()
    }

    public static func secondsSince1970() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}

private extension String {
    /// A host name is one path component of the file name.
    func replacingSlashes() -> String { String(map { $0 == "/" ? "_" : $0 }) }
}

/// TFRecord framing (TensorFlow's record file format), in which event files store their events: the data
/// length (8 bytes, little-endian), the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of
/// the data.
enum TFRecord {
    static func framed(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        let length = UInt64(data.count)
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: length >> (8 * UInt64(k)))) }
        appendLittleEndian(&out, maskedCRC32C(out))
        out += data
        appendLittleEndian(&out, maskedCRC32C(data))
        return out
    }

    /// TensorFlow stores CRCs rotated and offset, because a CRC over data that holds CRCs of its own is weak.
    static func maskedCRC32C(_ bytes: [UInt8]) -> UInt32 {
        let crc = Checksum.crc32c(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    private static func appendLittleEndian(_ out: inout [UInt8], _ v: UInt32) {
        for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(k)))) }
    }
}

/// The messages of TensorBoard's event.proto and summary.proto that the writer uses, by field number.
/// proto3 leaves out a field that holds its default value (zero), and so does this for the step and the
/// wall time; fields of a `oneof` are always written.
enum TensorBoardEvent {
    /// Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5;
    /// SessionLog session_log = 7; } }
    private static func event(wallTime: Double, step: Int, _ body: (inout ProtobufMessage) -> Void) -> [UInt8] {
        var e = ProtobufMessage()
        if wallTime != 0 { e.double(1, wallTime) }
        if step != 0 { e.int64(2, Int64(step)) }
        body(&e)
        return e.encoded
    }

    /// "brain.Event:2" tells TensorBoard that restarts are marked by SessionLog START events.
    static func fileVersion(wallTime: Double) -> [UInt8] {
        event(wallTime: wallTime, step: 0) { $0.string(3, "brain.Event:2") }
    }

    /// SessionLog { SessionStatus status = 1; } with START = 1. From the second start of a run on,
    /// TensorBoard discards the events at `step` and later that it read before this one.
    static func sessionStart(wallTime: Double, step: Int) -> [UInt8] {
        var log = ProtobufMessage()
        log.int64(1, 1)
        return event(wallTime: wallTime, step: step) { $0.message(7, log) }
    }

    /// Summary { repeated Value value = 1; }
    static func summary(wallTime: Double, step: Int, values: [ProtobufMessage]) -> [UInt8] {
        var summary = ProtobufMessage()
        for v in values { summary.message(1, v) }
        return event(wallTime: wallTime, step: step) { $0.message(5, summary) }
    }

    /// Value { string tag = 1; oneof { float simple_value = 2; } }
    static func scalarValue(tag: String, value: Float) -> ProtobufMessage {
        var v = ProtobufMessage()
        v.string(1, tag)
        v.float(2, value)
        return v
    }

    /// Value { string tag = 1; oneof { Image image = 4; } } with Image { int32 height = 1; int32 width = 2;
    /// int32 colorspace = 3; bytes encoded_image_string = 4; }; the colorspace is the channel count
    /// (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
    static func imageValue(tag: String, png: [UInt8], width: Int, height: Int, channels: Int) -> ProtobufMessage {
        var image = ProtobufMessage()
        image.int64(1, Int64(height))
        image.int64(2, Int64(width))
        image.int64(3, Int64(channels))
        image.bytes(4, png)
        var v = ProtobufMessage()
        v.string(1, tag)
        v.message(4, image)
        return v
    }

    /// What TensorBoard's text plugin writes: Value { string tag = 1; TensorProto tensor = 8;
    /// SummaryMetadata metadata = 9; } with a scalar string tensor (TensorProto { DataType dtype = 1
    /// (DT_STRING = 7); TensorShapeProto tensor_shape = 2 (no dimensions); repeated bytes string_val = 8; })
    /// and metadata { plugin_data = 1 { plugin_name = 1: "text" } }.
    static func textValue(tag: String, text: String) -> ProtobufMessage {
        var tensor = ProtobufMessage()
        tensor.int64(1, 7)
        tensor.message(2, ProtobufMessage())
        tensor.string(8, text)
        var plugin = ProtobufMessage()
        plugin.string(1, "text")
        var metadata = ProtobufMessage()
        metadata.message(1, plugin)
        var v = ProtobufMessage()
        v.string(1, tag)
        v.message(8, tensor)
        v.message(9, metadata)
        return v
    }
}
