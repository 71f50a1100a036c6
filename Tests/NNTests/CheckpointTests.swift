import XCTest
import TensorCore
import NN
import Formats
#if canImport(Glibc)
import Glibc
#endif

final class CheckpointTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        var template = Array("/tmp/nn-checkpoint-tests-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ModelError("mkdtemp failed")
        }
        dir = String(cString: p)
    }

    override func tearDown() {
        for name in ["a.safetensors", "b.safetensors", "c.safetensors"] { unlink(dir + "/" + name) }
        rmdir(dir)
    }

    func model() throws -> (DiT, ParameterSet) {
        let net = try DiT(DiTConfig(patch: 2, hidden: 16, depth: 2, heads: 2, inputSize: 4, inChannels: 3, numClasses: 5))
        var rng = RandomGenerator(seed: 21)
        let p = net.initialParameters(rng: &rng)
        // Non-zero everywhere, so a swapped or dropped tensor shows.
        var r2 = RandomGenerator(seed: 22)
        return (net, ParameterSet(p.pairs.map { ($0, $1 + Tensor.randomNormal($1.shape, rng: &r2)) }))
    }

    func assertModelError<T>(_ body: @autoclosure () throws -> T, contains fragments: [String],
                             file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected an error containing \(fragments)", file: file, line: line)
        } catch let e as ModelError {
            for f in fragments { XCTAssertTrue(e.message.contains(f), "\"\(e.message)\" lacks \"\(f)\"", file: file, line: line) }
            XCTAssertFalse(e.message.contains("\n"), file: file, line: line)
        } catch {
            XCTFail("expected a ModelError, got \(error)", file: file, line: line)
        }
    }

    func testRoundTripF32WithMetadata() throws {
        let (net, p) = try model()
        let path = dir + "/a.safetensors"
        try Checkpoint.save(p, path: path, metadata: [("config", "{\"hidden\": 16}"), ("step", "7")])
        let file = try SafetensorsFile.read(path: path)
        XCTAssertEqual(file.metadata("step"), "7")
        XCTAssertEqual(file.tensors.map(\.name), p.names)
        XCTAssertTrue(file.tensors.allSatisfy { $0.dtype == .f32 })
        let q = try net.loadParameters(path: path)
        XCTAssertEqual(q.names, p.names)
        for name in p.names { XCTAssertEqual(q[name].floats, p[name].floats, name) }
        let q2 = try Checkpoint.load(path: path, expected: net.parameterShapes)
        for name in p.names { XCTAssertEqual(q2[name].floats, p[name].floats, name) }
    }

    func testBF16AndPrefixes() throws {
        let (net, p) = try model()
        let path = dir + "/b.safetensors"
        // Two sets in one file under prefixes, as the reference fixtures hold student and teacher.
        let teacher = ParameterSet(p.pairs.map { ($0, $1 * 2.0) })
        let file = SafetensorsFile(tensors: Checkpoint.arrays(p, prefix: "params.", dtype: .bf16)
                                   + Checkpoint.arrays(teacher, prefix: "teacher."))
        try file.write(path: path)
        XCTAssertTrue(try SafetensorsFile.read(path: path).tensors.prefix(p.count).allSatisfy { $0.dtype == .bf16 })
        let s = try net.loadParameters(path: path, prefix: "params.")
        let t = try net.loadParameters(path: path, prefix: "teacher.")
        for name in p.names {
            XCTAssertEqual(t[name].floats, teacher[name].floats, name)
            for (a, b) in zip(s[name].floats, p[name].floats) {
                XCTAssertEqual(a, b, accuracy: abs(b) * 1.0 / 256 + 1e-30, name)  // bf16: 8 significant bits
            }
        }
        // Without a prefix, the prefixed names are all unknown.
        assertModelError(try net.loadParameters(path: path), contains: ["missing tensor \"x_embedder.proj.weight\""])
        // Save with BF16 through the public API too.
        try Checkpoint.save(p, path: dir + "/c.safetensors", prefix: "ema.", dtype: .bf16)
        XCTAssertEqual(try net.loadParameters(path: dir + "/c.safetensors", prefix: "ema.").count, p.count)
    }

    func testF16AndF64AreConvertedToFloat32() throws {
        let expected: [(name: String, shape: [Int])] = [("a", [2, 2]), ("b", [3])]
        let file = SafetensorsFile(tensors: [NamedArray(name: "a", shape: [2, 2], floats: [1, -2, 0.5, 1024], dtype: .f16),
                                             NamedArray(name: "b", shape: [3], doubles: [0.1, 1e-3, -7])])
        let p = try Checkpoint.parameters(from: file, expected: expected)
        XCTAssertEqual(p["a"].floats, [1, -2, 0.5, 1024])
        XCTAssertEqual(p["b"].floats, [Float(0.1), Float(1e-3), -7])
        XCTAssertEqual(p["a"].dtype, .float32)
        XCTAssertEqual(p.names, ["a", "b"])
    }

    func testRefusals() throws {
        let (net, p) = try model()
        var arrays = Checkpoint.arrays(p)
        // Missing tensor.
        let missing = SafetensorsFile(tensors: arrays.filter { $0.name != "blocks.1.attn.q_norm.weight" })
        assertModelError(try net.parameters(from: missing, source: "m.safetensors"),
                         contains: ["m.safetensors", "missing tensor \"blocks.1.attn.q_norm.weight\"", "[8]"])
        // Wrong shape.
        let i = arrays.firstIndex { $0.name == "blocks.0.mlp.fc1.weight" }!
        var wrong = arrays
        wrong[i] = NamedArray(name: "blocks.0.mlp.fc1.weight", shape: [16, 64], floats: [Float](repeating: 0, count: 1024))
        assertModelError(try net.parameters(from: SafetensorsFile(tensors: wrong)),
                         contains: ["\"blocks.0.mlp.fc1.weight\"", "[16, 64]", "[64, 16]"])
        // Extra tensor: refused unless allowed.
        arrays.append(NamedArray(name: "blocks.9.attn.qkv.weight", shape: [1], floats: [0]))
        let extra = SafetensorsFile(tensors: arrays)
        assertModelError(try net.parameters(from: extra), contains: ["unexpected tensor \"blocks.9.attn.qkv.weight\""])
        XCTAssertEqual(try net.parameters(from: extra, allowExtra: true).count, p.count)
        // A file on disk that does not parse gives one ModelError line naming the file.
        let path = dir + "/a.safetensors"
        let f = fopen(path, "w")!
        fputs("not a safetensors file", f)
        fclose(f)
        assertModelError(try net.loadParameters(path: path), contains: [path])
    }

    /// Found while giving the safetensors fuzz harness the training-checkpoint path (the model named by the
    /// file's own model_config): with input_size 16384 and patch 1, a 10 KB file made the loader allocate
    /// 8 GB for the rebuilt embedding (the harness reports it as a malloc over its 512 MB limit; seed
    /// Fuzz/corpus/safetensors/training-checkpoint-claims-16384-input.safetensors keeps it fuzzed).
    func testMissingPositionEmbeddingLargerThanTheFileIsRefused() throws {
        let net = try DiT(DiTConfig(patch: 1, hidden: 4, depth: 1, heads: 1, mlpRatio: 1, inputSize: 16384,
                                    inChannels: 1, numClasses: 1))
        let tensors = net.parameterShapes.filter { $0.name != "pos_embed" }.map { name, shape in
            NamedArray(name: name, shape: shape, floats: [Float](repeating: 0.5, count: shape.reduce(1, *)))
        }
        let held = tensors.reduce(0) { $0 + $1.count }
        XCTAssertLessThan(held, 4000)
        assertModelError(try net.parameters(from: SafetensorsFile(tensors: tensors), source: "big.safetensors"),
                         contains: ["big.safetensors", "pos_embed", "[1, 268435456, 4]", "\(held) values"])
        // The same model at a size the file can stand for still loads, embedding rebuilt.
        let small = try DiT(DiTConfig(patch: 1, hidden: 4, depth: 1, heads: 1, mlpRatio: 1, inputSize: 16,
                                      inChannels: 1, numClasses: 1))
        let q = try small.parameters(from: SafetensorsFile(tensors: tensors))
        XCTAssertEqual(q["pos_embed"].floats, DiT.positionEmbedding(hidden: 4, grid: 16).map(Float.init))
    }

    func testMissingPositionEmbeddingIsRebuilt() throws {
        let (net, p) = try model()
        let file = SafetensorsFile(tensors: Checkpoint.arrays(p).filter { $0.name != "pos_embed" })
        let q = try net.parameters(from: file)
        XCTAssertEqual(q.names, p.names)
        let pe = DiT.positionEmbedding(hidden: 16, grid: 2).map(Float.init)
        XCTAssertEqual(q["pos_embed"].floats, pe)
    }
}
