import Formats

/// A named recipe for `tvm train`: the options `--preset NAME` (or `"preset": "NAME"` in a config file) sets, under
/// a config file's and the command line's own. Its options are written as a config file's keys and values.
struct TrainingPreset {
    let name: String
    /// One line for `tvm models`: what it trains and where its results are recorded.
    let summary: String
    let options: [(String, JSONValue)]
}

/// The presets, in the order `tvm models` lists them. A recipe is one entry here; `PresetTests` checks that every
/// key is an option of `tvm train`.
let trainingPresets: [TrainingPreset] = [
    TrainingPreset(
        name: "fashion-mnist-390s",
        summary: "class-conditional TVM on Fashion-MNIST in the official 390-second budget, as docs/BENCHMARKS.md ran it "
            + "(FID-10k 27.5 at 1 NFE, 14.0 at 4, mean of four seeds on an H100)",
        options: [("data", .string("fashion-mnist")), ("model", .string("S/2")), ("cfg", .number(2)), ("label-dropout", .number(0.1)),
                  ("batch", .number(128)), ("lr", .number(2e-4)), ("ema", .string("power:16,power:64,power:32,power:8,power:4")),
                  ("time-budget", .number(390)), ("every", .number(100_000)), ("bf16", .bool(true))]),
]
