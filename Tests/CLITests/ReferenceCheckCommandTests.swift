import XCTest
import Foundation
import Formats

/// `tvm reference-check PATH` on each kind of reference it tells apart (an official network pickle, a VAE folder,
/// an image-preparation folder), each as given and made wrong: a malformed one is one `error:` line naming the
/// file, a result beyond tolerance a FAIL row and status 1.
final class ReferenceCheckCommandTests: CLITestCase {
    /// `/work/shared/fixtures/<name>`, or `<package>/../shared/fixtures/<name>` (the main checkout's neighbour).
    static func sharedFixture(_ name: String) throws -> String {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let candidates = [package.deletingLastPathComponent().appendingPathComponent("shared/fixtures/\(name)").path,
                          "/work/shared/fixtures/\(name)"]
        guard let path = candidates.first(where: FileManager.default.fileExists) else {
            throw XCTSkip("fixture \(name) not found at \(candidates[0])")
        }
        return path
    }

    func copy(_ from: String, to: String) throws {
        try AtomicFile.write(path: to, bytes: AtomicFile.read(path: from))
    }

    func testOfficialPickleIsSampledAndComparedWithItsSamplesFile() throws {
        let pickle = try Self.sharedFixture("official/official_snapshot_small.pkl")
        let r = try run(["reference-check", "--device", "cpu", pickle])
        XCTAssertEqual(r.status, 0, r.err)
        for name in ["sample_1step", "sample_2step", "sample_4step"] {
            let row = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix(name) }, r.out)
            XCTAssertTrue(row.hasSuffix("ok"), String(row))
        }

        // The same network with its samples moved: a wrong reference is a FAIL, a missing one an error line.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try copy(pickle, to: dir + "/net.pkl")
        try assertCleanError(["reference-check", "--device", "cpu", dir + "/net.pkl"], contains: "net_samples.safetensors")
        var samples = try SafetensorsFile.read(path: String(pickle.dropLast(".pkl".count)) + "_samples.safetensors")
        let i = try XCTUnwrap(samples.tensors.firstIndex { $0.name == "sample_2step" })
        let t = samples.tensors[i]
        samples.tensors[i] = NamedArray(name: t.name, shape: t.shape, floats: t.floats().map { $0 * 1.01 })
        try samples.write(path: dir + "/net_samples.safetensors")
        let failing = try run(["reference-check", "--device", "cpu", dir + "/net.pkl"])
        XCTAssertEqual(failing.status, 1, failing.err)
        XCTAssertTrue(failing.out.contains("FAIL"), failing.out)
        XCTAssertTrue(failing.err.hasSuffix("error: 1 of 3 tensors exceed the tolerance: sample_2step\n"), failing.err)
        // A guidance scale that is no number.
        samples.metadata = samples.metadata.map { $0.0 == "cfg_scale" ? ($0.0, "strong") : $0 }
        try samples.write(path: dir + "/net_samples.safetensors")
        try assertCleanError(["reference-check", "--device", "cpu", dir + "/net.pkl"], contains: "cfg_scale")
    }

    func testVAEFolderIsComparedWithDiffusers() throws {
        let fixture = try Self.sharedFixture("latent/vae_small")
        let r = try run(["reference-check", "--device", "cpu", fixture])
        XCTAssertEqual(r.status, 0, r.err)
        for name in ["posterior_mean", "posterior_std", "posterior_logvar", "decoded", "roundtrip"] {
            let row = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix(name + " ") }, r.out)
            XCTAssertTrue(row.hasSuffix("ok"), String(row))
        }

        // The weights missing; then a config whose channels do not fit the weights.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try copy(fixture + "/config.json", to: dir + "/config.json")
        try copy(fixture + "/reference.safetensors", to: dir + "/reference.safetensors")
        try assertCleanError(["reference-check", "--device", "cpu", dir], contains: "diffusion_pytorch_model.safetensors")
        try copy(fixture + "/diffusion_pytorch_model.safetensors", to: dir + "/diffusion_pytorch_model.safetensors")
        let config = try String(contentsOfFile: fixture + "/config.json", encoding: .utf8)
        let changed = config.replacingOccurrences(of: "\"latent_channels\": 4", with: "\"latent_channels\": 8")
        XCTAssertNotEqual(changed, config, "the fixture's config.json should state latent_channels")
        try AtomicFile.write(path: dir + "/config.json", bytes: Array(changed.utf8))
        try assertCleanError(["reference-check", "--device", "cpu", dir], contains: dir)
    }

    /// A folder of the PNGs of `Tests/Resources/pil-images` and their reference tensors (the PNG decoder is built
    /// in; JPEG needs libturbojpeg, which a test machine may lack).
    func pngReferenceFolder() throws -> (folder: String, reference: SafetensorsFile) {
        let resources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Resources/pil-images").path
        let full = try SafetensorsFile.read(path: resources + "/reference.safetensors")
        let dir = try temporaryDirectory()
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = full.tensors.filter { $0.name.contains(".png.") }
        XCTAssertGreaterThan(tensors.count, 4)
        for file in Set(tensors.map { String($0.name[..<$0.name.lastIndex(of: ".")!]) }) {
            try copy(resources + "/" + file, to: dir + "/" + file)
        }
        let reference = SafetensorsFile(metadata: full.metadata, tensors: tensors)
        try reference.write(path: dir + "/reference.safetensors")
        return (dir, reference)
    }

    func testImagePreparationFolderIsComparedPixelByPixel() throws {
        let (dir, reference) = try pngReferenceFolder()
        let r = try run(["reference-check", dir])
        XCTAssertEqual(r.status, 0, r.err)
        let rows = r.out.split(separator: "\n").filter { $0.contains(".png.") }
        XCTAssertEqual(rows.count, reference.tensors.count, r.out)
        XCTAssertTrue(rows.allSatisfy { $0.hasSuffix("ok") }, r.out)
        try assertCleanError(["reference-check", dir, "--tolerance", "1e-3"], contains: "--tolerance")

        // One pixel two gray levels off fails; a tensor naming a missing image is an error line.
        var tensors = reference.tensors
        var bytes = tensors[0].bytes
        XCTAssertEqual(tensors[0].dtype, .u8)
        bytes[0] = bytes[0] < 128 ? bytes[0] + 2 : bytes[0] - 2
        tensors[0] = NamedArray(name: tensors[0].name, shape: tensors[0].shape, dtype: .u8, bytes: bytes)
        try SafetensorsFile(metadata: reference.metadata, tensors: tensors).write(path: dir + "/reference.safetensors")
        let failing = try run(["reference-check", dir])
        XCTAssertEqual(failing.status, 1, failing.err)
        XCTAssertTrue(failing.out.split(separator: "\n").contains { $0.hasPrefix(tensors[0].name + " ") && $0.hasSuffix("FAIL") }, failing.out)
        XCTAssertTrue(failing.err.contains("error: 1 of \(tensors.count) tensors exceed the tolerance: \(tensors[0].name)"), failing.err)
        let image = String(tensors[0].name[..<tensors[0].name.lastIndex(of: ".")!])
        try FileManager.default.removeItem(atPath: dir + "/" + image)
        try assertCleanError(["reference-check", dir], contains: image)
    }

    func testAFolderOfNeitherKindIsNamed() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try assertCleanError(["reference-check", dir], contains: "neither a VAE nor an image-preparation reference")
        try assertCleanError(["reference-check", dir + "/none.pkl"], contains: "none.pkl: no such file")
    }
}
