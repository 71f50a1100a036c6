import XCTest
import Foundation
import Formats
import Eval

/// Runs the `tvm` binary that SwiftPM built next to the test bundle, as a user would.
class CLITestCase: XCTestCase {
    var binary: String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("tvm").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "tvm"
    }

    /// Runs `tvm` (or `executable`, e.g. a shell that sets a limit first) to the end. A process killed by a
    /// signal (a crash) gets status 128 + the signal number, as a shell reports it.
    func run(_ args: [String], executable: String? = nil, in directory: String? = nil) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable ?? binary)
        p.arguments = args
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        return (status, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// The converted Inception weights where `tvm fid` looks by default (`FIDFiles.defaultWeightsPath`), or a skip.
    func inceptionWeightsOrSkip() throws -> String {
        let weights = FIDFiles.defaultWeightsPath
        guard FileManager.default.fileExists(atPath: weights) else {
            throw XCTSkip("no converted Inception weights (set TVM_INCEPTION_WEIGHTS; README, FID)")
        }
        return weights
    }

    func temporaryDirectory() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tvm-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// 12 images 1x8x8 in [-1, 1] and labels 0, 1, 2 (3 classes) in `dir`; returns the `tvm train` options
    /// of a tiny CPU run on them (a DiT of about 50k parameters: a step takes milliseconds).
    func makeData(_ dir: String) throws -> [String] {
        let n = 12
        let images = (0..<(n * 64)).map { Float(($0 * 37) % 255) / 127.5 - 1 }
        try NPYArray.write(path: dir + "/x.npy", shape: [n, 8, 8], floats: images)
        try NPYArray.write(path: dir + "/y.npy", shape: [n], floats: (0..<n).map { Float($0 % 3) })
        return ["--device", "cpu", "--data", dir + "/x.npy", "--labels", dir + "/y.npy", "--hidden", "32", "--depth", "1",
                "--heads", "2", "--patch", "2", "--batch", "5", "--flip", "--cfg-range", "1,3"]
    }

    func losses(_ path: String) throws -> [Double] { try figures("loss", path) }

    /// One figure (`key`) of every line of a metrics.jsonl.
    func figures(_ key: String, _ path: String) throws -> [Double] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONValue.parse(String($0))[key]?.double)
        }
    }

    /// One line, starting with "error:", non-zero exit, nothing that looks like a crash.
    func assertCleanError(_ args: [String], contains: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args)
        XCTAssertNotEqual(r.status, 0, "exit status for \(args)", file: file, line: line)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, "stderr for \(args): \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.hasPrefix("error: "), r.err, file: file, line: line)
        XCTAssertTrue(r.err.contains(contains), "\(r.err) should mention \(contains)", file: file, line: line)
    }
}
