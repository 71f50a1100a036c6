import NN
import Formats

/// `tvm models`: the named DiT sizes with their parameter counts, and the training presets.
struct ModelsCommand: Command {
    let name = "models"
    let summary = "the named model sizes with their parameter counts, and the training presets"
    let help = """
        tvm models
          Lists the DiT sizes `tvm train --model NAME` takes (any patch size too, e.g. B/4; NAME-H sets H heads) with
          their trainable parameters for two inputs: Fashion-MNIST as trained here (32x32, 1 channel, 10 classes)
          and the latents of ImageNet 256x256 (32x32, 4 channels, 1000 classes). The counts depend on the input
          only through the patch embedding, the label table and the final layer. Then the presets of
          `tvm train --preset NAME`, with the options each one sets.
        """

    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    /// The inputs the parameter counts are given for.
    static let inputs: [(title: String, res: Int, channels: Int, classes: Int)] = [
        ("32x32x1, 10 classes", 32, 1, 10), ("32x32x4, 1000 classes", 32, 4, 1000),
    ]

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "models", args, options: [])
        try a.expectPositional(0, "no arguments")
        Console.out(try Self.sizeTable())
        Console.out("")
        Console.out(Self.presetList())
    }

    /// One row per named size: its shape and trainable parameters for each of `inputs`.
    static func sizeTable() throws -> String {
        var rows = [["model", "hidden", "depth", "heads", "patch"] + inputs.map(\.title)]
        for name in DiTConfig.knownNames {
            var row: [String] = [name]
            for (k, input) in inputs.enumerated() {
                let config = try DiTConfig.named(name, res: input.res, channels: input.channels, classes: input.classes)
                if k == 0 { row += [config.hidden, config.depth, config.heads, config.patch].map(String.init) }
                row.append(millions(try DiT(config).parameterCount.trainable))
            }
            rows.append(row)
        }
        return "DiT sizes (tvm train --model NAME), trainable parameters:\n" + table(rows)
    }

    /// Each preset: its name and summary, then the options it sets as a config file would hold them.
    static func presetList() -> String {
        var out = "Presets (tvm train --preset NAME; a config file or the command line overrides any of its options):"
        for preset in trainingPresets {
            out += "\n  \(preset.name): \(preset.summary)\n    "
            out += preset.options.map { "\($0.0) \($0.1.string ?? $0.1.serialized())" }.joined(separator: ", ")
        }
        return out
    }

    /// "32.9M" (one decimal below 100 million, none above).
    static func millions(_ n: Int) -> String {
        let m = Double(n) / 1e6
        return m < 100 ? fmt(m, 1) + "M" : "\(Int(m.rounded()))M"
    }

    /// Left-aligned columns two spaces apart.
    static func table(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max()! }
        return rows.map { row in
            "  " + row.enumerated().map { $0 == row.count - 1 ? $1 : $1.padding(widths[$0] + 1) }.joined(separator: " ")
        }.joined(separator: "\n")
    }
}
