import TensorCore
import NN
import Data
import Formats

/// The sample grids a training run writes at every snapshot: the same noise and classes every time (one row of
/// 10 per class, the first 10 classes), drawn from a stream of their own, so grids compare across steps and a
/// resumed run draws the grids the uninterrupted one would.
struct SampleGrids {
    static let perRow = 10
    /// The step counts of the grids, each a file `samples_step<N>_nfe<K>.png`.
    static let nfes = [1, 4]
    let labels: [Int]
    let noise: Tensor
    let cond: Conditioning
    let guidance: Double

    /// Grids for images like `data`'s, sampled with guidance scale `guidance` (in `interval` for a DiT with the
    /// interval input); `seed` is the run's.
    init(data: ImageDataset, seed: UInt64, guidance: Double, interval: ClosedRange<Double>? = nil, on device: Device = .default) {
        let rows = min(data.classes, 10)
        labels = (0..<(rows * Self.perRow)).map { $0 / Self.perRow }
        var rng = RandomGenerator(seed: seed &+ 0x6121D)
        noise = Tensor.randomNormal([labels.count, data.channels, data.height, data.width], rng: &rng, on: device)
        cond = Conditioning.sampling(labels: labels, classes: data.classes, guidance: guidance, interval: interval, on: device)
        self.guidance = guidance
    }

    /// One grid as written: its step count, file and picture.
    struct Grid {
        let nfe: Int
        let path: String
        let image: Image
    }

    /// Samples the grids with `trainer`'s evaluation EMA and writes them into `directory`, the samples turned into
    /// images by `decode` when given.
    func write(_ trainer: Trainer<DiT>, into directory: String, decode: ((Tensor) throws -> Tensor)? = nil) throws -> [Grid] {
        try Self.nfes.map { nfe in
            var x = trainer.sample(noise: noise, steps: nfe, cond: cond, weights: trainer.ema, guidanceScale: guidance)
            if let decode { x = try decode(x) }
            let path = directory + "/samples_step\(trainer.step)_nfe\(nfe).png"
            let image = try imageGrid(x.floats, n: labels.count, channels: x.shape[1], side: x.shape[2], columns: Self.perRow)
            try image.writePNG(path: path)
            return Grid(nfe: nfe, path: path, image: image)
        }
    }
}

extension SampleGrids {
    /// The step of a grid file's name `samples_step<N>_nfe<K>.png` (nil: another file).
    static func step(ofGridNamed name: String) -> Int? {
        guard name.hasPrefix("samples_step"), name.hasSuffix(".png") else { return nil }
        let parts = name.dropFirst("samples_step".count).split(separator: "_", maxSplits: 1)
        guard parts.count == 2, parts[1].hasPrefix("nfe") else { return nil }
        return Int(parts[0])
    }

    /// Removes the grids of every snapshot in `directory` but the first and the last `keep` (those of an earlier
    /// invocation of a resumed run too), so a long run does not pile up pictures; returns the removed names.
    static func prune(in directory: String, keepingLast keep: Int) throws -> [String] {
        let grids = try FileSystem.list(directory).compactMap { name in step(ofGridNamed: name).map { (name, $0) } }
        let steps = Set(grids.map(\.1)).sorted()
        let kept = Set([steps.first].compactMap { $0 } + steps.suffix(keep))
        let removed = grids.filter { !kept.contains($0.1) }.map(\.0)
        for name in removed { try FileSystem.removeFile(directory + "/" + name) }
        return removed
    }
}

/// [n, C, H, W] floats in [-1, 1] to a PNG grid (`columns` per row); channels other than 1 or 3 show channel 0 in gray.
public func writeImageGrid(_ values: [Float], n: Int, channels: Int, side: Int, columns: Int, path: String) throws {
    try imageGrid(values, n: n, channels: channels, side: side, columns: columns).writePNG(path: path)
}

/// The picture `writeImageGrid` writes.
func imageGrid(_ values: [Float], n: Int, channels: Int, side: Int, columns: Int) throws -> Image {
    let size = channels * side * side, plane = side * side
    let shown = channels == 1 || channels == 3 ? channels : 1
    let images = (0..<n).map { i -> [Float] in
        Array(values[(i * size)..<(i * size + shown * plane)])
    }
    return try imageGrid(images: images, channels: shown, height: side, width: side, columns: columns)
}
