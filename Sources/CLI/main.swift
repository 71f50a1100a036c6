import Formats
#if canImport(Glibc)
import Glibc
#endif

let commands: [(name: String, summary: String, run: ([String]) throws -> Void)] = [
    ("demo", "train TVM, MeanFlow and flow matching on the checkerboard and compare W2 at 1-4 NFE", runDemo),
    ("train", "train one method on a 2-D distribution, or TVM on images (Fashion-MNIST, MNIST, PNG folders, NPY)", runTrain),
    ("sample", "sample images from an image-training checkpoint (PNG grid, NPY, PNG folder)", runSample),
    ("w2", "exact 2-Wasserstein distance between two point files (CSV or NPY)", runW2),
    ("fid", "Frechet Inception Distance between generated images and a data set (Inception-v3 run here)", runFID),
    ("bench", "time training steps and kernels (toy: the CPU TVM step on 2-D data)", runBench),
    ("reference-check", "compare DiT, TVM loss, gradients and samples with an official reference file", runReferenceCheck),
    ("dist-check", "check data-parallel training across processes: broadcast, averaged gradients, replicas", runDistCheck),
]

func usage() -> String {
    var s = "tvm: Terminal Velocity Matching in Swift\n\nusage: tvm <command> [options]\n\ncommands:\n"
    for c in commands { s += "  " + c.name.padding(14) + c.summary + "\n" }
    s += "  " + "help".padding(14) + "this text, or 'tvm help <command>' for a command's options\n"
    return s
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
}

// Past a file-size limit (ulimit -f) write() then fails with EFBIG, which the writers report in one line,
// instead of the signal killing the process with no message.
signal(SIGXFSZ, SIG_IGN)
if let pause = getenv("TVM_TEST_WRITE_PAUSE_MS").flatMap({ Double(String(cString: $0)) }), pause > 0 {
    AtomicFile.testPause = pause / 1000
}

let argv = Array(CommandLine.arguments.dropFirst())
guard let name = argv.first, name != "--help", name != "-h" else {
    print(usage())
    exit(argv.isEmpty ? 2 : 0)
}
if name == "help" {
    guard argv.count > 1 else {
        print(usage())
        exit(0)
    }
    guard let text = helpTexts[argv[1]] else {
        fputs("error: no command '\(argv[1])'; run 'tvm help' for the list\n", stderr)
        exit(2)
    }
    print(text)
    exit(0)
}
guard let command = commands.first(where: { $0.name == name }) else {
    fputs("error: unknown command '\(name)'; run 'tvm help' for the list\n", stderr)
    exit(2)
}
/// Commands that compute on a device; the demo is defined on the CPU (its budget is for the 2-core machine).
/// `train` on 2-D data defaults to the CPU too (a small MLP); on images it uses a GPU when there is one.
let deviceDefaults: [String: DeviceChoice] = ["demo": .cpu, "w2": .cpu, "reference-check": .auto, "bench": .auto, "sample": .auto]
func defaultDevice(_ command: String, _ args: [String]) -> DeviceChoice {
    if command == "train" {
        let data = args.firstIndex(of: "--data").flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } ?? "checkerboard"
        let isImages = ["fashion-mnist", "mnist"].contains(data.lowercased()) || FileSystem.exists(data)
        return isImages ? .auto : .cpu
    }
    return deviceDefaults[command] ?? .auto
}
// In a data-parallel run, rank 0 speaks for all: the others print only their own failures (a usage error is the
// same on every rank, so rank 0's line is enough).
Console.quiet = (getenv("RANK").flatMap { Int(String(cString: $0)) } ?? 0) != 0
do {
    var rest = Array(argv.dropFirst())
    let device = try extractDevice(&rest, fallback: defaultDevice(name, rest))
    // --gpus N / --procs N: this process only starts and watches the ranks.
    if let plan = try LaunchPlan.extract(&rest, command: name, device: device) { exit(try plan.run(command: name, args: rest)) }
    startLauncherWatchdog()
    try selectDevice(device)
    try command.run(rest)
} catch let e as CLIError {
    if !(e.usage && Console.quiet) { fputs("error: \(e.description)\n", stderr) }
    exit(e.usage ? 2 : 1)
} catch {
    fputs("error: \(error)\n", stderr)
    exit(1)
}
