import TVM

/// One `tvm` subcommand: its name, the line `tvm help` lists it with, its options (`tvm help NAME`,
/// `tvm NAME --help`), the device it runs on when no `--device` is given, and what it does with its arguments.
protocol Command {
    var name: String { get }
    var summary: String { get }
    var help: String { get }
    /// The device without `--device`: `auto` (a GPU when there is one) unless the command says otherwise.
    func defaultDevice(_ args: [String]) -> DeviceChoice
    /// Whether running with no arguments at all prints the usage instead (a command whose defaults start a long job).
    var needsArguments: Bool { get }
    /// The flags a `--config FILE` or `--preset NAME` may set, given the arguments they expand to (nil: the
    /// command takes neither).
    func configurableOptions(_ args: [String]) -> OptionNames?
    func run(_ args: [String]) throws
}

extension Command {
    func defaultDevice(_ args: [String]) -> DeviceChoice { .auto }
    var needsArguments: Bool { false }
    func configurableOptions(_ args: [String]) -> OptionNames? { nil }

    /// The arguments with a config file and a preset expanded (`ConfigFile`), for a command that takes them.
    func expandingConfiguration(_ args: [String]) throws -> [String] {
        guard configurableOptions(args) != nil else { return args }
        return try ConfigFile.expand(args, command: name) { configurableOptions($0) ?? OptionNames(options: []) }
    }
}

/// Every command, in the order `tvm help` lists them.
let commands: [any Command] = [
    DemoCommand(), PrepareCommand(), TrainCommand(), SampleCommand(), W2Command(), FIDCommand(), PlotCommand(), ModelsCommand(),
    BenchCommand(), ImportCommand(), ReferenceCheckCommand(), DistCheckCommand(),
]

/// What `tvm --version` prints: the program's version and the training-checkpoint format it reads and writes.
let version = "tvm 0.1.0 (training checkpoint format \(TrainingCheckpoint.formatVersion))"

func usage() -> String {
    var s = "tvm: Terminal Velocity Matching in Swift\n\nusage: tvm <command> [options]\n\ncommands:\n"
    // One column for the summaries, two spaces past the longest name.
    let column = commands.map(\.name.count).max()! + 2
    for c in commands { s += "  " + c.name.padding(column) + c.summary + "\n" }
    s += "  " + "help".padding(column) + "this text, or 'tvm help <command>' (or 'tvm <command> --help') for a command's options\n"
    s += "\n'tvm --version' prints the version.\n"
    return s
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}
