import XCTest
import Foundation
import Formats

/// Data-parallel training as a user starts it: `--procs N` on the CPU (sockets), `--gpus N` where a GPU is.
final class DistributedCommandsTests: CLITestCase {
    /// 12 images 1x8x8 and labels 0, 1, 2; a batch of 6 splits over 1, 2 or 3 ranks.
    func makeParallelData(_ dir: String) throws -> [String] {
        let n = 12
        let images = (0..<(n * 64)).map { Float(($0 * 37) % 255) / 127.5 - 1 }
        try NPYArray.write(path: dir + "/x.npy", shape: [n, 8, 8], floats: images)
        try NPYArray.write(path: dir + "/y.npy", shape: [n], floats: (0..<n).map { Float($0 % 3) })
        return ["--data", dir + "/x.npy", "--labels", dir + "/y.npy", "--hidden", "32", "--depth", "1",
                "--heads", "2", "--patch", "2", "--batch", "6", "--flip", "--cfg-range", "1,3"]
    }

    func metrics(_ path: String, _ key: String) throws -> [Double] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONValue.parse(String($0))[key]?.double)
        }
    }

    func assertClose(_ a: [Double], _ b: [Double], relative: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        for (x, y) in zip(a, b) {
            XCTAssertLessThanOrEqual(abs(x - y), relative * max(abs(x), abs(y), 1e-3), "\(what): \(a) vs \(b)", file: file, line: line)
        }
    }

    /// Largest absolute difference between the float tensors of two checkpoints (same names required).
    func largestDifference(_ a: String, _ b: String) throws -> Float {
        let x = try SafetensorsFile.read(path: a), y = try SafetensorsFile.read(path: b)
        XCTAssertEqual(x.tensors.map(\.name), y.tensors.map(\.name))
        var worst: Float = 0
        for (s, t) in zip(x.tensors, y.tensors) {
            let u = s.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let v = t.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            for (p, q) in zip(u, v) { worst = max(worst, abs(p - q)) }
        }
        return worst
    }

    func testDistCheckAveragesGradientsOverThreeCPUProcesses() throws {
        let r = try run(["dist-check", "--procs", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        // Rank 0 alone speaks: one report line of each kind.
        let report = try XCTUnwrap(r.err.split(separator: "\n").first { $0.hasPrefix("gradients of a 12-row batch (4 per rank)") })
        let differences = report.components(separatedBy: "rank ").dropFirst().map { Double($0.split(separator: " ")[1].replacingOccurrences(of: ",", with: "")) }
        XCTAssertEqual(differences.count, 3, String(report))
        for d in differences { XCTAssertLessThanOrEqual(try XCTUnwrap(d), 1e-6, String(report)) }
        // Several buckets, most of them started while backward was running.
        let counts = try XCTUnwrap(report.firstMatch(of: #/in (\d+) buckets, (\d+) started during backward/#))
        XCTAssertGreaterThan(Int(counts.1)!, 2)
        XCTAssertGreaterThan(Int(counts.2)!, 0)
        XCTAssertTrue(r.err.contains("replicas identical on 3 ranks at step 0"), r.err)
        XCTAssertTrue(r.err.contains("replicas identical on 3 ranks at step 2"), r.err)
    }

    func testTwoProcessesTrainLikeOneAndResumeOnThree() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeParallelData(dir) + ["--device", "cpu"]
        var r = try run(["train"] + base + ["--steps", "4", "--every", "2", "--out", dir + "/one"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["train", "--procs", "2"] + base + ["--steps", "4", "--every", "2", "--out", dir + "/two"])
        XCTAssertEqual(r.status, 0, r.err)
        // Same global batch, data and noise: the same run up to float rounding (sums in another order).
        for key in ["loss", "terminal", "fm", "grad_norm"] {
            assertClose(try metrics(dir + "/two/metrics.jsonl", key), try metrics(dir + "/one/metrics.jsonl", key),
                        relative: 1e-5, key)
        }
        XCTAssertLessThan(try largestDifference(dir + "/one/checkpoint.safetensors", dir + "/two/checkpoint.safetensors"), 1e-5)
        // The weights were compared across ranks at every snapshot, student, teacher and EMA included.
        for step in [0, 2, 4] { XCTAssertTrue(r.err.contains("replicas identical on 2 ranks at step \(step): student 0x"), r.err) }
        XCTAssertEqual(r.err.components(separatedBy: "TVM on").count, 2, "one rank prints the run's lines: \(r.err)")

        // Stopped after 2 steps on 2 processes, resumed on 3: the uninterrupted single-process run again.
        r = try run(["train", "--procs", "2"] + base + ["--steps", "2", "--every", "100", "--out", dir + "/resumed"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["train", "--procs", "3"] + base + ["--steps", "4", "--every", "100", "--out", dir + "/resumed", "--resume"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("resumed from"), r.err)
        assertClose(try metrics(dir + "/resumed/metrics.jsonl", "loss"), try metrics(dir + "/one/metrics.jsonl", "loss"),
                    relative: 1e-5, "resumed on 3 ranks")
        XCTAssertLessThan(try largestDifference(dir + "/one/checkpoint.safetensors", dir + "/resumed/checkpoint.safetensors"), 1e-5)
        let meta = try SafetensorsFile.read(path: dir + "/resumed/checkpoint.safetensors")
        let single = try SafetensorsFile.read(path: dir + "/one/checkpoint.safetensors")
        for key in ["step", "rng_offset", "sampler_state"] { XCTAssertEqual(meta.metadata(key), single.metadata(key), key) }

        // The global batch must split evenly.
        try assertCleanError(["train", "--procs", "4"] + base + ["--steps", "1", "--out", dir + "/x"],
                             contains: "--batch 6 must be divisible by the 4 ranks")
    }

    func testLauncherOptionsAreCheckedBeforeAnythingStarts() throws {
        try assertCleanError(["train", "--procs", "2", "--data", "moons"], contains: "2-D training runs in one process")
        try assertCleanError(["dist-check", "--procs", "2", "--gpus", "2"], contains: "not both")
        try assertCleanError(["dist-check", "--procs", "0"], contains: "--procs must be a whole number in 1...1024")
        try assertCleanError(["dist-check", "--procs", "2", "--device", "cuda"], contains: "for GPUs use --gpus N")
        try assertCleanError(["dist-check", "--procs", "2", "--comm", "nccl"], contains: "--comm must be nccl or socket, with --gpus")
        try assertCleanError(["dist-check", "--device", "cpu"], contains: "give --gpus N or --procs N")
    }

    // MARK: - Failures: one rank dies, the launcher dies

    /// The ranks of launcher `pid`, by rank (from their environment).
    func ranks(of launcher: Int32) throws -> [Int: Int32] {
        var out: [Int: Int32] = [:]
        for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc") {
            guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 1, Int32(fields[1]) == launcher,
                  let env = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(entry)/environ")) else { continue }
            for v in env.split(separator: 0) {
                let s = String(decoding: v, as: UTF8.self)
                if s.hasPrefix("RANK="), let r = Int(s.dropFirst(5)) { out[r] = pid }
            }
        }
        return out
    }

    /// Gone, or a zombie nobody has reaped yet.
    func hasExited(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

    func waitFor(_ what: String, timeout: Double = 120, _ condition: () throws -> Bool) throws {
        let end = Date().addingTimeInterval(timeout)
        while !(try condition()) {
            guard Date() < end else { return XCTFail("timed out waiting for \(what)") }
            usleep(50_000)
        }
    }

    /// A long two-rank run, started and waited for until both ranks train.
    func startLongRun(_ dir: String) throws -> (Process, Pipe, [Int: Int32]) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["train", "--procs", "2"] + (try makeParallelData(dir)) + ["--steps", "1000000", "--every", "1000000", "--out", dir + "/run"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        try waitFor("the first steps") {
            ((try? String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n").count >= 2
        }
        let ranks = try ranks(of: p.processIdentifier)
        XCTAssertEqual(ranks.keys.sorted(), [0, 1])
        return (p, err, ranks)
    }

    func testARankThatDiesStopsTheRun() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (p, err, ranks) = try startLongRun(dir)
        kill(ranks[1]!, SIGKILL)
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 1, text)
        XCTAssertTrue(text.contains("error: rank 1 was killed by signal 9"), text)
        XCTAssertTrue(hasExited(ranks[0]!), "rank 0 was stopped")
    }

    func testRanksDoNotOutliveTheirLauncher() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // SIGTERM is forwarded: the ranks stop and the launcher says so.
        var (p, err, ranks) = try startLongRun(dir)
        p.terminate()
        p.waitUntilExit()
        var text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 128 + SIGTERM, text)
        XCTAssertTrue(text.contains("error: interrupted (signal 15); the ranks were stopped"), text)
        for pid in ranks.values { XCTAssertTrue(hasExited(pid)) }

        // A launcher killed outright cannot forward anything: the ranks notice that it is gone.
        try FileManager.default.removeItem(atPath: dir + "/run")
        (p, err, ranks) = try startLongRun(dir)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        try waitFor("the ranks to exit", timeout: 30) { ranks.values.allSatisfy(hasExited) }
        text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(text.contains("the launcher exited; stopping this rank"), text)
    }

    // MARK: - GPUs (skipped without one)

    func testDistCheckWithNCCLOnTheGPUs() throws {
        guard access("/dev/nvidiactl", F_OK) == 0 else { throw XCTSkip("no NVIDIA GPU") }
        // World size 1 through NCCL.
        var r = try run(["dist-check", "--gpus", "1"])
        if r.err.contains("libnccl.so.2) not found") { throw XCTSkip("no NCCL library: \(r.err)") }
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("(NCCL 2."), r.err)
        XCTAssertTrue(r.err.contains("replicas identical on 1 ranks at step 2"), r.err)
        // Two ranks through the host: works however many GPUs there are.
        r = try run(["dist-check", "--gpus", "2", "--comm", "socket"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("replicas identical on 2 ranks at step 2"), r.err)
        // Two ranks through NCCL: on one GPU only an NCCL that allows several ranks per GPU (2.30+) takes it,
        // and an older one must be refused with the way out named.
        r = try run(["dist-check", "--gpus", "2"])
        if r.status != 0 && r.err.contains("note: 2 ranks share 1 GPU") {
            XCTAssertTrue(r.err.contains("--comm socket works"), r.err)
        } else {
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.err.contains("replicas identical on 2 ranks at step 2"), r.err)
        }
    }
}
