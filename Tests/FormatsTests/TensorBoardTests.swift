import XCTest
@testable import Formats
#if canImport(Glibc)
import Glibc
#endif

final class ProtobufTests: XCTestCase {
    func testWireFormat() {
        // The examples of the protocol buffers encoding guide, and the limits of each field kind.
        var m = ProtobufMessage()
        m.int64(1, 150)
        XCTAssertEqual(m.encoded, [0x08, 0x96, 0x01])
        m = ProtobufMessage()
        m.int64(2, -1)
        XCTAssertEqual(m.encoded, [0x10] + [UInt8](repeating: 0xFF, count: 9) + [0x01], "negative: ten-byte varint")
        m = ProtobufMessage()
        m.int64(1, 0)
        m.int64(1, 127)
        m.int64(1, 128)
        XCTAssertEqual(m.encoded, [0x08, 0x00, 0x08, 0x7F, 0x08, 0x80, 0x01])
        m = ProtobufMessage()
        m.string(2, "testing")
        XCTAssertEqual(m.encoded, [0x12, 0x07] + Array("testing".utf8))
        m = ProtobufMessage()
        m.fixed32(5, 0x0102_0304)
        m.fixed64(6, 0x0102_0304_0506_0708)
        XCTAssertEqual(m.encoded, [0x2D, 4, 3, 2, 1, 0x31, 8, 7, 6, 5, 4, 3, 2, 1])
        m = ProtobufMessage()
        m.float(1, 1.0)
        m.double(2, -2.0)
        XCTAssertEqual(m.encoded, [0x0D, 0, 0, 0x80, 0x3F, 0x11, 0, 0, 0, 0, 0, 0, 0, 0xC0])
        var inner = ProtobufMessage()
        inner.int64(1, 150)
        m = ProtobufMessage()
        m.message(3, inner)
        m.bytes(16, [UInt8](repeating: 1, count: 200))
        XCTAssertEqual(Array(m.encoded.prefix(8)), [0x1A, 0x03, 0x08, 0x96, 0x01, 0x82, 0x01, 0xC8], "field 16 and length 200 take two bytes")
        XCTAssertEqual(m.encoded.count, 8 + 1 + 200)
    }
}

final class TensorBoardTests: XCTestCase {
    /// Records written by TensorBoard 2.21's own RecordWriter from its event_pb2 / summary_pb2 messages
    /// (`python3 scripts/check_tensorboard.py --print-golden` prints them again).
    static let golden: [String: String] = [
        "fileVersion": "1800000000000000a37f4b2209000010d0f04cda411a0d627261696e2e4576656e743a32ed424cde",
        "sessionStart": "100000000000000095fbfe1809000060d0f04cda4110f4033a020801438af2d1",
        "scalars": "2b00000000000000861bc34b090000b0d0f04cda41102a2a1e0a110a0a6c6f73732f746f74616c150000003e0a090a026c721552499db9bf367439",
        "image": "290000000000000037ff5f00090000c0d0f04cda4110072a1c0a1a0a0773616d706c6573220f080210031803220789504e470102031b5ca1dc",
        "text": "ea00000000000000ace9258c09000000d1f04cda4110c0843d2ada010ad7010a06636f6e66696742c2010807120042bb016060606a736f6e0a7b226c72223a20302e3030312c20226e6f7465223a2022"
            + String(repeating: "78", count: 150) + "227d0a6060604a080a060a0474657874003190dc",
    ]

    static func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            out.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    func testEventsMatchTensorBoardsOwnRecords() {
        let text = "```json\n{\"lr\": 0.001, \"note\": \"" + String(repeating: "x", count: 150) + "\"}\n```"
        let ours: [String: [UInt8]] = [
            "fileVersion": TensorBoardEvent.fileVersion(wallTime: 1_765_000_000.25),
            "sessionStart": TensorBoardEvent.sessionStart(wallTime: 1_765_000_001.5, step: 500),
            "scalars": TensorBoardEvent.summary(wallTime: 1_765_000_002.75, step: 42, values: [
                TensorBoardEvent.scalarValue(tag: "loss/total", value: 0.125),
                TensorBoardEvent.scalarValue(tag: "lr", value: -3.0e-4),
            ]),
            "image": TensorBoardEvent.summary(wallTime: 1_765_000_003, step: 7, values: [
                TensorBoardEvent.imageValue(tag: "samples", png: [0x89, 0x50, 0x4E, 0x47, 1, 2, 3], width: 3, height: 2, channels: 3),
            ]),
            "text": TensorBoardEvent.summary(wallTime: 1_765_000_004, step: 1_000_000, values: [
                TensorBoardEvent.textValue(tag: "config", text: text),
            ]),
        ]
        XCTAssertEqual(Set(ours.keys), Set(Self.golden.keys))
        for (name, event) in ours {
            XCTAssertEqual(TFRecord.framed(event), Self.bytes(hex: Self.golden[name]!), name)
        }
    }

    /// The records of an event file, each checked against its length and masked CRC-32Cs.
    static func records(_ file: [UInt8], file name: StaticString = #filePath, line: UInt = #line) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var pos = 0
        func le32(_ i: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(file[i + $1]) << (8 * UInt32($1)) } }
        while pos < file.count {
            guard file.count - pos >= 16 else { XCTFail("a record is cut short", file: name, line: line); break }
            let length = Int(le32(pos)) | Int(le32(pos + 4)) << 32
            XCTAssertEqual(le32(pos + 8), TFRecord.maskedCRC32C(Array(file[pos..<(pos + 8)])), "length CRC", file: name, line: line)
            let data = Array(file[(pos + 12)..<(pos + 12 + length)])
            XCTAssertEqual(le32(pos + 12 + length), TFRecord.maskedCRC32C(data), "data CRC", file: name, line: line)
            out.append(data)
            pos += 16 + length
        }
        return out
    }

    /// A clock that advances by a quarter second at each reading, from a fixed time.
    final class FakeClock {
        var now = 1_765_000_000.0
        func read() -> Double {
            defer { now += 0.25 }
            return now
        }
    }

    func testWriterAppendsEventsThatAreVisibleAtOnce() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let clock = FakeClock()
        let writer = try TensorBoardWriter(directory: dir.path, clock: clock.read)
        let name = "events.out.tfevents.1765000000." + TensorBoardWriter.hostName()
        XCTAssertEqual(writer.path, dir.file(name))
        try writer.scalars([("loss/total", 0.5), ("lr", 1e-4)], step: 1)
        let gray = Image(width: 3, height: 2, channels: 1, pixels: [0, 50, 100, 150, 200, 250])
        try writer.image("samples", gray, step: 2)
        try writer.text("notes", "*hello*", step: 3)
        try writer.config(.object([("lr", .number(0.001)), ("model", .string("S/2"))]), step: 0)
        // Each event is in the file before the writer is closed: a watching TensorBoard sees it.
        let records = Self.records(try AtomicFile.read(path: writer.path))
        try writer.close()
        XCTAssertEqual(try AtomicFile.read(path: writer.path).count, records.map { $0.count + 16 }.reduce(0, +))
        let expected: [[UInt8]] = [
            TensorBoardEvent.fileVersion(wallTime: 1_765_000_000.25),
            TensorBoardEvent.sessionStart(wallTime: 1_765_000_000.5, step: 0),
            TensorBoardEvent.summary(wallTime: 1_765_000_000.75, step: 1, values: [
                TensorBoardEvent.scalarValue(tag: "loss/total", value: 0.5), TensorBoardEvent.scalarValue(tag: "lr", value: 1e-4),
            ]),
            TensorBoardEvent.summary(wallTime: 1_765_000_001, step: 2, values: [
                TensorBoardEvent.imageValue(tag: "samples", png: try gray.pngBytes(), width: 3, height: 2, channels: 1),
            ]),
            TensorBoardEvent.summary(wallTime: 1_765_000_001.25, step: 3, values: [TensorBoardEvent.textValue(tag: "notes", text: "*hello*")]),
            TensorBoardEvent.summary(wallTime: 1_765_000_001.5, step: 0, values: [
                TensorBoardEvent.textValue(tag: "config", text: "```json\n{\n  \"lr\": 0.001,\n  \"model\": \"S/2\"\n}\n```"),
            ]),
        ]
        XCTAssertEqual(records, expected)
        XCTAssertEqual(dir.entries(), [name])
    }

    func testResumedRunWritesANewFileThatMarksTheRestart() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let clock = { 1_765_000_000.0 }
        let first = try TensorBoardWriter(directory: dir.path, clock: clock)
        try first.scalar("loss", 1, step: 10)
        try first.close()
        let before = try AtomicFile.read(path: first.path)
        // The same second: the new file gets a suffix that sorts after the first.
        let resumed = try TensorBoardWriter(directory: dir.path, firstStep: 5, clock: clock)
        XCTAssertEqual(resumed.path, first.path + ".1")
        try resumed.scalar("loss", 2, step: 5)
        try resumed.close()
        XCTAssertEqual(try AtomicFile.read(path: first.path), before, "the earlier file is never written again")
        XCTAssertEqual(Self.records(before)[1], TensorBoardEvent.sessionStart(wallTime: 1_765_000_000, step: 0))
        XCTAssertEqual(Self.records(try AtomicFile.read(path: resumed.path)), [
            TensorBoardEvent.fileVersion(wallTime: 1_765_000_000),
            TensorBoardEvent.sessionStart(wallTime: 1_765_000_000, step: 5),
            TensorBoardEvent.summary(wallTime: 1_765_000_000, step: 5, values: [TensorBoardEvent.scalarValue(tag: "loss", value: 2)]),
        ])
        XCTAssertEqual(dir.entries().count, 2)
    }

    func testFileNamesSortInTimeOrder() {
        XCTAssertEqual(TensorBoardWriter.fileName(seconds: 42, host: "h"), "events.out.tfevents.0000000042.h")
        XCTAssertEqual(TensorBoardWriter.fileName(seconds: 1_765_000_000, host: "gpu-1"), "events.out.tfevents.1765000000.gpu-1")
        XCTAssertFalse(TensorBoardWriter.hostName().contains("/"))
    }

    func testErrorsNameTheFile() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        assertFormatError(try TensorBoardWriter(directory: dir.file("missing")), contains: [dir.file("missing"), "cannot create", "No such file"])
        let writer = try TensorBoardWriter(directory: dir.path)
        assertFormatError(try writer.image("grid", Image(width: 2, height: 2, channels: 3, pixels: [1]), step: 0),
                          contains: [writer.path, "\"grid\"", "1 pixel bytes"])
        try writer.close()
        assertFormatError(try writer.scalar("loss", 1, step: 1), contains: [writer.path, "closed"])
        XCTAssertNoThrow(try writer.close(), "closing twice is harmless")
    }

    /// A run for scripts/check_tensorboard.py, which reads it with TensorBoard's own loader: scalars over
    /// 20 steps, then a run resumed from step 15 that logs steps 15 to 24 again; images of every channel
    /// count; the config as text. `expected.json` beside the event files says what TensorBoard must show.
    /// Set TVM_TENSORBOARD_RUN_DIR to keep the folder (it must exist and be empty); otherwise it is removed.
    func testWritesARunForTensorBoardsOwnReader() throws {
        let temporary = try TempDir()
        defer { temporary.remove() }
        let directory = getenv("TVM_TENSORBOARD_RUN_DIR").map { String(cString: $0) } ?? temporary.path
        var scalars: [String: [Int: Double]] = [:]
        var images: [(tag: String, step: Int, image: Image)] = []
        func log(_ writer: TensorBoardWriter, steps: Range<Int>, offset: Double) throws {
            for step in steps {
                let values = [("loss/total", 1 / Double(step + 1) + offset), ("loss/tvm", 0.5 / Double(step + 1)),
                              ("lr", 1e-4 * Double(min(step, 10)) / 10), ("grad_norm", Double(step % 7) + offset)]
                try writer.scalars(values, step: step)
                for (tag, value) in values { scalars[tag, default: [:]][step] = Double(Float(value)) }
                if step % 5 == 0 {
                    let channels = step / 5 % 4 + 1
                    let image = Image(width: 8, height: 6, channels: channels,
                                      pixels: (0..<(48 * channels)).map { UInt8(truncatingIfNeeded: $0 * 5 + step) })
                    try writer.image("samples/grid", image, step: step)
                    images.removeAll { $0.step == step }
                    images.append(("samples/grid", step, image))
                }
            }
        }
        let config = JSONValue.object([("steps", .number(25)), ("lr", .number(1e-4)), ("model", .string("S/2")),
                                       ("ema", .array([.string("power:16"), .string("power:7")]))])
        let first = try TensorBoardWriter(directory: directory)
        try first.config(config, step: 0)
        try log(first, steps: 0..<20, offset: 0)
        try first.close()
        let resumed = try TensorBoardWriter(directory: directory, firstStep: 15)
        try log(resumed, steps: 15..<25, offset: 100)
        try resumed.close()

        let expectedScalars = scalars.sorted { $0.key < $1.key }.map { tag, byStep in
            (tag, JSONValue.array(byStep.sorted { $0.key < $1.key }.map { .array([.number(Double($0.key)), .number($0.value)]) }))
        }
        let expectedImages = images.sorted { $0.step < $1.step }.map { tag, step, image in
            JSONValue.object([("tag", .string(tag)), ("step", .number(Double(step))), ("width", .number(Double(image.width))),
                              ("height", .number(Double(image.height))), ("channels", .number(Double(image.channels))),
                              ("pixels", .array(image.pixels.map { .number(Double($0)) }))])
        }
        let expected = JSONValue.object([
            ("scalars", .object(expectedScalars)), ("images", .array(expectedImages)),
            ("text", .object([("config", .string("```json\n" + config.serialized(pretty: true) + "\n```"))])),
        ])
        try AtomicFile.write(path: directory + "/expected.json", bytes: Array(expected.serialized(pretty: true).utf8))
        for path in [first.path, resumed.path] { XCTAssertFalse(Self.records(try AtomicFile.read(path: path)).isEmpty) }
    }
}
