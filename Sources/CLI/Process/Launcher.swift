import TensorCore
import CUDABackend
import Distributed
#if canImport(Glibc)
import Glibc
#endif

/// `--gpus N` (one process per GPU, NCCL; `--comm socket` for the host path) and `--procs N` (processes on the
/// CPU, sockets): this process becomes a launcher that starts N copies of itself with the rank variables, waits
/// for them, forwards SIGINT/SIGTERM/SIGHUP and stops every rank as soon as one fails.
struct LaunchPlan {
    let processes: Int
    let onGPUs: Bool
    let comm: String?

    static let help = """
      --gpus N        data-parallel over N processes, one per GPU (rank r on GPU r mod the GPU count), NCCL
                      (loaded at run time; TVM_NCCL_LIB names libnccl.so.2 or its folder when it is not found)
      --procs N       data-parallel over N processes on the CPU, through sockets
      --comm socket   with --gpus: average through the host instead of NCCL (any NCCL, several ranks per GPU)
      The global --batch is split evenly across the ranks; an outside launcher may set RANK, WORLD_SIZE,
      LOCAL_RANK, MASTER_ADDR, MASTER_PORT (and TVM_COMM) instead, one process per rank.
    """

    /// Takes `--gpus`, `--procs` and `--comm` out of `args`; nil when neither `--gpus` nor `--procs` is given.
    static func extract(_ args: inout [String], command: String, device: DeviceChoice) throws -> LaunchPlan? {
        let gpus = try extractOption(&args, "gpus"), procs = try extractOption(&args, "procs")
        let comm = try extractOption(&args, "comm")
        guard gpus != nil || procs != nil else {
            if comm != nil { throw CLIError("--comm goes with --gpus N (an outside launcher sets TVM_COMM)", usage: true) }
            return nil
        }
        guard gpus == nil || procs == nil else { throw CLIError("give --gpus N or --procs N, not both", usage: true) }
        guard command == "dist-check" || (command == "train" && isImageTraining(args)) else {
            throw CLIError("--gpus/--procs train image data sets (data-parallel TVM); 2-D training runs in one process", usage: true)
        }
        if processEnvironment()["WORLD_SIZE"] != nil {
            throw CLIError("--gpus/--procs start their own processes; under a launcher that sets WORLD_SIZE, leave them out", usage: true)
        }
        let text = gpus ?? procs!
        guard let n = Int(text), (1...1024).contains(n) else {
            throw CLIError("--\(gpus != nil ? "gpus" : "procs") must be a whole number in 1...1024, got '\(text)'", usage: true)
        }
        if gpus != nil && device == .cpu { throw CLIError("--gpus runs on GPUs; for the CPU use --procs N", usage: true) }
        if procs != nil && device == .cuda { throw CLIError("--procs runs on the CPU; for GPUs use --gpus N", usage: true) }
        if let comm {
            guard gpus != nil, comm == "nccl" || comm == "socket" else {
                throw CLIError("--comm must be nccl or socket, with --gpus (--procs always uses sockets)", usage: true)
            }
        }
        return LaunchPlan(processes: n, onGPUs: gpus != nil, comm: comm ?? (gpus != nil ? "nccl" : "socket"))
    }

    /// Starts the ranks and waits for them; returns this process's exit status.
    func run(command: String, args: [String]) throws -> Int32 {
        var env = processEnvironment()
        // Every process this one starts keeps NVLink multicast off, whatever the caller's environment says.
        for (name, value) in NCCLCommunicator.multicastOff { env[name] = value }
        var gpuCount = 0
        if onGPUs {
            do { gpuCount = try CUDABackend.deviceCount() } catch { throw CLIError("--gpus: \(error)") }
            guard gpuCount > 0 else { throw CLIError("--gpus: the driver sees no GPU") }
            if processes > gpuCount {
                Console.info("note: \(processes) ranks share \(gpuCount) GPU\(gpuCount == 1 ? "" : "s")")
                // NCCL 2.30+ refuses several ranks on one GPU unless asked; older ones refuse regardless (--comm socket).
                env["NCCL_MULTI_RANK_GPU_ENABLE"] = "1"
            }
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CLIError("launcher: pipe: \(String(cString: strerror(errno)))") }
        // The ranks hold the read end; this process's write end closes only when it exits (see launcherWatchdog).
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        env["TVM_LAUNCHER_FD"] = "\(fds[0])"
        let port = try freePort()
        let runID = randomRunID()
        let exe = selfExecutable()
        var pids: [pid_t] = []
        installSignalForwarding()
        for r in 0..<processes {
            var rankEnv = env
            let place = LaunchEnvironment(rank: r, worldSize: processes, localRank: r, localWorldSize: processes,
                                          masterAddress: "127.0.0.1", masterPort: port, communicator: comm, runID: runID)
            for (k, v) in place.variables { rankEnv[k] = v }
            if onGPUs { rankEnv["TVM_CUDA_DEVICE"] = "\(r % gpuCount)" }
            let argv = [exe, command] + args + ["--device", onGPUs ? "cuda" : "cpu"]
            let pid = try spawn(exe, argv, rankEnv)
            pids.append(pid)
            launchedPIDs[Int(launchedCount)] = pid
            launchedCount += 1
        }
        _ = close(fds[0])
        return waitForRanks(pids)
    }

    /// Waits for every rank. Once one fails (non-zero status, or a signal this process did not send), the others
    /// are stopped: SIGTERM, then SIGKILL after 10 s. Ranks often fail together (the others see the first one's
    /// connection close), so every failure is reported, those killed by a signal first: they are the likely cause.
    private func waitForRanks(_ pids: [pid_t]) -> Int32 {
        var live = Set(pids)
        var failures: [(rank: Int, status: Int32)] = []
        var stopping = false
        var killAt: Double?
        while !live.isEmpty {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid > 0, live.remove(pid) != nil {
                let ourSignal = (stopping && status & 0x7F == SIGTERM) || receivedSignal != 0 || killedByInterrupt(status)
                if status != 0 && !ourSignal { failures.append((pids.firstIndex(of: pid)!, status)) }
                if !failures.isEmpty && !stopping {
                    stopping = true
                    for p in live { kill(p, SIGTERM) }
                    killAt = now() + 10
                }
                continue
            }
            if receivedSignal != 0 && killAt == nil { killAt = now() + 10 }
            if let t = killAt, now() >= t {
                for p in live { kill(p, SIGKILL) }
                killAt = .infinity
            }
            usleep(20_000)
        }
        if !failures.isEmpty {
            // A usage error is the same on every rank and rank 0 has printed it.
            if failures.contains(where: { $0.status == 2 << 8 }) { return 2 }
            let causes = failures.enumerated().sorted { a, b in
                (a.element.status & 0x7F == 0 ? 1 : 0, a.offset) < (b.element.status & 0x7F == 0 ? 1 : 0, b.offset)
            }.map { "rank \($0.element.rank) \(describeStatus($0.element.status))" }
            let others = pids.count - failures.count
            fputs("error: " + causes.joined(separator: ", then ")
                  + (others > 0 ? "; stopped the other \(others) rank\(others == 1 ? "" : "s")" : "") + "\n", stderr)
            return 1
        }
        if receivedSignal != 0 {
            fputs("error: interrupted (signal \(receivedSignal)); the ranks were stopped\n", stderr)
            return 128 + receivedSignal
        }
        return 0
    }
}

/// Removes every `--name value` / `--name=value` from `args`; returns the last value.
func extractOption(_ args: inout [String], _ name: String) throws -> String? {
    var value: String?
    var i = 0
    while i < args.count {
        if args[i] == "--\(name)" {
            guard i + 1 < args.count else { throw CLIError("--\(name) needs a value", usage: true) }
            value = args[i + 1]
            args.removeSubrange(i...(i + 1))
        } else if args[i].hasPrefix("--\(name)=") {
            value = String(args[i].dropFirst(name.count + 3))
            args.remove(at: i)
        } else {
            i += 1
        }
    }
    return value
}

private func describeStatus(_ status: Int32) -> String {
    let signal = status & 0x7F
    return signal == 0 ? "exited with status \((status >> 8) & 0xFF)" : "was killed by signal \(signal)"
}

/// A rank ended by the terminal's Ctrl-C (which reaches every process of the group) was interrupted, not failed.
private func killedByInterrupt(_ status: Int32) -> Bool { status & 0x7F == SIGINT }

private func spawn(_ exe: String, _ argv: [String], _ env: [String: String]) throws -> pid_t {
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for p in cArgs { free(p) }
        for p in cEnv { free(p) }
    }
    var pid: pid_t = 0
    let r = posix_spawn(&pid, exe, nil, nil, cArgs, cEnv)
    guard r == 0 else { throw CLIError("launcher: cannot start \(exe): \(String(cString: strerror(r)))") }
    return pid
}

private func selfExecutable() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    return n > 0 ? String(cString: buf) : CommandLine.arguments[0]
}

/// A port that was free a moment ago on the loopback interface, for rank 0 to listen on.
private func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CLIError("launcher: socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw CLIError("launcher: no free port: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

private func randomRunID() -> UInt64 {
    var v: UInt64 = 0
    let fd = open("/dev/urandom", O_RDONLY)
    if fd >= 0 {
        _ = read(fd, &v, 8)
        close(fd)
    }
    return v == 0 ? UInt64(UInt32(bitPattern: getpid())) << 32 | UInt64(time(nil) & 0xFFFF_FFFF) : v
}

// The signal handler may only touch plain memory: the children's ids live in a fixed buffer.
nonisolated(unsafe) private var launchedPIDs = UnsafeMutablePointer<pid_t>.allocate(capacity: 1024)
nonisolated(unsafe) private var launchedCount: Int32 = 0
nonisolated(unsafe) private var receivedSignal: Int32 = 0

private func installSignalForwarding() {
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal(sig) { s in
            receivedSignal = s
            for i in 0..<Int(launchedCount) { kill(launchedPIDs[i], s) }
        }
    }
}

/// In a rank started by `--gpus`/`--procs`: a thread that ends this process when the launcher is gone (its end of
/// the pipe closes however it exits, SIGKILL included), so no rank trains on as an orphan.
func startLauncherWatchdog() {
    guard let text = getenv("TVM_LAUNCHER_FD").map({ String(cString: $0) }), let fd = Int32(text) else { return }
    let box = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    box.pointee = fd
    var thread = pthread_t()
    let started = pthread_create(&thread, nil, { arg in
        let fd = arg!.assumingMemoryBound(to: Int32.self).pointee
        var byte: UInt8 = 0
        while read(fd, &byte, 1) < 0 && errno == EINTR {}
        fputs("error: the launcher exited; stopping this rank\n", stderr)
        _exit(1)
    }, box)
    if started == 0 { pthread_detach(thread) }
}
