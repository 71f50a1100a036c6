import XCTest
import Foundation
import Formats

/// `tvm fid` as a user runs it: clear one-line errors, and (with the converted weights) a small run whose
/// reference statistics are cached.
final class FIDCommandTests: CLITestCase {
    /// `tvm fid ARGS --device cpu` (on the CPU, so no note about a missing GPU precedes the error line).
    func fid(_ args: String...) -> [String] { ["fid"] + args + ["--device", "cpu"] }

    func testBadInputGivesOneLineErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try NPYArray.write(path: dir + "/ok.npy", shape: [3, 1, 8, 8], floats: (0..<192).map { Float($0 % 7) / 7 })
        try assertCleanError(fid(dir + "/ok.npy", "--dataset", dir + "/ok.npy", "--weights", dir + "/none.safetensors"),
                             contains: "scripts/convert_inception.py")
        try assertCleanError(fid(dir + "/ok.npy"), contains: "--dataset")
        try assertCleanError(fid(dir + "/ok.npy", "--dataset", "fashion-mnist", "--split", "validation"), contains: "--split")
        // Past the weights check (any existing file will do until the network is loaded), the images are checked.
        let weights = dir + "/dummy.safetensors"
        XCTAssertTrue(FileManager.default.createFile(atPath: weights, contents: Data([0])))
        try NPYArray.write(path: dir + "/nhwc.npy", shape: [2, 8, 8, 3], floats: [Float](repeating: 0, count: 384))
        try assertCleanError(fid(dir + "/nhwc.npy", "--dataset", dir + "/ok.npy", "--weights", weights), contains: "channels-last")
        try NPYArray.write(path: dir + "/bytes-as-floats.npy", shape: [2, 8, 8], floats: [Float](repeating: 200, count: 128))
        try assertCleanError(fid(dir + "/bytes-as-floats.npy", "--dataset", dir + "/ok.npy", "--weights", weights),
                             contains: "far outside [-1, 1]")
        try assertCleanError(fid(dir + "/ok.npy", "--dataset", dir + "/missing", "--weights", weights), contains: "missing")
        try assertCleanError(fid(dir + "/ok.npy", "--dataset", dir + "/ok.npy", "--weights", weights), contains: "Inception weights")
    }

    func testSmallRunCachesTheReferenceStatistics() throws {
        let weights = try inceptionWeightsOrSkip()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try NPYArray.write(path: dir + "/a.npy", shape: [3, 1, 12, 12], floats: (0..<432).map { Float(($0 * 37) % 255) / 127.5 - 1 })
        try NPYArray.write(path: dir + "/b.npy", shape: [3, 1, 12, 12], floats: (0..<432).map { Float(($0 * 11) % 255) / 127.5 - 1 })
        let args = ["fid", dir + "/a.npy", "--dataset", dir + "/b.npy", "--weights", weights, "--device", "cpu", "--cache", dir + "/cache"]
        let first = try run(args + ["--save-features", dir + "/features.npy"])
        XCTAssertEqual(first.status, 0, first.err)
        XCTAssertTrue(first.err.contains("cached the statistics"), first.err)
        XCTAssertEqual(try NPYArray.read(path: dir + "/features.npy").shape, [3, 2048])
        let second = try run(args)
        XCTAssertEqual(second.status, 0, second.err)
        XCTAssertTrue(second.err.contains("from the cache"), second.err)
        XCTAssertEqual(first.out, second.out)
        let fid = try XCTUnwrap(Double(first.out.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("FID ".count)))
        XCTAssertGreaterThan(fid, 1)
        // A set against itself: 0.
        let same = try run(["fid", dir + "/a.npy", "--dataset", dir + "/a.npy", "--weights", weights, "--device", "cpu", "--no-cache"])
        XCTAssertEqual(same.status, 0, same.err)
        let zero = try XCTUnwrap(Double(same.out.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("FID ".count)))
        XCTAssertEqual(zero, 0, accuracy: 1e-3)
    }
}
