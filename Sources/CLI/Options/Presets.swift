import NN
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
    officialImageNetPreset(name: "im256-w2", config: "im256_w2.yaml", cfg: 2, timeSpecInit: true, clipping: nil,
                           statistics: LatentNormalization.imageNet256Statistics, result: "1-NFE FID 3.29"),
    officialImageNetPreset(name: "im256-w1p75", config: "im256_w1p75.yaml", cfg: 1.75, timeSpecInit: false, clipping: nil,
                           statistics: LatentNormalization.imageNet256Statistics, result: "4-NFE FID 1.99"),
    officialImageNetPreset(name: "im512-w2p5", config: "im512_w2p5.yaml", cfg: 2.5, timeSpecInit: false, clipping: 1,
                           statistics: LatentNormalization.imageNet512Statistics, result: "1-NFE FID 4.32, the released im512_w2p5.pkl",
                           scaledParameterization: false),
    officialImageNetPreset(name: "im512-w2p25", config: "im512_w2p25.yaml", cfg: 2.25, timeSpecInit: true, clipping: 1,
                           statistics: LatentNormalization.imageNet512Statistics, result: "at 512 the paper reports 4-NFE FID 2.94"),
]

/// An official ImageNet recipe (`configs/<config>` of the official code) on a latent set made by `tvm prepare --vae`:
/// DiT-XL/2 with 18 heads, spectral initialisation, bf16, AdamW lr 1e-4 betas (0.9, 0.95) eps 1e-8 without weight
/// decay, batch 2048, evaluation EMA 0.9999, EMA target 0.99, label dropout 0.1, constant guidance w, the scaled
/// parameterization (off in im512_w2p5.yaml), the gap time sampler's defaults (mu_s -0.4, sigma_s 1, mu_g -0.8,
/// sigma_g 1), no flips, and the SD-VAE latent statistics of the resolution. The data (--data LATENTS.zip) is the user's.
private func officialImageNetPreset(name: String, config: String, cfg: Double, timeSpecInit: Bool, clipping: Double?,
                                    statistics: (mean: [Double], std: [Double]), result: String,
                                    scaledParameterization: Bool = true) -> TrainingPreset {
    func list(_ v: [Double]) -> JSONValue { .string(v.map { "\($0)" }.joined(separator: ",")) }
    return TrainingPreset(
        name: name,
        summary: "the official \(config): DiT-XL/2 (18 heads) on SD-VAE latents of ImageNet (--data LATENTS.zip), batch 2048, "
            + "w = \(cfg == cfg.rounded() ? "\(Int(cfg))" : "\(cfg)") (\(result))",
        options: [("model", .string("XL/2-18")), ("batch", .number(2048)), ("lr", .number(1e-4)), ("betas", .string("0.9,0.95")),
                  ("eps", .number(1e-8)), ("weight-decay", .number(0)), ("ema", .string("0.9999")), ("ema-target", .number(0.99)),
                  ("cfg", .number(cfg)), ("label-dropout", .number(0.1)), ("bf16", .bool(true)),
                  ("latent-mean", list(statistics.mean)), ("latent-std", list(statistics.std)),
                  ("latent-final-mean", .number(0)), ("latent-final-std", .number(1))]
            + (timeSpecInit ? [("time-spec-init", .bool(true))] : [])
            + (clipping.map { [("max-grad-norm", .number($0))] } ?? [])
            + (scaledParameterization ? [] : [("no-scaled-param", .bool(true))]))
}
