import XCTest
import Foundation
import Formats

/// The `tvm` binary as a user runs it: bad input gets one `error:` line and a non-zero exit, never a
/// crash trace; a small run writes every file it promises.
final class CLITests: CLITestCase {
    func write(_ text: String, _ path: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }

    func testBadArgumentsGetOneClearLine() throws {
        try assertCleanError(["frobnicate"], contains: "unknown command 'frobnicate'")
        try assertCleanError(["train", "--bogus", "1"], contains: "unknown flag --bogus")
        try assertCleanError(["train", "--data", "swirl"], contains: "unknown distribution 'swirl'")
        try assertCleanError(["train", "--method", "gan"], contains: "unknown method 'gan'")
        try assertCleanError(["train", "--steps", "ten"], contains: "--steps must be a whole number")
        try assertCleanError(["train", "--lr", "nan"], contains: "--lr must be a finite number")
        try assertCleanError(["train", "--width", "0"], contains: "--width must be in")
        try assertCleanError(["train", "--steps"], contains: "--steps needs a value")
        try assertCleanError(["demo", "extra"], contains: "takes no positional arguments")
        try assertCleanError(["w2", "only-one.csv"], contains: "two point files")
    }

    func testPointFileErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("0,0\n1,1\n2,2\n", dir + "/a.csv")
        try write("0,0\n1\n2,2\n", dir + "/ragged.csv")
        try write("0,0\nnan,1\n2,2\n", dir + "/nan.csv")
        try write("0,0\n1,1\n", dir + "/short.csv")
        try write("not a number at all\n\u{1}\u{2}garbage,x\n", dir + "/garbage.csv")
        try assertCleanError(["w2", dir + "/a.csv", dir + "/ragged.csv"], contains: "line 2")
        try assertCleanError(["w2", dir + "/a.csv", dir + "/nan.csv"], contains: "line 2")
        try assertCleanError(["w2", dir + "/a.csv", dir + "/short.csv"], contains: "different sizes")
        try assertCleanError(["w2", dir + "/a.csv", dir + "/missing.csv"], contains: "missing.csv")
        try assertCleanError(["w2", dir + "/a.csv", dir + "/garbage.csv"], contains: "garbage.csv")
    }

    func testW2OfShiftedPointsIsTheShift() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("x,y\n0,0\n1,2\n-1,5\n", dir + "/a.csv")
        try NPYArray.write(path: dir + "/b.npy", shape: [3, 2], floats: [2, 9, 3, 4, 4, 6])  // a + (3, 4), reordered
        let r = try run(["w2", dir + "/a.csv", dir + "/b.npy"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(Double(r.out.trimmingCharacters(in: .whitespacesAndNewlines))!, 5, accuracy: 1e-6)
    }

    func testSmallTrainingRunWritesItsFiles() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["train", "--data", "moons", "--steps", "20", "--batch", "64", "--width", "32", "--depth", "2",
                         "--eval-samples", "100", "--nfe", "1,2", "--out", dir])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("W2@1"), r.out)
        let log = try String(contentsOfFile: dir + "/losses.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(log.count, 20)
        let first = try JSONValue.parse(Array(log[0].utf8))
        XCTAssertEqual(first["step"]?.int, 1)
        XCTAssertNotNil(first["terminal"]?.double)
        let results = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/results.json"))))
        XCTAssertEqual(results["distribution"]?.string, "moons")
        XCTAssertNotNil(results["methods"]?.array?.first?["w2_by_nfe"]?["2"]?.double)
        XCTAssertEqual(try NPYArray.read(path: dir + "/samples_tvm_nfe1.npy").shape, [100, 2])
        XCTAssertEqual(try NPYArray.read(path: dir + "/data.npy").shape, [100, 2])
        let png = try Image.readPNG(path: dir + "/scatter.png")
        XCTAssertGreaterThan(png.width, 100)

        // --time-sampler: other times, another run from the same seed (the first loss already differs: the MLP's
        // output is not zero at initialisation), recorded among the options.
        let other = dir + "/other"
        let r2 = try run(["train", "--data", "moons", "--steps", "2", "--batch", "64", "--width", "32", "--depth", "2",
                          "--eval-samples", "100", "--nfe", "1", "--time-sampler", "0.5,0.5,0,0.5", "--out", other])
        XCTAssertEqual(r2.status, 0, r2.err)
        XCTAssertNotEqual(try figures("loss", other + "/losses.jsonl")[0], try figures("loss", dir + "/losses.jsonl")[0])
        let options = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: other + "/config.json"))))
        XCTAssertEqual(options["time-sampler"]?.string, "0.5,0.5,0,0.5")

        // --time-budget alone: no step limit, training stops after that many seconds and says how many steps it made.
        let timed = dir + "/timed"
        let r3 = try run(["train", "--data", "moons", "--batch", "64", "--width", "32", "--depth", "2", "--eval-samples", "100",
                          "--nfe", "1", "--time-budget", "0.5", "--out", timed])
        XCTAssertEqual(r3.status, 0, r3.err)
        XCTAssertTrue(r3.err.contains("steps in the time budget of"), r3.err)
        let steps = try figures("loss", timed + "/losses.jsonl").count
        XCTAssertGreaterThan(steps, 1)
        let timedResults = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: timed + "/results.json"))))
        XCTAssertEqual(timedResults["methods"]?.array?.first?["steps"]?.int, steps)
        XCTAssertGreaterThanOrEqual(timedResults["methods"]?.array?.first?["train_seconds"]?.double ?? 0, 0.5)
    }

    /// `tvm demo --methods` trains the methods named (here one: the exact W2 of 2000 points dominates the time) and
    /// reports each at 1, 2 and 4 NFE.
    func testDemoTrainsTheChosenMethods() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["demo", "--methods", "imf", "--steps", "2", "--out", dir])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("iMF") && !r.out.contains("MeanFlow") && !r.out.contains("TVM "), r.out)
        let results = try JSONValue.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/results.json"))))
        let methods = try XCTUnwrap(results["methods"]?.array)
        XCTAssertEqual(methods.map { $0["method"]?.string }, ["imf"])
        for nfe in ["1", "2", "4"] { XCTAssertNotNil(methods.first?["w2_by_nfe"]?[nfe]?.double) }
        XCTAssertEqual(try NPYArray.read(path: dir + "/samples_imf_nfe4.npy").shape, [2000, 2])
    }
}
