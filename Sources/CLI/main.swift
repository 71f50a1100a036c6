import Formats
#if canImport(Glibc)
import Glibc
#endif

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
if name == "--version" {
    print(version)
    exit(0)
}
if name == "help" {
    guard argv.count > 1 else {
        print(usage())
        exit(0)
    }
    guard let command = commands.first(where: { $0.name == argv[1] }) else {
        fputs("error: no command '\(argv[1])'; run 'tvm help' for the list\n", stderr)
        exit(2)
    }
    print(command.help)
    exit(0)
}
guard let command = commands.first(where: { $0.name == name }) else {
    fputs("error: unknown command '\(name)'; run 'tvm help' for the list\n", stderr)
    exit(2)
}
var rest = Array(argv.dropFirst())
// Asked anywhere among a command's arguments, help wins over running it (and over starting ranks).
if rest.contains("--help") || rest.contains("-h") {
    print(command.help)
    exit(0)
}
if rest.isEmpty && command.needsArguments {
    print(command.help)
    exit(2)
}
// In a data-parallel run, rank 0 speaks for all: the others print only their own failures (a usage error is the
// same on every rank, so rank 0's line is enough).
Console.quiet = (getenv("RANK").flatMap { Int(String(cString: $0)) } ?? 0) != 0
do {
    // A config file or preset may set any option, --device and --gpus included.
    rest = try command.expandingConfiguration(rest)
    let device = try extractDevice(&rest, fallback: command.defaultDevice(rest))
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
