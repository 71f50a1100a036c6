// IDX files (MNIST / Fashion-MNIST), raw or gzipped.
@testable import Data

/// Small enough to keep the fuzzer's memory low, large enough for any input it produces.
let maxBytes = 1 << 24

func fuzz(_ bytes: [UInt8]) {
    // What the readers do: decompress no further than the IDX header declares, then parse.
    var capped: IDXArray?
    let error = refusalMessage(DataError.self) {
        capped = try IDX.parse(IDX.contents(of: bytes, source: "fuzz", maxBytes: maxBytes), source: "fuzz", maxBytes: maxBytes)
    }
    requireOneLine(error)
    // Decompressing everything first must give the same array: the header-tied cap only refuses earlier.
    var plain: IDXArray?
    requireOneLine(refusalMessage(DataError.self) {
        let contents = Gzip.isGzip(bytes) ? try Gzip.decompress(bytes, maxOutput: maxBytes + IDX.maxHeaderBytes) : bytes
        plain = try IDX.parse(contents, source: "fuzz", maxBytes: maxBytes)
    })
    require(capped == plain, "the header-tied cap changed the result: \(error ?? "ok")")
    if let a = capped {
        require(a.values.count == a.shape.reduce(1, *), "\(a.values.count) values for shape \(a.shape)")
    }
    // The typed readers check the magic first; they accept a subset of what the generic one does.
    for magic in [IDX.imagesMagic, IDX.labelsMagic] {
        if let typed = refusedAs(DataError.self, {
            try IDX.parse(IDX.contents(of: bytes, source: "fuzz", maxBytes: maxBytes, magic: magic), source: "fuzz", maxBytes: maxBytes)
        }) {
            require(typed == capped, "a typed read accepted what the generic one did not, or read it differently")
        }
    }
}
