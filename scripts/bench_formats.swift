// Times PNG writing and reading and the gzip IDX loading of Fashion-MNIST with one source tree's
// Sources/Formats and Sources/Data/{Gzip,IDX}.swift; scripts/bench-formats.sh builds and runs it.
#if canImport(Glibc)
import Glibc
#endif
import Formats

/// Data's error type, which Gzip.swift and IDX.swift throw (its home, Toy2D.swift, needs TensorCore).
public struct DataError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

func seconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// `value` with two decimals.
func decimals(_ value: Double) -> String {
    let hundredths = Int((value * 100).rounded())
    let fraction = String(hundredths % 100)
    return "\(hundredths / 100)." + (fraction.count < 2 ? "0" : "") + fraction
}

/// The median time of `runs` calls of `body`, in milliseconds.
func medianMilliseconds(runs: Int, _ body: () throws -> Void) rethrows -> Double {
    var times: [Double] = []
    for _ in 0..<runs {
        let start = seconds()
        try body()
        times.append((seconds() - start) * 1000)
    }
    return times.sorted()[runs / 2]
}

@main
struct Bench {
    static func main() throws {
        let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "/usr/share/datasets/fashion-mnist"
        let trainImages = directory + "/train-images-idx3-ubyte.gz"

        // A sample grid as training writes them: 8x8 Fashion-MNIST images, each padded to 32x32, gray.
        let firstImages = try IDX.readImages(path: trainImages)
        var gridPixels = [UInt8](repeating: 0, count: 256 * 256)
        for tile in 0..<64 {
            for y in 0..<28 {
                for x in 0..<28 {
                    gridPixels[(tile / 8 * 32 + 2 + y) * 256 + tile % 8 * 32 + 2 + x] = firstImages.values[tile * 784 + y * 28 + x]
                }
            }
        }
        let grid = Image(width: 256, height: 256, channels: 1, pixels: gridPixels)
        // A photo-like RGB image: smooth gradients plus a little noise (what image-folder data sets hold).
        var state: UInt32 = 1
        let photo = Image(width: 512, height: 512, channels: 3, pixels: (0..<(512 * 512 * 3)).map { i in
            state = state &* 1_664_525 &+ 1_013_904_223
            let x = i / 3 % 512, y = i / 1536, c = i % 3
            return UInt8(truncatingIfNeeded: (x * (c + 1) + y * (3 - c)) / 4 + Int(state >> 29))
        })

        for (name, image, runs) in [("grid 256x256 gray", grid, 41), ("photo 512x512 RGB", photo, 11)] {
            let png = try image.pngBytes()
            let write = try medianMilliseconds(runs: runs) { _ = try image.pngBytes() }
            let read = try medianMilliseconds(runs: runs) { _ = try Image.decodePNG(png) }
            print("png \(name): \(png.count) bytes, write \(decimals(write)) ms, read \(decimals(read)) ms")
        }
        let load = try medianMilliseconds(runs: 5) {
            for split in ["train", "t10k"] {
                _ = try IDX.readImages(path: directory + "/\(split)-images-idx3-ubyte.gz")
                _ = try IDX.readLabels(path: directory + "/\(split)-labels-idx1-ubyte.gz")
            }
        }
        print("fashion-mnist gzip IDX, 4 files: \(decimals(load)) ms")
    }
}
