// Point clouds for the 2-D toy experiments: CSV text, or .npy (recognised by its magic).
import Formats

func fuzz(_ bytes: [UInt8]) {
    let isNPY = bytes.starts(with: [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59])
    var result: (points: [Float], dim: Int)?
    let error = refusalMessage(FormatError.self) {
        result = isNPY ? try PointFile.parseNPY(bytes, source: "fuzz") : try PointFile.parseCSV(bytes, source: "fuzz")
    }
    requireOneLine(error)
    guard let (points, dim) = result else { return }
    require(dim > 0 && !points.isEmpty && points.count % dim == 0, "\(points.count) values in points of dimension \(dim)")
    require(points.allSatisfy(\.isFinite), "a non-finite coordinate was accepted")
}
