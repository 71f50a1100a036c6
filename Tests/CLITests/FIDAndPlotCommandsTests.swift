import XCTest
import Foundation
import Formats

/// `--fid-every` on `tvm train` (its errors without weights; with the converted weights, a tiny run measured by
/// the real network) and `tvm plot`.
final class FIDAndPlotCommandsTests: CLITestCase {
    func testFIDOptionsFailAtTheStartWithoutWeights() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try makeData(dir) + ["--steps", "2", "--out", dir + "/run"]
        try assertCleanError(["train"] + base + ["--fid-every", "1", "--fid-weights", dir + "/none.safetensors"],
                             contains: "--fid-every: Inception weights not found at \(dir)/none.safetensors")
        try assertCleanError(["train"] + base + ["--keep-best"], contains: "--keep-best keeps the checkpoint with the best FID: it needs --fid-every N")
        try assertCleanError(["train"] + base + ["--fid-nfe", "1"], contains: "--fid-nfe goes with --fid-every N")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run"), "the run never started")
    }

    func testFIDWhileTrainingWithTheInceptionNetwork() throws {
        let weights = try inceptionWeightsOrSkip()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The statistics cache goes to $XDG_CACHE_HOME, here the test's folder.
        let args = ["XDG_CACHE_HOME=" + dir, binary, "train"] + (try makeData(dir))
            + ["--steps", "2", "--fid-every", "2", "--fid-samples", "4", "--fid-nfe", "1,2", "--keep-best", "--fid-weights", weights,
               "--out", dir + "/run"]
        let r = try run(args, executable: "/usr/bin/env")
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("cached the statistics"), r.err)
        let lines = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try JSONValue.parse(String($0))
        }
        let fids = lines.filter { $0["fid_nfe1"] != nil }
        XCTAssertEqual(fids.map { $0["step"]?.int }, [2])
        for line in fids {
            for key in ["fid_nfe1", "fid_nfe2"] { XCTAssertGreaterThan(try XCTUnwrap(line[key]?.double), 0, key) }
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/run/checkpoint_best.safetensors"))
        let cache = dir + "/terminalvelocity/fid"
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache).count, 1)
    }

    /// A run's log: `steps` step lines with a loss falling by decades, an invocation boundary (a resume) at
    /// `resumeAt`, and FID lines.
    func writeLog(_ path: String, steps: Int, resumeAt: Int, fidEvery: Int, scale: Double) throws {
        var text = ""
        for step in 1...steps {
            let elapsed = Double(step <= resumeAt ? step : step - resumeAt) * 0.5
            let loss = scale * 10 / Double(step) * (1 + 0.3 * sin(Double(step)))
            text += #"{"step":\#(step),"loss":\#(loss),"terminal":\#(loss / 2),"fm":\#(loss / 3),"grad_norm":\#(1 + Double(step % 7)),"#
                + #""lr":0.0002,"it/s":2,"elapsed":\#(elapsed)}"# + "\n"
            if step % fidEvery == 0 { text += #"{"step":\#(step),"fid_nfe1":\#(300 / Double(step) * scale),"fid_seconds":3}"# + "\n" }
        }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func testPlotOverlaysRunsAndRefusesBadLogs() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, scale) in [("tvm", 1.0), ("fm", 1.5)] {
            try FileManager.default.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: true)
            try writeLog(dir + "/\(name)/metrics.jsonl", steps: 400, resumeAt: 150, fidEvery: 100, scale: scale)
        }
        var r = try run(["plot", dir + "/tvm", dir + "/fm", "--out", dir + "/both.png"])
        XCTAssertEqual(r.status, 0, r.err)
        let both = try Image.readPNG(path: dir + "/both.png")
        // Five rows (loss, two terms, gradient norm, FID) of two panels; the constant learning rate is left out.
        r = try run(["plot", dir + "/tvm", "--out", dir + "/one.png"])
        XCTAssertEqual(r.status, 0, r.err)
        let one = try Image.readPNG(path: dir + "/one.png")
        XCTAssertEqual(both.width, one.width)
        func count(_ image: Image, _ color: RGB) -> Int {
            stride(from: 0, to: image.pixels.count, by: 3).filter {
                image.pixels[$0] == color.r && image.pixels[$0 + 1] == color.g && image.pixels[$0 + 2] == color.b
            }.count
        }
        XCTAssertGreaterThan(count(both, RGB.palette[0]), 1000, "the first run's curves")
        XCTAssertGreaterThan(count(both, RGB.palette[1]), 1000, "the second run's curves")
        XCTAssertEqual(count(one, RGB.palette[1]), 0, "one run, one colour")

        try "{\"step\":1,\"loss\":1}\nnot json\n".write(toFile: dir + "/tvm/metrics.jsonl", atomically: true, encoding: .utf8)
        try assertCleanError(["plot", dir + "/tvm"], contains: "\(dir)/tvm/metrics.jsonl: line 2: not JSON")
        try "{\"loss\":1}\n".write(toFile: dir + "/tvm/metrics.jsonl", atomically: true, encoding: .utf8)
        try assertCleanError(["plot", dir + "/tvm"], contains: "line 1: no \"step\" number")
        try assertCleanError(["plot", dir], contains: "no metrics.jsonl or losses.jsonl")
        try assertCleanError(["plot", dir + "/missing"], contains: "no such run folder")
        try assertCleanError(["plot"], contains: "one or more run folders")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/plot.png"))
    }
}
