// NumPy .npy arrays: data sets (ImageDataset) and point clouds (PointFile) arrive in this format.
@testable import Formats

func fuzz(_ bytes: [UInt8]) {
    var parsed: NPYArray?
    let parseError = refusalMessage(FormatError.self) { parsed = try NPYArray.parse(bytes, source: "fuzz") }
    requireOneLine(parseError)

    // read(path:) has its own path: native float data goes from the file straight into the array.
    let path = scratchFile(bytes)
    var read: NPYArray?
    let readError = refusalMessage(FormatError.self) { read = try NPYArray.read(path: path) }
    require(parseError.map { "\(path): " + $0.dropFirst("fuzz: ".count) } == readError,
            "parse and read(path:) disagree: \(parseError ?? "ok") / \(readError ?? "ok")")
    guard let array = parsed, let fromPath = read else { return }
    require(same(array, fromPath), "read(path:) returned another array than parse")
    require(elementCount(of: array.shape) == array.count, "\(array.count) values for shape \(array.shape)")

    // Whatever is read can be written (as <f4 or <f8, whatever the dtype read) and read back bit for bit.
    let again = try! NPYArray.parse(try! array.serialized(), source: "again")
    require(sameValues(array, again), "serialize/parse round trip changed the array")
}

func same(_ a: NPYArray, _ b: NPYArray) -> Bool { a.descr == b.descr && sameValues(a, b) }

func sameValues(_ a: NPYArray, _ b: NPYArray) -> Bool {
    guard a.shape == b.shape else { return false }
    switch (a.storage, b.storage) {
    case let (.float32(x), .float32(y)): return sameBits(x, y)
    case let (.float64(x), .float64(y)): return sameBits(x, y)
    default: return false
    }
}
