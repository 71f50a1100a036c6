import XCTest
import Foundation

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

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func temporaryDirectory() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tvm-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
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
