import XCTest
import Foundation

/// `tvm COMMAND -h|--help` prints that command's options (what `tvm help COMMAND` prints) and exits 0, before
/// anything else the arguments ask for; `tvm --version` prints the version.
final class HelpAndVersionTests: CLITestCase {
    /// Every command of `tvm help`'s table (FirstHourTests counts its rows against this list too).
    static let names = ["demo", "prepare", "train", "sample", "w2", "fid", "plot", "models", "bench", "import", "reference-check",
                        "dist-check"]

    func testEveryCommandPrintsItsHelpForDashHAndDashDashHelp() throws {
        let usage = try run(["help"])
        XCTAssertEqual(usage.status, 0)
        for name in Self.names {
            let listed = try run(["help", name])
            XCTAssertEqual(listed.status, 0, listed.err)
            XCTAssertTrue(listed.out.hasPrefix("tvm \(name)"), listed.out)
            XCTAssertTrue(usage.out.contains("  \(name) "), "tvm help lists \(name)")
            for flag in ["--help", "-h"] {
                let r = try run([name, flag])
                XCTAssertEqual(r.status, 0, "tvm \(name) \(flag): \(r.err)")
                XCTAssertEqual(r.out, listed.out, "tvm \(name) \(flag)")
                XCTAssertEqual(r.err, "", "tvm \(name) \(flag)")
            }
        }
    }

    func testHelpWinsOverTheOtherArguments() throws {
        let listed = try run(["help", "train"]).out
        // Bad values, unknown flags and launcher options are not looked at: nothing runs and no rank starts.
        for args in [["train", "--steps", "ten", "--bogus", "-h"], ["train", "--procs", "2", "--data", "moons", "--help"],
                     ["train", "--device", "gpu", "--help"]] {
            let r = try run(args)
            XCTAssertEqual(r.status, 0, "\(args): \(r.err)")
            XCTAssertEqual(r.out, listed, "\(args)")
            XCTAssertEqual(r.err, "", "\(args)")
        }
    }

    func testVersion() throws {
        let r = try run(["--version"])
        XCTAssertEqual(r.status, 0)
        XCTAssertTrue(r.out.hasPrefix("tvm "), r.out)
        XCTAssertEqual(r.out.split(separator: "\n").count, 1, r.out)
        XCTAssertEqual(r.err, "")
    }
}
