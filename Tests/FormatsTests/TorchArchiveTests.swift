import XCTest
@testable import Formats

/// `torch.save`'s ZIP format: the official training state, archives written here, and a ZIP bomb.
final class TorchArchiveTests: XCTestCase {
    /// `{'w': tensor}` as torch.save pickles it: the storage is a persistent id `('storage', FloatStorage, key, 'cpu', n)`.
    func dataPickle(key: String = "0", type: String = "FloatStorage", count: Int, size: [Int], twice: Bool = false) -> [UInt8] {
        var b = PickleBuilder(protocolVersion: 2)
        func tensor(_ b: inout PickleBuilder, _ storageType: String) {
            b.call("torch._utils", "_rebuild_tensor_v2") { b in
                b.mark()
                b.string("storage")
                b.global("torch", storageType)
                b.string(key)
                b.string("cpu")
                b.int(count)
                b.tuple()
                b.binPersID()
                b.int(0)
                b.intTuple(size)
                b.intTuple(TorchBytes.strides(size))
                b.bool(false)
                b.call("collections", "OrderedDict") { _ in }
            }
        }
        b.dict([("w", { tensor(&$0, type) })] + (twice ? [("v", { tensor(&$0, "DoubleStorage") })] : []))
        b.stop()
        return b.bytes
    }

    func archive(_ entries: [(String, [UInt8])], in dir: TempDir) throws -> String {
        let path = dir.file("state.pt")
        let w = try ZIPWriter(path: path)
        for (name, bytes) in entries { try w.add(name: name, bytes: bytes) }
        try w.finish()
        return path
    }

    func testArchivesWrittenHere() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let floats: [Float] = [1, -2, 3.5, 0.25]
        let data = floats.flatMap { PickleBuilder.le(UInt64($0.bitPattern), 4) }
        let good = try archive([("state/data.pkl", dataPickle(count: 4, size: [2, 2])), ("state/byteorder", Array("little".utf8)),
                                ("state/data/0", data)], in: dir)
        let file = try TorchPickle.read(path: good)
        XCTAssertEqual(try file.tensor(file.root["w"]!, what: "w").floats(), floats)

        let cases: [([(String, [UInt8])], String)] = [
            ([("state/data.pkl", dataPickle(count: 4, size: [2, 2])), ("state/data/0", data + [0])],
             "the entry \"state/data/0\" holds 17 bytes, but its storage of 4 float32 elements needs 16"),
            ([("state/data.pkl", dataPickle(count: 4, size: [2, 2]))], "no entry \"state/data/0\" for a storage"),
            ([("state/data.pkl", dataPickle(count: 4, size: [2, 2])), ("state/byteorder", Array("big".utf8))],
             "byte order \"big\" is not supported"),
            ([("a/data.pkl", dataPickle(count: 4, size: [2, 2])), ("b/data.pkl", [])], "2 <name>/data.pkl entries"),
            ([("data.pkl", dataPickle(count: 4, size: [2, 2]))], "no <name>/data.pkl entry"),
            ([("state/data.pkl", dataPickle(count: 4, size: [2, 2], twice: true)), ("state/data/0", data)],
             "storage \"0\" is used as two different storages"),
        ]
        for (entries, message) in cases {
            let path = try archive(entries, in: dir)
            assertFormatError(try { let f = try TorchPickle.read(path: path); for (_, v) in f.root.dictionary! { _ = try f.tensor(v, what: "t") } }(),
                              contains: [path, message])
        }
    }

    /// A .pt whose data.pkl is 16 MB of DEFLATE-compressed zeros in a file of a few KB: refused by its method before
    /// anything is inflated (only stored entries are read, as torch.save writes them).
    func testZIPBombIsRefusedBeforeInflating() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let plain = [UInt8](repeating: 0, count: 16 << 20)
        let packed = try Zlib.deflate(plain, format: .raw)
        let name = Array("state/data.pkl".utf8)
        func le(_ v: Int, _ n: Int) -> [UInt8] { PickleBuilder.le(UInt64(v), n) }
        let crc = Int(Checksum.crc32(plain))
        let fields = le(20, 2) + le(0, 2) + le(8, 2) + le(0, 4) + le(crc, 4) + le(packed.count, 4) + le(plain.count, 4) + le(name.count, 2) + le(0, 2)
        let local = le(0x0403_4B50, 4) + fields + name + packed
        let central = le(0x0201_4B50, 4) + le(20, 2) + fields + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) + name
        let end = le(0x0605_4B50, 4) + le(0, 4) + le(1, 2) + le(1, 2) + le(central.count, 4) + le(local.count, 4) + le(0, 2)
        let bomb = local + central + end
        XCTAssertLessThan(bomb.count, 64 << 10)
        let path = dir.file("bomb.pt")
        try AtomicFile.write(path: path, bytes: bomb)
        assertFormatError(try TorchPickle.read(path: path),
                          contains: [path, "the entry \"state/data.pkl\" is compressed (method 8); only stored entries are read"])
    }

    /// The official training state: network tensors and AdamW's scalar `step` tensors come from `data/<key>` entries.
    func testOfficialTrainingState() throws {
        let path = try TorchPickleTests.officialFixture("official_training_state_small.pt")
        let file = try TorchPickle.read(path: path)
        XCTAssertEqual(file.root.dictionary?.compactMap(\.key.string), ["net", "ema", "ema_target", "optimizer_state"])
        let net = try TorchModule(file.root["net"]!, what: "net")
        let tensors = try net.stateDict()
        XCTAssertEqual(tensors.count, 44)
        for t in tensors { XCTAssertEqual(try file.tensor(t.value, what: t.name).dtype, .float32) }
        let state = try XCTUnwrap(file.root["optimizer_state"]?["state"]?.dictionary)
        XCTAssertEqual(state.count, 43)
        let step = try file.tensor(try XCTUnwrap(state[0].value["step"]), what: "step")
        XCTAssertEqual(step.shape, [])
        XCTAssertEqual(step.doubles(), [1])
    }
}
