// Writes the seed corpus (Fuzz/corpus/<harness>/) with the package's own writers, plus hand-made edge
// cases that the writers never produce. Run by `scripts/fuzz.sh seeds`; the output is committed.
@testable import Formats
@testable import Data
import Eval
import NN
import TensorCore
import TVM
#if canImport(Glibc)
import Glibc
#endif

let root = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Fuzz/corpus"

/// The path of seed `name` for `harness`, its folder created.
func seedPath(_ harness: String, _ name: String) -> String {
    mkdir(root, 0o755)
    mkdir("\(root)/\(harness)", 0o755)
    return "\(root)/\(harness)/\(name)"
}

func save(_ harness: String, _ name: String, _ bytes: [UInt8]) {
    try! AtomicFile.write(path: seedPath(harness, name), bytes: bytes)
}

func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }

/// A safetensors file from header text and data, for headers the writer refuses to produce.
func safetensors(header: String, data: [UInt8] = []) -> [UInt8] {
    le64(UInt64(header.utf8.count)) + Array(header.utf8) + data
}

/// A PNG from raw chunks (type and data), with correct CRCs.
func png(_ chunks: [(String, [UInt8])]) -> [UInt8] {
    var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    for (type, data) in chunks { PNGChunks.append(&out, type: type, data: data[...]) }
    return out
}

func ihdr(width: UInt32, height: UInt32, depth: UInt8 = 8, color: UInt8, interlace: UInt8 = 0) -> (String, [UInt8]) {
    ("IHDR", be32(width) + be32(height) + [depth, color, 0, 0, interlace])
}

// MARK: safetensors (model checkpoints; the FID weights have their own harness below)

let tiny = try! DiT(DiTConfig(patch: 1, hidden: 4, depth: 1, heads: 1, mlpRatio: 1, inputSize: 2, inChannels: 1, numClasses: 1))
var rng = RandomGenerator(seed: 7)
let params = tiny.initialParameters(rng: &rng, on: .cpu)
save("safetensors", "tiny-dit-bf16.safetensors",
     try! SafetensorsFile(metadata: [("format", "pt")], tensors: Checkpoint.arrays(params, dtype: .bf16)).serialized())
save("safetensors", "tiny-dit-f16-no-pos-embed.safetensors",
     try! SafetensorsFile(tensors: Checkpoint.arrays(params, dtype: .f16).filter { $0.name != "pos_embed" }).serialized())
save("safetensors", "training-checkpoint-no-pos-embed.safetensors", try! SafetensorsFile(
    metadata: [("format", TrainingCheckpoint.format), ("model_config", tiny.config.json.serialized())],
    tensors: Checkpoint.arrays(params, dtype: .bf16).filter { $0.name != "pos_embed" }).serialized())
// The tiny model's tensors under a config claiming a 16384x16384 input: without pos_embed, rebuilding it
// took 8 GB before DiT.parameters(from:) bounded it by the file's own tensors.
let claimsHugeInput = DiTConfig(patch: 1, hidden: 4, depth: 1, heads: 1, mlpRatio: 1, inputSize: 16384, inChannels: 1, numClasses: 1)
save("safetensors", "training-checkpoint-claims-16384-input.safetensors", try! SafetensorsFile(
    metadata: [("format", TrainingCheckpoint.format), ("model_config", claimsHugeInput.json.serialized())],
    tensors: Checkpoint.arrays(params, dtype: .bf16).filter { $0.name != "pos_embed" }).serialized())
let stem = [("Conv2d_1a_3x3.conv.weight", [32, 3, 3, 3])] + ["weight", "bias", "running_mean", "running_var"].map {
    ("Conv2d_1a_3x3.bn." + $0, [32])
}
save("safetensors", "inception-stem-f16.safetensors", try! SafetensorsFile(
    metadata: [("source", "pytorch-fid pt_inception-2015-12-05")],
    tensors: stem.map { name, shape in
        NamedArray(name: name, shape: shape, floats: (0..<shape.reduce(1, *)).map { Float($0 % 17) / 8 - 1 }, dtype: .f16)
    }).serialized())
save("safetensors", "all-dtypes.safetensors", try! SafetensorsFile(metadata: [("a", "b"), ("note", "x\ny")], tensors: [
    NamedArray(name: "f32", shape: [2, 2], floats: [1, -2, .infinity, .nan]),
    NamedArray(name: "f16", shape: [3], floats: [0.5, 65504, -0.0], dtype: .f16),
    NamedArray(name: "bf16", shape: [1, 1, 2], floats: [1e-30, 3e38], dtype: .bf16),
    NamedArray(name: "f64", shape: [], doubles: [0.1]),
    NamedArray(name: "empty", shape: [0, 7], floats: []),
]).serialized())
save("safetensors", "no-tensors.safetensors", try! SafetensorsFile(tensors: []).serialized())
save("safetensors", "header-claims-1TB.safetensors", le64(1 << 40) + Array("{}".utf8))
save("safetensors", "shape-overflows.safetensors",
     safetensors(header: #"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}"#))
save("safetensors", "overlapping.safetensors", safetensors(
    header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}"#,
    data: [UInt8](repeating: 0x3C, count: 8)))

// MARK: inception (the FID weights file)

// A fuzz input has room for the first convolution's four tensors and little more: the second weight
// alone is 36 KB. The rest of each file is left for the fuzzer to get wrong.
let conv0 = InceptionV3.architecture[0]
let conv0Shapes = [("weight", [conv0.outChannels, conv0.inChannels, conv0.window.kernelHeight, conv0.window.kernelWidth])]
    + ["beta", "mean", "var"].map { ($0, [conv0.outChannels]) }
let fidFormat = ("format", InceptionV3.fileFormat)
save("inception", "metadata-only.safetensors", try! SafetensorsFile(metadata: [fidFormat], tensors: []).serialized())
save("inception", "stem-conv0-synthetic.safetensors", try! SafetensorsFile(metadata: [fidFormat], tensors: conv0Shapes.map { field, shape in
    // Variances must not be negative; the other values only need to be finite.
    let values: [Float] = (0..<shape.reduce(1, *)).map { k in field == "var" ? Float(k % 5) / 4 + 0.25 : Float(k % 17) / 8 - 1 }
    return NamedArray(name: "\(conv0.name).\(field)", shape: shape, floats: values)
}).serialized())
// Line breaks in what the loader quotes from the file (the format entry, an unknown tensor's name), which
// once went into its one-line messages as is (InceptionTests.testNamesFromTheFileAreQuotedOnOneLine).
save("inception", "format-with-line-break.safetensors",
     try! SafetensorsFile(metadata: [("format", "terminalvelocity i\neption-v3 fid 1")], tensors: []).serialized())
save("inception", "unknown-tensor-name-with-line-break.safetensors", try! SafetensorsFile(
    metadata: [fidFormat], tensors: [NamedArray(name: "fc\r\nweight", shape: [1], floats: [0])]).serialized())
// The same tensors with their real values and the converter's metadata, where the converted weights are
// found the way `tvm fid` finds them; elsewhere the committed seed is left as it is.
let weightsPath = getenv("TVM_INCEPTION_WEIGHTS").map { String(cString: $0) }
    ?? (getenv("HOME").map { String(cString: $0) } ?? ".") + "/.cache/terminalvelocity/inception-2015-12-05.safetensors"
if let weights = try? SafetensorsFile.read(path: weightsPath) {
    save("inception", "stem-conv0-real.safetensors", try! SafetensorsFile(
        metadata: weights.metadata, tensors: conv0Shapes.map { weights["\(conv0.name).\($0.0)"]! }).serialized())
} else {
    print("no converted Inception weights at \(weightsPath): Fuzz/corpus/inception/stem-conv0-real.safetensors not rewritten")
}

// MARK: npy

save("npy", "f4-2x3.npy", try! NPYArray(shape: [2, 3], floats: [0, 1, -1, .pi, .nan, -.infinity]).serialized())
save("npy", "f8-4.npy", try! NPYArray(shape: [4], doubles: [1e300, -0.0, .leastNonzeroMagnitude, 2]).serialized())
save("npy", "f4-scalar.npy", try! NPYArray(shape: [], floats: [42]).serialized())
save("npy", "f4-0x5.npy", try! NPYArray(shape: [0, 5], floats: []).serialized())
save("npy", "u1-2x2.npy", NPYArray.header(descr: "|u1", shape: [2, 2]) + [0, 127, 128, 255])
save("npy", "i4-3.npy", NPYArray.header(descr: "<i4", shape: [3]) + [1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 128])
save("npy", "i8-1.npy", NPYArray.header(descr: "<i8", shape: [1]) + le64(UInt64(bitPattern: -5)))
let v2Text = Array("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }".utf8) + [0x0A]
save("npy", "version-2.npy", NPYArray.magic + [2, 0] + le64(UInt64(v2Text.count)).prefix(4) + v2Text + [0, 0, 0x80, 0x3F])
save("npy", "header-claims-4GB.npy", NPYArray.magic + [2, 0, 0xFF, 0xFF, 0xFF, 0xFF] + Array("{}".utf8))
/// A version 1.0 .npy file from header text, for headers numpy (and our writer) never produce.
func npy(header: String, data: [UInt8] = []) -> [UInt8] {
    let text = Array(header.utf8)
    return NPYArray.magic + [1, 0, UInt8(truncatingIfNeeded: text.count), UInt8(truncatingIfNeeded: text.count >> 8)] + text + data
}
save("npy", "shape-overflows.npy", npy(header: "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }\n"))
save("npy", "fortran.npy", npy(header: "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }\n", data: [0, 0, 0, 0]))
save("npy", "structured.npy", npy(header: "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n", data: [0, 0, 0, 0]))

// MARK: png

for channels in 1...4 {
    let pixels = (0..<(5 * 3 * channels)).map { UInt8(truncatingIfNeeded: $0 * 37 + channels) }
    save("png", "\(channels)-channel-5x3.png", try! Image(width: 5, height: 3, channels: channels, pixels: pixels).pngBytes())
}
save("png", "gray-1x1.png", try! Image(width: 1, height: 1, channels: 1, pixels: [200]).pngBytes())
save("png", "ihdr-claims-2147483647-square.png",
     png([ihdr(width: 0x7FFF_FFFF, height: 0x7FFF_FFFF, color: 6), ("IDAT", try! Zlib.deflate([0], format: .zlib)), ("IEND", [])]))
save("png", "rows-beyond-the-data.png",
     png([ihdr(width: 16384, height: 16384, color: 0), ("IDAT", try! Zlib.deflate([UInt8](repeating: 0, count: 1000), format: .zlib)), ("IEND", [])]))
save("png", "palette.png", png([ihdr(width: 1, height: 1, color: 3), ("PLTE", [0, 0, 0]), ("IDAT", try! Zlib.deflate([0, 0], format: .zlib)), ("IEND", [])]))
save("png", "interlaced.png", png([ihdr(width: 1, height: 1, color: 0, interlace: 1), ("IDAT", try! Zlib.deflate([0, 0], format: .zlib)), ("IEND", [])]))
save("png", "ancillary-and-split-idat.png", {
    let z = try! Zlib.deflate([0, 1, 2, 4, 3, 2, 1, 0], format: .zlib)
    return png([ihdr(width: 3, height: 2, color: 0), ("tEXt", Array("k\u{0}v".utf8)),
                ("IDAT", Array(z.prefix(5))), ("IDAT", Array(z.dropFirst(5))), ("IEND", [])])
}())

// MARK: json

let config = try! DiTConfig.named("S/2", res: 32, channels: 4, classes: 10)
save("json", "dit-config.json", Array(config.json.serialized().utf8))
save("json", "dit-config-pretty.json", Array(config.json.serialized(pretty: true).utf8))
save("json", "safetensors-header.json", Array(try! SafetensorsFile(metadata: [("k", "v")], tensors: [
    NamedArray(name: "w", shape: [2, 3], floats: [Float](repeating: 1, count: 6)),
]).headerBytes().dropFirst(8)))
save("json", "values.json", Array(#"[null,true,false,0,-0,1.5e-7,-12345678901234567890,1E+2,"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00",{},[],{"":{"x":[1,[2,[3]]]}}]"#.utf8))
save("json", "nested-70.json", Array((String(repeating: "[", count: 70) + String(repeating: "]", count: 70)).utf8))
save("json", "bad-surrogate.json", Array(#"["\ud800x"]"#.utf8))
save("json", "duplicate-keys.json", Array(#"{"patch":2,"patch":4}"#.utf8))

// MARK: pointfile

try! PointFile.writeCSV(path: seedPath("pointfile", "points.csv"), points: [0.5, -1, 2.25, 1e-8, 3, 4], dim: 2)
save("pointfile", "header-crlf.csv", Array("x, y\r\n1,2\r\n\r\n3 4\r\n".utf8))
save("pointfile", "points-5x2.npy", try! NPYArray(shape: [5, 2], floats: (0..<10).map { Float($0) / 3 }).serialized())
save("pointfile", "points-3.npy", try! NPYArray(shape: [3], doubles: [1, 2, 1e39]).serialized())
save("pointfile", "empty-field.csv", Array("1,,2\n".utf8))

// MARK: idx

let images = try! IDX.encode(shape: [2, 3, 4], values: (0..<24).map { UInt8($0 * 10) })
let labels = try! IDX.encode(shape: [6], values: [0, 1, 2, 3, 4, 9])
save("idx", "images-idx3-ubyte", images)
save("idx", "labels-idx1-ubyte", labels)
save("idx", "images-idx3-ubyte.gz", try! Gzip.compress(images, name: "images-idx3-ubyte"))
save("idx", "labels-idx1-ubyte.gz", try! Gzip.compress(labels))
save("idx", "dims-overflow", [0, 0, 8, 3] + be32(0xFFFF_FFFF) + be32(0xFFFF_FFFF) + be32(0xFFFF_FFFF))
save("idx", "claims-2GB-small-gz.gz", try! Gzip.compress([0, 0, 8, 3] + be32(60000) + be32(28) + be32(28) + [UInt8](repeating: 0, count: 4000)))
save("idx", "float32.idx", [0, 0, 0x0D, 1] + be32(1) + [0, 0, 0x80, 0x3F])

// MARK: gzip

let text = Array("the quick brown fox jumps over the lazy dog\n".utf8)
save("gzip", "text.gz", try! Gzip.compress(text, name: "fox.txt"))
save("gzip", "empty.gz", try! Gzip.compress([]))
save("gzip", "two-members-and-padding.gz", try! Gzip.compress(text) + Gzip.compress(Array(text.reversed())) + [0, 0, 0, 0])
save("gzip", "bomb-256KB-of-zeros.gz", try! Gzip.compress([UInt8](repeating: 0, count: 1 << 18)))
save("gzip", "all-header-fields.gz", {
    // FEXTRA, FNAME, FCOMMENT and FHCRC, which our writer never sets.
    var header: [UInt8] = [0x1F, 0x8B, 8, 0x1E, 0, 0, 0, 0, 0, 3, 4, 0, 1, 2, 3, 4] + Array("name\u{0}note\u{0}".utf8)
    let crc = Checksum.crc32(header)
    header += [UInt8(truncatingIfNeeded: crc), UInt8(truncatingIfNeeded: crc >> 8)]
    return header + Array(try! Gzip.compress(text).dropFirst(10))
}())
save("gzip", "stored-block.gz", [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 1, 3, 0, 0xFC, 0xFF, 0x61, 0x62, 0x63]
     + (0..<4).map { UInt8(truncatingIfNeeded: Checksum.crc32(Array("abc".utf8)) >> (8 * UInt32($0))) } + [3, 0, 0, 0])
