import XCTest
import Foundation
import Formats

/// `tvm train` on images under the failures a long run meets: SIGKILL at any moment (inside checkpoint
/// writes too), a full disk and a file-size limit while saving, and the fsyncs that make a checkpoint
/// survive a power loss. The tiny CPU run of `makeData` keeps each launch to tens of milliseconds.
final class CrashSafetyTests: CLITestCase {
    /// SplitMix64: the kill plan is the same on every run of the test (the moments themselves still depend
    /// on the machine's speed, which is the point).
    struct SplitMix {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: UInt64) -> UInt64 { next() % n }
    }

    func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Starts `tvm` with stderr going to `stderrPath` (a pipe nobody reads could fill and stall it).
    func launch(_ args: [String], stderrPath: String, environment extra: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
        XCTAssertTrue(FileManager.default.createFile(atPath: stderrPath, contents: nil), "cannot create \(stderrPath)")
        p.standardError = FileHandle(forWritingAtPath: stderrPath)
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// The step of a checkpoint that reads back whole: it parses, and the CRC-32 of its tensor data matches
    /// the one it recorded. Fails the test otherwise.
    func completeCheckpointStep(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        let ck = try SafetensorsFile.read(path: path)
        var crc: UInt32 = 0
        for t in ck.tensors { crc = Checksum.crc32(t.bytes, previous: crc) }
        XCTAssertEqual(ck.metadata("data_crc32"), "\(crc)", "\(path) is not a complete checkpoint", file: file, line: line)
        return try XCTUnwrap(ck.metadata("step").flatMap { Int($0) }, file: file, line: line)
    }

    func resumedStep(_ stderr: String) -> Int? {
        guard let line = stderr.split(separator: "\n").first(where: { $0.hasPrefix("resumed from ") }),
              let step = line.split(separator: " ").last else { return nil }
        return Int(step)
    }

    /// The temporary files in `dir` (none when a kill came before the directory was made).
    func temporaries(_ dir: String) throws -> [String] {
        guard exists(dir) else { return [] }
        return try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
    }

    /// The figures of every step of a metrics log, without the timings (which differ between runs).
    func stepFigures(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            let v = try JSONValue.parse(String(line))
            return ["step", "loss", "terminal", "fm", "grad_norm"].map { v[$0].map { $0.serialized() } ?? "-" }.joined(separator: " ")
        }
    }

    /// At least 20 SIGKILLs, half of them aimed inside a checkpoint write (the writer pauses there, see
    /// `TVM_TEST_WRITE_PAUSE_MS`), half at random moments (start-up, reading the checkpoint, training steps,
    /// sample grids). After each kill the checkpoint on disk must read back whole and be no older than
    /// before; the next launch must resume from exactly its step; and the run finished at the end must
    /// match an uninterrupted run bit for bit: every step's figures, the checkpoint file and the grids.
    func testSIGKILLAtRandomMomentsResumesFromTheLastCompleteCheckpointAndMatchesAnUninterruptedRun() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let steps = 300, every = 3, pauseMS: UInt64 = 20
        let train = ["train"] + (try makeData(dir)) + ["--steps", "\(steps)", "--every", "\(every)"]

        let reference = dir + "/reference"
        let r = try run(train + ["--out", reference])
        XCTAssertEqual(r.status, 0, r.err)

        let work = dir + "/killed", checkpoint = work + "/checkpoint.safetensors"
        var rng = SplitMix(state: 20_261_125)
        var kills = 0, aimed = 0, midWrite = 0, midCheckpoint = 0, partialTemporary = 0, launches = 0, verifiedResumes = 0
        var savedStep = 0  // 0: no checkpoint yet
        while kills < 24 {
            launches += 1
            let resume = exists(checkpoint)
            let stderrPath = dir + "/stderr-\(launches).txt"
            let p = try launch(train + ["--out", work] + (resume ? ["--resume"] : []), stderrPath: stderrPath,
                               environment: ["TVM_TEST_WRITE_PAUSE_MS": "\(pauseMS)"])
            let temporary = checkpoint + ".tmp-\(p.processIdentifier)"
            if rng.below(2) == 0 {
                // Inside the k-th checkpoint write of this launch, at a random point of its two pauses.
                aimed += 1
                let k = 1 + rng.below(3)
                var seen: UInt64 = 0, present = false
                let deadline = Date().addingTimeInterval(20)
                while p.isRunning && Date() < deadline {
                    let now = exists(temporary)
                    if now && !present { seen += 1 }
                    present = now
                    if seen == k { break }
                    usleep(200)
                }
                usleep(useconds_t(rng.below(pauseMS * 2500)))
            } else {
                usleep(useconds_t(rng.below(600_000)))
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let err = try String(contentsOfFile: stderrPath, encoding: .utf8)
            XCTAssertFalse(err.contains("error:"), err)
            guard p.terminationReason == .uncaughtSignal else {
                XCTFail("launch \(launches) finished before its kill; the run is too short for the test: \(err)")
                break
            }
            XCTAssertEqual(p.terminationStatus, SIGKILL)
            kills += 1
            if let step = resumedStep(err) {
                XCTAssertEqual(step, savedStep, "launch \(launches) resumed from step \(step), not from the last checkpoint")
                verifiedResumes += 1
            }
            let left = try temporaries(work).filter { $0.hasSuffix(".tmp-\(p.processIdentifier)") }
            if !left.isEmpty { midWrite += 1 }
            if exists(temporary) {
                midCheckpoint += 1
                func size(_ path: String) -> Int? { (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int }
                if let partial = size(temporary), let whole = size(checkpoint), partial < whole * 9 / 10 { partialTemporary += 1 }
            }
            XCTAssertTrue(savedStep == 0 || exists(checkpoint), "a kill lost the checkpoint of step \(savedStep)")
            if exists(checkpoint) {
                let step = try completeCheckpointStep(checkpoint)
                XCTAssertGreaterThanOrEqual(step, savedStep, "the checkpoint went back in time")
                XCTAssertEqual(step % every, 0)
                savedStep = step
            }
        }

        // The last launch runs to the end (no pauses), cleaning up what the kills left behind.
        let leftovers = try temporaries(work)
        let last = try run(train + ["--out", work, "--resume"])
        XCTAssertEqual(last.status, 0, last.err)
        XCTAssertEqual(resumedStep(last.err), savedStep)
        if !leftovers.isEmpty {
            XCTAssertTrue(last.err.contains("removed \(leftovers.count) unfinished temporary file"), last.err)
        }
        XCTAssertEqual(try temporaries(work), [])
        XCTAssertEqual(try stepFigures(work + "/metrics.jsonl"), try stepFigures(reference + "/metrics.jsonl"))
        XCTAssertEqual(try stepFigures(work + "/metrics.jsonl").count, steps)
        XCTAssertEqual(try AtomicFile.read(path: checkpoint), try AtomicFile.read(path: reference + "/checkpoint.safetensors"))
        for nfe in [1, 4] {
            let grid = "/samples_step\(steps)_nfe\(nfe).png"
            XCTAssertEqual(try AtomicFile.read(path: work + grid), try AtomicFile.read(path: reference + grid))
        }
        XCTAssertGreaterThanOrEqual(kills, 20)
        XCTAssertGreaterThan(midCheckpoint, 0, "no kill landed inside a checkpoint write")
        print("kill test: \(launches) launches, \(kills) SIGKILLs (\(aimed) aimed at checkpoint writes), \(midWrite) inside a write "
            + "(\(midCheckpoint) inside a checkpoint write, \(partialTemporary) of them with a partial temporary file), "
            + "\(verifiedResumes) resumes checked against the last checkpoint's step, \(leftovers.count) temporary files cleaned at the end, "
            + "last checkpoint before the final run: step \(savedStep) of \(steps)")
    }

    /// Runs `tvm train` to step 3, then resumes it to step 6 under `limit` (a shell command prefix), which
    /// must make the step-6 checkpoint fail. Checks the one-line message, that the step-3 checkpoint is
    /// untouched with no temporary left, and that a later resume without the limit ends exactly like an
    /// uninterrupted 6-step run.
    func assertFailedSaveKeepsThePreviousCheckpoint(dir: String, work: String, reason: String,
                                                    limited: (_ args: [String]) throws -> (status: Int32, out: String, err: String),
                                                    beforeRetry: () throws -> Void = {}) throws {
        let base = try makeData(dir)
        var r = try run(["train"] + base + ["--steps", "6", "--every", "3", "--out", dir + "/reference"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["train"] + base + ["--steps", "3", "--every", "3", "--out", work])
        XCTAssertEqual(r.status, 0, r.err)
        let checkpoint = work + "/checkpoint.safetensors"
        let before = try AtomicFile.read(path: checkpoint)

        r = try limited(["train"] + base + ["--steps", "6", "--every", "3", "--out", work, "--resume"])
        XCTAssertEqual(r.status, 1, r.err)
        let errors = r.err.split(separator: "\n").filter { $0.hasPrefix("error:") }
        XCTAssertEqual(errors.count, 1, r.err)
        let message = String(errors.first ?? "")
        for part in ["step 6: could not save the checkpoint, so the run stops", "the checkpoint of step 3 in \(checkpoint) is intact",
                     reason] {
            XCTAssertTrue(message.contains(part), "\(message) should contain \(part)")
        }
        XCTAssertTrue(r.err.hasSuffix(message + "\n"), "the error is the last line: \(r.err)")
        for crash in ["Fatal error", "Stack dump", "Illegal instruction", "Segmentation"] { XCTAssertFalse(r.err.contains(crash), r.err) }
        XCTAssertEqual(try AtomicFile.read(path: checkpoint), before, "the previous checkpoint must survive byte for byte")
        XCTAssertEqual(try temporaries(work), [])

        try beforeRetry()
        r = try run(["train"] + base + ["--steps", "6", "--every", "3", "--out", work, "--resume"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(resumedStep(r.err), 3)
        XCTAssertEqual(try AtomicFile.read(path: checkpoint), try AtomicFile.read(path: dir + "/reference/checkpoint.safetensors"))
        XCTAssertEqual(try stepFigures(work + "/metrics.jsonl"), try stepFigures(dir + "/reference/metrics.jsonl"))
    }

    /// `ulimit -f`: write() past the limit fails with EFBIG (tvm ignores SIGXFSZ, which would otherwise kill
    /// it without a word). 400 blocks (200 or 400 KiB, by the shell's unit) hold the log and the grids but
    /// not a 1 MB checkpoint.
    func testFileSizeLimitWhileSavingStopsTheRunAndKeepsThePreviousCheckpoint() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try assertFailedSaveKeepsThePreviousCheckpoint(dir: dir, work: dir + "/run", reason: "File too large") { args in
            try self.run(["-c", "ulimit -f 400 && exec \"$0\" \"$@\"", self.binary] + args, executable: "/bin/sh")
        }
    }

    /// A real full disk (ENOSPC): a 4 MiB tmpfs filled up to 300 KiB. Mounting needs root with
    /// CAP_SYS_ADMIN; elsewhere the test skips (the file-size test above covers the same code path).
    func testFullDiskWhileSavingStopsTheRunAndKeepsThePreviousCheckpoint() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let mount = try run(["-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], executable: "/bin/mount")
        guard mount.status == 0 else { throw XCTSkip("cannot mount a tmpfs here (\(mount.err.trimmingCharacters(in: .whitespacesAndNewlines)))") }
        defer { _ = try? run([disk], executable: "/bin/umount") }
        let filler = disk + "/filler"
        try assertFailedSaveKeepsThePreviousCheckpoint(dir: dir, work: disk + "/run", reason: "No space left on device (the disk is full)") { args in
            var fs = statvfs()
            XCTAssertEqual(statvfs(disk, &fs), 0)
            let free = Int(fs.f_bavail) * Int(fs.f_frsize)
            XCTAssertTrue(FileManager.default.createFile(atPath: filler, contents: Data(count: max(0, free - 300 << 10))))
            return try self.run(args)
        } beforeRetry: {
            try FileManager.default.removeItem(atPath: filler)
        }
    }

    /// The order that makes a checkpoint survive a power loss, as the kernel sees it: the temporary file is
    /// fsynced before it is renamed over the checkpoint, and the directory holding the rename is fsynced
    /// after. Needs strace (and ptrace permission); skips without.
    /// strace -f splits a call that another thread interrupts into "PID call(args <unfinished ...>" and, later,
    /// "PID <... call resumed>rest"; this puts each call back on one line (at the place it finished).
    static func joinInterruptedCalls(_ lines: [String]) -> [String] {
        var pending: [Substring: String] = [:]
        var joined: [String] = []
        for line in lines {
            let pid = line.prefix { $0 != " " }
            if line.hasSuffix(" <unfinished ...>") {
                pending[pid] = String(line.dropLast(" <unfinished ...>".count))
            } else if let start = pending[pid], let r = line.range(of: " resumed>") {
                joined.append(start + line[r.upperBound...])
                pending[pid] = nil
            } else {
                joined.append(line)
            }
        }
        return joined
    }

    func testCheckpointIsFsyncedBeforeTheRenameAndItsDirectoryAfter() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/strace") else { throw XCTSkip("strace is not installed") }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trace = dir + "/trace.txt", out = dir + "/run"
        let r = try run(["-f", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-o", trace, binary, "train"]
                        + (try makeData(dir)) + ["--steps", "1", "--out", out], executable: "/usr/bin/strace")
        guard r.status == 0 else { throw XCTSkip("strace cannot trace here: \(r.err.prefix(200))") }
        let lines = Self.joinInterruptedCalls(try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").map(String.init))
        let checkpoint = out + "/checkpoint.safetensors"
        func index(_ what: String, _ predicate: (String) -> Bool) throws -> Int {
            try XCTUnwrap(lines.firstIndex(where: predicate), "no \(what) in the trace:\n" + lines.joined(separator: "\n"))
        }
        func fd(_ line: String) -> String? { line.split(separator: "=").last.map { $0.trimmingCharacters(in: .whitespaces) } }
        let create = try index("creation of the temporary") { $0.contains("openat(") && $0.contains("\(checkpoint).tmp-") && $0.contains("O_CREAT") }
        let tmpFD = try XCTUnwrap(fd(lines[create]))
        let rename = try index("rename") { $0.contains("rename") && $0.contains("\"\(checkpoint)\"") && $0.hasSuffix("= 0") }
        let fileSync = try index("fsync of the temporary") { $0.contains("fsync(\(tmpFD))") && $0.hasSuffix("= 0") }
        XCTAssertLessThan(create, fileSync)
        XCTAssertLessThan(fileSync, rename, "the data must be on disk before the rename makes it the checkpoint")
        let openDir = try XCTUnwrap(lines[rename...].firstIndex { $0.contains("openat(") && $0.contains("\"\(out)\"") && $0.contains("O_RDONLY") },
                                    "the directory is not opened after the rename")
        let dirFD = try XCTUnwrap(fd(lines[openDir]))
        XCTAssertNotNil(lines[openDir...].firstIndex { $0.contains("fsync(\(dirFD))") && $0.hasSuffix("= 0") },
                        "the directory is not fsynced after the rename")
    }
}
