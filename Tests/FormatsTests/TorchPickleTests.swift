import XCTest
@testable import Formats

/// PyTorch tensors, storages, modules and numpy arrays recognised in pickles, and refused when they are anything else.
final class TorchPickleTests: XCTestCase {
    /// `<package>/../shared/fixtures/official/<name>` (from a worktree, `/work/shared/fixtures/official/<name>`), or a
    /// skip when the fixtures are absent.
    static func officialFixture(_ name: String) throws -> String {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let candidates = [package.deletingLastPathComponent().appendingPathComponent("shared/fixtures/official/\(name)").path,
                          "/work/shared/fixtures/official/\(name)"]
        guard let path = candidates.first(where: FileManager.default.fileExists) else {
            throw XCTSkip("official fixture not found at \(candidates[0])")
        }
        return path
    }

    /// A plain pickle of one tensor `{'t': tensor}` whose storage is `_load_from_bytes(storage)`.
    func pickleOfTensor(storage: [UInt8], offset: Int = 0, size: [Int], stride: [Int]? = nil) throws -> (TorchPickle, PickleValue) {
        var b = PickleBuilder()
        b.dict([("t", { TorchBytes.tensor(&$0, storage: storage, offset: offset, size: size, stride: stride ?? TorchBytes.strides(size)) })])
        b.stop()
        let file = try TorchPickle.parse(b.bytes, source: "t.pkl")
        return (file, file.root["t"]!)
    }

    func testEveryStorageTypeDecodes() throws {
        let values: [Float] = [1.5, -2, 0.25, 65504]
        let cases: [(String, TorchDType, [UInt8])] = [
            ("FloatStorage", .float32, values.flatMap { PickleBuilder.le(UInt64($0.bitPattern), 4) }),
            ("DoubleStorage", .float64, values.flatMap { PickleBuilder.le(Double($0).bitPattern, 8) }),
            ("HalfStorage", .float16, values.flatMap { PickleBuilder.le(UInt64(HalfConversion.floatToHalf($0)), 2) }),
            ("BFloat16Storage", .bfloat16, [1.5, -2, 0.25, 65536].flatMap { PickleBuilder.le(UInt64(HalfConversion.floatToBfloat16($0)), 2) }),
            ("LongStorage", .int64, [3, -7, 0, 1 << 40].flatMap { PickleBuilder.le(UInt64(bitPattern: Int64($0)), 8) }),
            ("ByteStorage", .uint8, [0, 1, 255, 7]),
        ]
        let expected: [TorchDType: [Double]] = [
            .float32: values.map(Double.init), .float64: values.map(Double.init), .float16: values.map(Double.init),
            .bfloat16: [1.5, -2, 0.25, 65536], .int64: [3, -7, 0, 1_099_511_627_776], .uint8: [0, 1, 255, 7],
        ]
        for (type, dtype, data) in cases {
            let storage = TorchBytes.legacyStorage(type: type, count: 4, data: data)
            let (file, value) = try pickleOfTensor(storage: storage, size: [2, 2])
            let t = try file.tensor(value, what: "t")
            XCTAssertEqual(t.dtype, dtype)
            XCTAssertEqual(t.shape, [2, 2])
            XCTAssertEqual(t.doubles(), expected[dtype], type)
            XCTAssertEqual(t.floats(), expected[dtype]!.map(Float.init), type)
            XCTAssertEqual(t.integers() != nil, [.int64, .uint8].contains(dtype))
        }
    }

    func testStridedViewsGatherTheirElements() throws {
        let data = (0..<12).flatMap { PickleBuilder.le(UInt64(Float($0).bitPattern), 4) }
        let storage = TorchBytes.legacyStorage(type: "FloatStorage", count: 12, data: data)
        // A transposed [3, 4] starting at element 0: [4, 3] with strides (1, 4).
        let (file, value) = try pickleOfTensor(storage: storage, size: [4, 3], stride: [1, 4])
        XCTAssertEqual(try file.tensor(value, what: "t").floats(), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
        // Elements 5...8 as [2, 2].
        let (file2, value2) = try pickleOfTensor(storage: storage, offset: 5, size: [2, 2])
        XCTAssertEqual(try file2.tensor(value2, what: "t").floats(), [5, 6, 7, 8])
        let (file3, value3) = try pickleOfTensor(storage: storage, offset: 9, size: [2, 2])
        assertFormatError(try file3.tensor(value3, what: "t"), contains: ["t.pkl: t: a view of size [2, 2] at offset 9", "reaches element 12 of a storage of 12"])
        let (file4, value4) = try pickleOfTensor(storage: storage, size: [1 << 40, 1 << 40], stride: [1, 1])
        assertFormatError(try file4.tensor(value4, what: "t"), contains: ["element count of size [1099511627776, 1099511627776] overflows"])
    }

    func testLegacyStorageSizesAreCheckedAgainstTheBytes() throws {
        let four = [UInt8](repeating: 0, count: 16)
        let cases: [([UInt8], String)] = [
            (TorchBytes.legacyStorage(type: "FloatStorage", count: 4, data: four, declaredCount: 5), "holds 4 elements but is declared with 5"),
            (TorchBytes.legacyStorage(type: "FloatStorage", count: 1 << 40, data: four, declaredCount: 1 << 40), "needs 4398046511104 bytes, only 16 remain"),
            (TorchBytes.legacyStorage(type: "FloatStorage", count: 4, data: four, trailing: [0]), "1 bytes after the last storage"),
            (Array(TorchBytes.legacyStorage(type: "FloatStorage", count: 4, data: four).dropLast(20)), "ends before the element count"),
            (TorchBytes.legacyStorage(type: "ComplexFloatStorage", count: 2, data: four), "unsupported storage type \"torch.ComplexFloatStorage\""),
            (TorchBytes.legacyStorage(type: "FloatStorage", count: 4, data: four, declaredCount: -1), "element count the integer -1"),
        ]
        for (storage, message) in cases {
            let (file, value) = try pickleOfTensor(storage: storage, size: [2])
            assertFormatError(try file.tensor(value, what: "w"), contains: ["t.pkl: w", message])
        }
    }

    /// A pickle that points 2,000 tensors at one 4 KB storage would make a reader decode 8 MB from 70 KB.
    func testManyViewsOfOneStorageAreRefused() throws {
        let storage = TorchBytes.legacyStorage(type: "FloatStorage", count: 1000, data: [UInt8](repeating: 0, count: 4000))
        var b = PickleBuilder()
        b.emptyList()
        b.mark()
        b.call("torch.storage", "_load_from_bytes") { $0.byteString(storage) }
        b.memoize()  // memo 0: the storage
        b.op(0x30)
        for _ in 0..<2000 {
            b.call("torch._utils", "_rebuild_tensor_v2") { b in
                b.get(0)
                b.int(0)
                b.intTuple([1000])
                b.intTuple([1])
            }
        }
        b.appends()
        b.stop()
        let file = try TorchPickle.parse(b.bytes, source: "views.pkl")
        let tensors = file.root.list!
        XCTAssertEqual(tensors.count, 2000)
        var read = 0
        assertFormatError(try tensors.forEach { _ = try file.tensor($0, what: "view"); read += 1 },
                          contains: ["views.pkl: view: the tensors read so far hold", "more than a file of this size can store"])
        XCTAssertLessThan(read, 2000)
        XCTAssertGreaterThan(read, 1000)
    }

    /// Where a tensor should be, a call of anything else is refused by the name of what it would call.
    func testOtherGlobalsAreRefusedByName() throws {
        for (module, name) in [("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("torch._utils", "_rebuild_qtensor")] {
            var b = PickleBuilder()
            b.call(module, name) { $0.string("touch /tmp/x") }
            b.stop()
            let file = try TorchPickle.parse(b.bytes, source: "evil.pkl")
            assertFormatError(try file.tensor(file.root, what: "weight"),
                              contains: ["evil.pkl: weight: a call of \"\(module).\(name)\" is not a PyTorch tensor"])
        }
        // A storage whose persistent id names os.system as its type.
        var b = PickleBuilder(protocolVersion: 2)
        b.mark()
        b.string("storage")
        b.global("os", "system")
        b.string("0")
        b.string("cpu")
        b.int(1)
        b.tuple()
        b.binPersID()
        b.stop()
        let persistent = try PickleReader.read(b.bytes, source: "pid")
        assertFormatError(try StorageReference(persistent.persistentID!, source: "pid"),
                          contains: ["names the global \"os.system\" as a storage type"])
    }

    func testNumpyArraysInEveryProtocol() throws {
        for (p, hex) in PickleTestData.numpyStatistics {
            let root = try PickleReader.read(bytes(hex: hex), source: "stats")
            let mu = try NumPyPickle.array(root["mu"]!, what: "mu"), sigma = try NumPyPickle.array(root["sigma"]!, what: "sigma")
            XCTAssertEqual(mu.shape, [4], "protocol \(p)")
            XCTAssertEqual(mu.descr, "<f8")
            XCTAssertEqual(mu.doubles, [0.5, -1.0, 2.0, 1e-3])
            XCTAssertEqual(sigma.shape, [2, 2])
            XCTAssertEqual(sigma.descr, "<f4")
            XCTAssertEqual(sigma.floats, [1, 2, 3, 4])
        }
        let ints = try NumPyPickle.array(try PickleReader.read(bytes(hex: PickleTestData.numpyInt64), source: "i"), what: "i")
        XCTAssertEqual(ints.doubles, [0, 1, 2])
        assertFormatError(try NumPyPickle.array(try PickleReader.read(bytes(hex: PickleTestData.numpyBigEndian), source: "b"), what: "be"),
                          contains: ["be: big-endian dtype \">f8\""])
        assertFormatError(try NumPyPickle.array(try PickleReader.read(bytes(hex: PickleTestData.numpyObjectArray), source: "o"), what: "obj"),
                          contains: ["obj: dtype \"O8\" is not supported"])
    }

    /// The official snapshot: a dict around a `torch_utils.persistence` TVMWrapper whose 44 tensors are each
    /// `_rebuild_parameter` of `_load_from_bytes` storage.
    func testOfficialSnapshotModulesAndTensors() throws {
        let path = try Self.officialFixture("official_snapshot_small.pkl")
        let file = try TorchPickle.parse(try AtomicFile.read(path: path), source: path)
        let wrapper = try TorchModule(file.root["ema"]!, what: "ema")
        XCTAssertEqual(wrapper.className, "TVMWrapper")
        XCTAssertNil(wrapper.classGlobal)
        XCTAssertGreaterThan(wrapper.embeddedSourceLength ?? 0, 1000, "the wrapper's Python source is carried, not run")
        XCTAssertEqual(wrapper.keyword("do_scale_param")?.bool, true)
        let model = try XCTUnwrap(try wrapper.children().first { $0.name == "model" }?.module)
        XCTAssertEqual(model.className, "DiT")
        XCTAssertEqual(model.keyword("hidden_size")?.int, 64)
        let tensors = try wrapper.stateDict()
        XCTAssertEqual(tensors.count, 44)
        XCTAssertTrue(tensors.allSatisfy(\.isParameter))
        XCTAssertEqual(tensors.first?.name, "model.pos_embed")
        XCTAssertTrue(tensors.contains { $0.name == "model.blocks.1.attn.q_norm.weight" })
        var total = 0
        for t in tensors {
            let tensor = try file.tensor(t.value, what: t.name)
            XCTAssertEqual(tensor.dtype, .float32)
            XCTAssertTrue(tensor.floats().allSatisfy(\.isFinite), t.name)
            total += tensor.count
        }
        // pos_embed 1024, x_embedder 1024 + 64, three timestep MLPs 3 * 20608, label table 704, two blocks of 74720,
        // final layer 1040 + 8320 (hidden 64, patch 2, 4 channels, 16 tokens, 10 classes).
        XCTAssertEqual(total, 223_440)
        // The plain nn.Modules inside are NEWOBJ + BUILD records of their classes.
        let block = try XCTUnwrap(try model.children().first { $0.name == "blocks" }?.module)
        XCTAssertEqual(block.classGlobal, "torch.nn.modules.container.ModuleList")
    }

    /// `torch.compile`'s wrapper both ways: as a module whose child `_orig_mod` is the network (names looked through),
    /// and pickled by its `__reduce__` as a call of its class with the network as first argument.
    func testCompiledWrapperIsLookedThrough() throws {
        func linear(_ b: inout PickleBuilder) {
            b.global("torch.nn.modules.linear", "Linear")
            b.emptyTuple()
            b.newObject()
            b.dict([("_parameters", { b in b.dict([("weight", { TorchBytes.tensor(&$0, storage: TorchBytes.legacyStorage(
                type: "FloatStorage", count: 2, data: [UInt8](repeating: 0, count: 8)), size: [2], stride: [1]) })]) }),
                    ("_buffers", { $0.emptyDict() }), ("_modules", { $0.emptyDict() })])
            b.build()
        }
        func compiledChild(_ b: inout PickleBuilder) {
            b.global("torch._dynamo.eval_frame", "OptimizedModule")
            b.emptyTuple()
            b.newObject()
            b.dict([("_parameters", { $0.emptyDict() }), ("_buffers", { $0.emptyDict() }),
                    ("_modules", { $0.dict([("_orig_mod", linear)]) })])
            b.build()
        }
        var b = PickleBuilder()
        b.dict([("child", compiledChild),
                ("reduced", { $0.call("torch._dynamo.eval_frame", "OptimizedModule") { b in linear(&b); b.none() } })])
        b.stop()
        let root = try PickleReader.read(b.bytes, source: "compiled")
        let child = try TorchModule(root["child"]!, what: "child")
        XCTAssertEqual(child.className, "OptimizedModule")
        XCTAssertEqual(try child.stateDict().map(\.name), ["weight"])
        XCTAssertEqual(try child.lookingThroughCompilation.className, "Linear")
        let reduced = try TorchModule(root["reduced"]!, what: "reduced")
        XCTAssertEqual(reduced.className, "Linear")
        XCTAssertEqual(try reduced.stateDict().map(\.name), ["weight"])
    }

    /// A module tree whose children were filled in after being nested (so the reader's depth count cannot see it)
    /// is still walked no deeper than the walker's own limit.
    func testModuleWalkIsBoundedAndLinear() throws {
        func module(_ b: inout PickleBuilder, child: ((inout PickleBuilder) -> Void)?) {
            b.global("torch.nn.modules.module", "Module")
            b.emptyTuple()
            b.newObject()
            b.dict([("_parameters", { $0.emptyDict() }), ("_buffers", { $0.emptyDict() }),
                    ("_modules", { b in if let child { b.dict([("m", child)]) } else { b.emptyDict() } })])
            b.build()
        }
        func chain(_ n: Int) -> (inout PickleBuilder) -> Void {
            { b in module(&b, child: n == 0 ? nil : chain(n - 1)) }
        }
        var b = PickleBuilder()
        chain(80)(&b)
        b.stop()
        let root = try PickleReader.read(b.bytes, source: "deep", limits: PickleLimits(maxDepth: 1000))
        assertFormatError(try TorchModule(root, what: "net").stateDict(), contains: ["modules nested deeper than 64 levels"])
        // A module whose _modules holds the same child twice is refused rather than walked once per path.
        var shared = PickleBuilder()
        module(&shared, child: nil)
        shared.memoize()
        shared.op(0x30)
        shared.global("torch.nn.modules.module", "Module")
        shared.emptyTuple()
        shared.newObject()
        shared.dict([("_parameters", { $0.emptyDict() }), ("_buffers", { $0.emptyDict() }),
                      ("_modules", { $0.dict([("a", { $0.get(0) }), ("b", { $0.get(0) })]) })])
        shared.build()
        shared.stop()
        let twice = try PickleReader.read(shared.bytes, source: "shared")
        assertFormatError(try TorchModule(twice, what: "net").stateDict(), contains: ["the same module object appears twice"])
    }
}
