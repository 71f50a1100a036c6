// Safetensors files as a model loader meets them: checkpoints (the FID weights have their own harness, inception.swift).
@testable import Formats
import NN
import TensorCore
import TVM

/// The stem of pytorch-fid's Inception-v3 as state-dict names and shapes: the kind of fixed expectation
/// the FID weights loader checks a file against (the full network is too large for a fuzz input).
let inceptionStem: [(name: String, shape: [Int])] = [
    ("Conv2d_1a_3x3.conv.weight", [32, 3, 3, 3]),
    ("Conv2d_1a_3x3.bn.weight", [32]), ("Conv2d_1a_3x3.bn.bias", [32]),
    ("Conv2d_1a_3x3.bn.running_mean", [32]), ("Conv2d_1a_3x3.bn.running_var", [32]),
]

/// The smallest valid DiT (about 3,500 parameters), so a whole checkpoint fits in a fuzz input.
let tinyDiT = try! DiT(DiTConfig(patch: 1, hidden: 4, depth: 1, heads: 1, mlpRatio: 1, inputSize: 2,
                                 inChannels: 1, numClasses: 1))

func fuzz(_ bytes: [UInt8]) {
    var parseError: String?
    var parsed: SafetensorsFile?
    parseError = refusalMessage(FormatError.self) { parsed = try SafetensorsFile.parse(bytes, source: "fuzz") }
    requireOneLine(parseError)

    // The path reader validates the same way but reads header and tensors from the file separately.
    let path = scratchFile(bytes)
    var read: SafetensorsFile?
    let readError = refusalMessage(FormatError.self) { read = try SafetensorsFile.read(path: path) }
    require(parseError.map { "\(path): " + $0.dropFirst("fuzz: ".count) } == readError,
            "parse and read(path:) disagree: \(parseError ?? "ok") / \(readError ?? "ok")")
    guard let file = parsed, let fromPath = read else { return }
    require(same(file, fromPath), "read(path:) returned other tensors than parse")

    for t in file.tensors {
        require(elementCount(of: t.shape).map { $0 * t.dtype.byteSize } == t.bytes.count,
                "tensor \(t.name): \(t.bytes.count) bytes for shape \(t.shape)")
    }
    // Whatever the reader accepts, the writer writes back identically.
    let again = try! SafetensorsFile.parse(try! file.serialized(), source: "again")
    require(same(file, again), "serialize/parse round trip changed the file")

    loadAsModel(file)
}

func same(_ a: SafetensorsFile, _ b: SafetensorsFile) -> Bool {
    a.tensors == b.tensors && a.metadata.count == b.metadata.count
        && zip(a.metadata, b.metadata).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
}

/// The loader's name, shape and dtype checks: a file that holds exactly what is expected loads with its
/// values (converted to float32 from any dtype); fixed expectations either load or throw `ModelError`.
func loadAsModel(_ file: SafetensorsFile) {
    let own = file.tensors.map { (name: $0.name, shape: $0.shape) }
    let loaded = try! Checkpoint.parameters(from: file, expected: own)
    for t in file.tensors {
        require(sameBits(loaded[t.name].floats, t.floats()), "tensor \(t.name) changed on loading")
    }

    for prefix in ["", "inception."] {
        if let p = refusedAs(ModelError.self, {
            try Checkpoint.parameters(from: file, expected: inceptionStem, prefix: prefix, allowExtra: true)
        }) {
            for (name, shape) in inceptionStem { require(p[name].shape == shape, "\(name) loaded with another shape") }
        }
    }

    for allowExtra in [false, true] { loadDiT(tinyDiT, from: file, allowExtra: allowExtra) }

    // A training checkpoint names its own model in the metadata (TrainingCheckpoint.read): the model
    // then comes from the file too, sizes included.
    if let text = file.metadata("model_config"), let json = try? JSONValue.parse(text),
       let config = try? DiTConfig(json: json), let net = try? DiT(config) {
        loadDiT(net, from: file, allowExtra: false)
    }
}

func loadDiT(_ net: DiT, from file: SafetensorsFile, allowExtra: Bool) {
    guard let p = refusedAs(ModelError.self, { try net.parameters(from: file, allowExtra: allowExtra) }) else { return }
    for (name, shape) in net.parameterShapes {
        require(p[name].shape == shape, "DiT parameter \(name) loaded with another shape")
    }
}
