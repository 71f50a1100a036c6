// The FID weights file as `tvm fid` loads it (InceptionV3(path:), Sources/Eval/Inception.swift): a
// safetensors file checked against Inception-v3's fixed names, dtypes and shapes, then folded.
import Eval
import Formats
import TensorCore

/// Bytes of tensor data a file needs to hold the whole network (about 87 MB of float32): no fuzz input
/// comes near it, so one that loads means that a check was skipped.
let networkDataBytes = InceptionV3.architecture.reduce(0) { sum, spec in
    let w = spec.window
    return sum + 4 * (spec.outChannels * spec.inChannels * w.kernelHeight * w.kernelWidth + 3 * spec.outChannels)
}

func fuzz(_ bytes: [UInt8]) {
    var parsed: SafetensorsFile?
    let parseError = refusalMessage(FormatError.self) { parsed = try SafetensorsFile.parse(bytes, source: "fuzz") }
    // The loader documents EvalError only; whatever the file holds, its message is one line.
    var loadError: String?
    if let file = parsed {
        loadError = refusalMessage(EvalError.self) { _ = try InceptionV3(file: file, source: "fuzz", device: .cpu) }
        requireOneLine(loadError)
        require(loadError != nil || bytes.count >= networkDataBytes,
                "a \(bytes.count)-byte file loaded as the \(networkDataBytes)-byte network")
    }

    // The path initializer reads the file with its own code and turns the parser's FormatError into an
    // EvalError: it must refuse the same inputs with the same reasons.
    let path = scratchFile(bytes)
    let pathError = refusalMessage(EvalError.self) { _ = try InceptionV3(path: path, device: .cpu) }
    let expected = parseError.map { "Inception weights: \(path): " + $0.dropFirst("fuzz: ".count) }
        ?? loadError.map { "Inception weights \(path): " + $0.dropFirst("Inception weights fuzz: ".count) }
    require(pathError == expected, "init(path:) and parse + init(file:) disagree: \(pathError ?? "ok") / \(expected ?? "ok")")
}
