import TensorCore
import NN
import Formats

/// `tvm reference-check FILE.pkl`: samples with this project's sampler from a network pickled by the official code,
/// and compares with what the official sampler produced from the same noise and labels, stored beside the pickle
/// in `FILE_samples.safetensors`.
///
/// That file holds `noise` [B, C, R, R], `labels` [B] (class indices) and `sample_<n>step` [B, C, R, R]; its
/// metadata names the network (`weights_key`, default "ema"), the guidance scale (`cfg_scale`) and the step counts
/// (`steps`, e.g. "1,2,4"), and may describe the model (`config`: patch, hidden, depth, heads, res, channels,
/// classes, scale_param), which is then checked against what the pickle itself says. Everything else comes from the
/// pickle: the architecture from its constructor arguments, kappa from the wrapper's `do_scale_param`.
public enum OfficialSampleCheck {
    /// `FILE_samples.safetensors` for `FILE.pkl` (or `FILE.pt`): the extension replaced.
    public static func samplesPath(for picklePath: String) -> String {
        let slash = picklePath.lastIndex(of: "/")
        if let dot = picklePath.lastIndex(of: "."), slash.map({ dot > $0 }) ?? true {
            return picklePath[..<dot] + "_samples.safetensors"
        }
        return picklePath + "_samples.safetensors"
    }

    /// Compares every `sample_<n>step` of the samples file beside `picklePath` (relative errors, in step order).
    /// Throws a one-line `ReferenceCheck.Failure` for a missing, malformed or inconsistent file.
    public static func run(picklePath: String, on device: Device = .default) throws -> [ReferenceCheck.Comparison] {
        let samplesPath = samplesPath(for: picklePath)
        let samples: SafetensorsFile
        do { samples = try SafetensorsFile.read(path: samplesPath) } catch let e as FormatError {
            throw ReferenceCheck.Failure(e.message)
        }
        func fail(_ s: String) -> ReferenceCheck.Failure { ReferenceCheck.Failure("\(samplesPath): \(s)") }
        let key = samples.metadata("weights_key") ?? "ema"
        guard let cfgText = samples.metadata("cfg_scale"), let cfg = Double(cfgText), cfg.isFinite, cfg > 0 else {
            throw fail("metadata \"cfg_scale\" must be a positive number")
        }
        let network: OfficialNetwork
        do { network = try OfficialNetwork.load(path: picklePath, key: key, on: device) } catch let e as ModelError {
            throw ReferenceCheck.Failure(e.message)
        }
        let c = network.config
        if let text = samples.metadata("config") { try checkDescription(text, against: network, fail: fail) }

        guard let noise = samples["noise"], noise.dtype != .i64, noise.shape.count == 4, noise.shape[0] >= 1,
              Array(noise.shape.dropFirst()) == [c.inChannels, c.inputSize, c.inputSize] else {
            throw fail("tensor \"noise\" must be floating point [B, \(c.inChannels), \(c.inputSize), \(c.inputSize)] for \(network.summary)")
        }
        let B = noise.shape[0]
        guard let labels = samples["labels"], labels.shape == [B] else { throw fail("tensor \"labels\" must be [\(B)] class indices") }
        var onehot = [Float](repeating: 0, count: B * c.numClasses)
        for (i, v) in labels.doubles().enumerated() {
            guard v == v.rounded(), v >= 0, v < Double(c.numClasses) else {
                throw fail("label \(v) of row \(i) is not a class index below \(c.numClasses)")
            }
            onehot[i * c.numClasses + Int(v)] = 1
        }
        let steps = try stepCounts(samples, fail: fail)
        let dit = try DiT(c)
        let x = Tensor(noise.floats(), shape: noise.shape, on: device)
        let cond = Conditioning(classes: Tensor(onehot, shape: [B, c.numClasses], on: device),
                                beta: Tensor.full(1 / cfg, shape: [B], on: device))
        return try steps.map { n in
            let name = "sample_\(n)step"
            guard let reference = samples[name], reference.shape == noise.shape else {
                throw fail("tensor \"\(name)\" must have the shape of \"noise\", \(Checkpoint.shapeText(noise.shape))")
            }
            let out = sampleFlowMap(network: dit, params: network.parameters, noise: x, steps: n, cond: cond,
                                    kappa: network.scaledParameterization ? cfg : 1)
            let relErr = ReferenceCheck.relativeError(out, Tensor(reference.floats(), shape: reference.shape, on: device))
            return ReferenceCheck.Comparison(name: name, relErr: relErr)
        }
    }

    /// The metadata's `steps` ("1,2,4"), or else the step counts of the `sample_<n>step` tensors.
    static func stepCounts(_ samples: SafetensorsFile, fail: (String) -> ReferenceCheck.Failure) throws -> [Int] {
        if let text = samples.metadata("steps") {
            let steps = text.split(separator: ",").map { Int($0.filter { $0 != " " }) }
            guard !steps.isEmpty, steps.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 1000 }) else {
                throw fail("metadata \"steps\" must list step counts from 1 to 1000, got \(quoted(text))")
            }
            return steps.map { $0! }
        }
        let steps = samples.tensors.compactMap { t -> Int? in
            guard t.name.hasPrefix("sample_"), t.name.hasSuffix("step") else { return nil }
            return Int(t.name.dropFirst("sample_".count).dropLast("step".count))
        }
        guard !steps.isEmpty else { throw fail("no \"steps\" metadata and no sample_<n>step tensors") }
        return steps.sorted()
    }

    /// The generator's own description of the model must agree with what the pickle says.
    static func checkDescription(_ text: String, against network: OfficialNetwork,
                                 fail: (String) -> ReferenceCheck.Failure) throws {
        guard let json = try? JSONValue.parse(text), json.object != nil else { throw fail("metadata \"config\" is not a JSON object") }
        let c = network.config
        let fields: [(String, JSONValue)] = [
            ("patch", .number(Double(c.patch))), ("hidden", .number(Double(c.hidden))), ("depth", .number(Double(c.depth))),
            ("heads", .number(Double(c.heads))), ("res", .number(Double(c.inputSize))),
            ("channels", .number(Double(c.inChannels))), ("classes", .number(Double(c.numClasses))),
            ("scale_param", .bool(network.scaledParameterization)),
        ]
        for (name, value) in fields {
            if let stated = json[name], stated != value {
                throw fail("metadata config says \(name) \(stated.serialized()), the pickle's network has \(value.serialized())")
            }
        }
    }
}
