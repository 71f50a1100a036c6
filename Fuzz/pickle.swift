// Pickles: the official networks, torch.save files (legacy and ZIP) and FID reference statistics arrive in this
// format, from strangers. Nothing in them may run, and no size they claim may be believed.
@testable import Formats
import NN

func fuzz(_ bytes: [UInt8]) {
    // The interpreter alone: a document, or one FormatError line.
    var value: PickleValue?
    requireOneLine(refusalMessage(FormatError.self) { value = try PickleReader.read(bytes, source: "fuzz") })
    if let value { visitEveryValue(of: value.document) }

    // The recognisers on what the file holds: a plain pickle or legacy torch.save file from memory, a ZIP archive
    // (torch.save's format) through a file, as `TorchPickle.read(path:)` tells them apart.
    var file: TorchPickle?
    let path = scratchFile(bytes)
    requireOneLine(refusalMessage(FormatError.self) { file = try TorchPickle.read(path: path) })
    guard let file else { return }
    recogniseEveryValue(in: file)
    // A fresh reading for the networks (the one above has spent its tensor budget on every tensor it found); the
    // networks of one file share it, as a training state's three do.
    guard let fresh = refusedAs(FormatError.self, { try TorchPickle.read(path: path) }) else { return }
    for key in OfficialNetwork.keys where fresh.root[key] != nil {
        var network: OfficialNetwork?
        requireOneLine(refusalMessage(ModelError.self) { network = try OfficialNetwork(fresh, key: key, on: .cpu) })
        guard let network else { continue }
        let expected = try! DiT(network.config).parameterShapes
        require(network.parameters.names == expected.map(\.name), "network \(key) has other tensors than its DiT")
        for (name, shape) in expected {
            let t = network.parameters[name]
            require(t.shape == shape && t.floats.allSatisfy(\.isFinite), "network \(key): \(name) is not a finite \(shape)")
        }
        require(Set(network.parameterOrder).isSubset(of: Set(expected.map(\.name))), "parameter order names unknown tensors")
    }
}

/// Every accessor on every value: none may trap, and descriptions stay on one line.
func visitEveryValue(of document: PickleDocument) {
    for id in document.nodes.indices {
        let v = document.value(id)
        requireOneLine(v.summary)
        _ = v.dictionary?.count
        _ = (v.elements?.count, v.setElements?.count, v.integerBytes?.count, v.persistentID?.summary)
        if let r = v.record { requireOneLine(r.calleeName.map { quoted($0) }) }
    }
}

/// Each value as a tensor, a numpy array and a module, as the recognisers would meet it; the module trees of the
/// top-level entries walked to their state dicts (walking every module's subtree would be quadratic).
func recogniseEveryValue(in file: TorchPickle) {
    for entry in file.root.dictionary ?? [] {
        guard let module = refusedAs(FormatError.self, { try TorchModule(entry.value, what: "m") }) else { continue }
        requireOneLine(refusalMessage(FormatError.self) { _ = try module.stateDict() })
    }
    let document = file.root.document
    for id in document.nodes.indices {
        let v = document.value(id)
        guard v.record != nil else { continue }
        if TorchPickle.isTensor(v) {
            var tensor: TorchTensor?
            requireOneLine(refusalMessage(FormatError.self) { tensor = try file.tensor(v, what: "t") })
            if let t = tensor {
                require(elementCount(of: t.shape) == t.count, "tensor of \(t.count) elements for shape \(t.shape)")
                require(t.floats().count == t.count && t.doubles().count == t.count, "decoded count differs from the shape")
            }
        }
        var array: NPYArray?
        requireOneLine(refusalMessage(FormatError.self) { array = try NumPyPickle.array(v, what: "a") })
        if let a = array { require(elementCount(of: a.shape) == a.count, "array of \(a.count) values for shape \(a.shape)") }
        requireOneLine(refusalMessage(FormatError.self) { _ = try TorchModule(v, what: "m") })
    }
}
