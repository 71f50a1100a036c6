import Dispatch
import Formats
import Data

/// Images for FID, read a batch at a time: a reference set may be far larger than memory as pixels (the 1.28M crops
/// of ImageNet 256 are 250 GB), while its statistics need only one pass over it.
public protocol FIDImageSet {
    var count: Int { get }
    var channels: Int { get }
    var height: Int { get }
    var width: Int { get }
    /// What identifies exactly these images (the key of their cached statistics).
    var fingerprint: String { get }
    /// Images `range` as 8-bit pixels.
    func images(_ range: Range<Int>) throws -> ByteImages
}

extension ByteImages: FIDImageSet {
    public func images(_ range: Range<Int>) throws -> ByteImages {
        try ByteImages(pixels: Array(pixels[(range.lowerBound * imageSize)..<(range.upperBound * imageSize)]), count: range.count,
                       channels: channels, height: height, width: width)
    }
}

/// The images of a data set ZIP in the official format (what `tvm prepare` writes without --vae, the reference of the
/// paper's FID), all of one size, made RGB; listed once and decoded a batch at a time, in parallel over the cores.
/// The fingerprint is the archive's own record of its image entries (names, sizes, CRC-32s), so the cache key needs
/// no pass over the pixels.
public struct DatasetArchiveImages: FIDImageSet {
    public let source: ImageSource
    public let count: Int
    public let channels = 3
    public let height: Int, width: Int
    public let fingerprint: String

    /// The first `limit` images of the archive at `path` (nil: all).
    public init(path: String, limit: Int? = nil) throws {
        source = try ImageSource.zip(path)
        count = min(limit ?? source.count, source.count)
        let first = try source.image(0)
        (height, width) = (first.height, first.width)
        var crc = Checksum.crc32(Array("\(count)x3x\(height)x\(width)".utf8))
        for i in 0..<count {
            let entry = source.archiveEntry(i)!
            crc = Checksum.crc32(Array("\(source.names[i]) \(entry.size) \(entry.crc32)\n".utf8), previous: crc)
        }
        let hex = String(crc, radix: 16)
        fingerprint = "zip-\(count)x3x\(height)x\(width)-" + String(repeating: "0", count: 8 - hex.count) + hex
    }

    /// Images `range`, CHW; an image of another size than the first is an error naming it.
    public func images(_ range: Range<Int>) throws -> ByteImages {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "images \(range) of \(count)")
        let plane = height * width
        var pixels = [UInt8](repeating: 0, count: range.count * 3 * plane)
        let failures = UnsafeMutableBufferPointer<Error?>.allocate(capacity: range.count)
        failures.initialize(repeating: nil)
        defer { failures.deallocate() }
        let (source, height, width) = (self.source, self.height, self.width)
        pixels.withUnsafeMutableBufferPointer { out in
            DispatchQueue.concurrentPerform(iterations: range.count) { k in
                let i = range.lowerBound + k
                do {
                    let image = try source.image(i)
                    guard image.width == width, image.height == height else {
                        throw EvalError("\(source.location(i)): \(image.width)x\(image.height) pixels, while the images before it are "
                                        + "\(width)x\(height)")
                    }
                    // Interleaved RGB to planes.
                    let base = k * 3 * plane
                    for c in 0..<3 { for p in 0..<plane { out[base + c * plane + p] = image.pixels[p * 3 + c] } }
                } catch {
                    failures[k] = error
                }
            }
        }
        if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
        return try ByteImages(pixels: pixels, count: range.count, channels: 3, height: height, width: width)
    }
}
