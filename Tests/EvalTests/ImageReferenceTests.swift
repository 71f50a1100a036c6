import Foundation
import XCTest
import Data
import Formats

/// `ImageReferenceCheck` on PIL's outputs: the shared fixture (`shared/fixtures/images`: photographs-like images
/// as 4:2:0 JPEG and PNG, crops at 64) when present, and `Tests/Resources/pil-images` (gray, CMYK, YCCK and
/// progressive JPEGs, palette, 2-bit, 16-bit, gray+alpha and interlaced PNGs, crops at 4 to 32), always.
final class ImageReferenceTests: TempDirTestCase {
    static let resources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Resources/pil-images").path

    /// `shared/fixtures/images` beside the repository (`<package>/../shared`) or beside the worktrees folder
    /// (`<package>/../../shared`), or $TVM_IMAGE_FIXTURE.
    static func sharedFixture() throws -> String {
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = ProcessInfo.processInfo.environment["TVM_IMAGE_FIXTURE"].map { [$0] }
            ?? [1, 2].map { up in (0..<up).reduce(package) { u, _ in u.deletingLastPathComponent() }.appendingPathComponent("shared/fixtures/images").path }
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0 + "/" + ImageReferenceCheck.referenceFileName) }) else {
            throw XCTSkip("image fixture not found (looked in \(candidates.joined(separator: ", ")))")
        }
        return found
    }

    func requireJPEG() throws {
        guard JPEG.isAvailable else { throw XCTSkip(JPEG.missingLibraryMessage) }
    }

    func report(_ results: [ImageReferenceCheck.Comparison]) {
        for r in results {
            print("  \(r.tensor.padding(toLength: 28, withPad: " ", startingAt: 0)) exact \(r.exact), off by 1 \(r.offByOne), "
                  + "worse \(r.worse), max \(r.maxDifference)")
        }
    }

    func testSharedFixtureWithinOneGrayLevel() throws {
        try requireJPEG()
        let folder = try Self.sharedFixture()
        XCTAssertTrue(ImageReferenceCheck.isReferenceFolder(folder))
        let results = try ImageReferenceCheck.run(folder: folder)
        report(results)
        let reference = try SafetensorsFile.read(path: folder + "/" + ImageReferenceCheck.referenceFileName)
        XCTAssertEqual(results.map(\.tensor), reference.tensors.map(\.name), "every tensor is checked, in file order")
        for r in results {
            XCTAssertTrue(r.withinTolerance, "\(r.tensor): max difference \(r.maxDifference)")
            XCTAssertGreaterThan(r.exact, r.samples * 99 / 100, "\(r.tensor): most samples equal")
        }
    }

    func testResourceImagesMatchPIL() throws {
        try requireJPEG()
        let results = try ImageReferenceCheck.run(folder: Self.resources)
        report(results)
        XCTAssertEqual(results.count, 23)
        for r in results {
            XCTAssertTrue(r.withinTolerance, "\(r.tensor): max difference \(r.maxDifference)")
            // PNG decoding and the resampling are this project's own integer code: equal to PIL's byte for byte.
            if r.file.hasSuffix(".png") { XCTAssertEqual(r.maxDifference, 0, r.tensor) }
        }
        XCTAssertEqual(Set(results.map(\.operation)), [.decode, .centerCrop(size: 4), .centerCrop(size: 7), .centerCrop(size: 8),
                                                        .centerCrop(size: 11), .centerCrop(size: 32)])
    }

    /// A copy of the resource folder's PNGs with a reference holding `tensors`.
    func folder(with tensors: [NamedArray], metadata: [(String, String)] = []) throws -> String {
        for name in ["noise.png", "gray2.png"] {
            write(name, try AtomicFile.read(path: Self.resources + "/" + name))
        }
        try SafetensorsFile(metadata: metadata, tensors: tensors).write(path: dir + "/" + ImageReferenceCheck.referenceFileName)
        return dir
    }

    func testCountsDifferencesAndFailsBeyondOneLevel() throws {
        let reference = try SafetensorsFile.read(path: Self.resources + "/" + ImageReferenceCheck.referenceFileName)
        var crop = try XCTUnwrap(reference["noise.png.crop7"])
        crop.bytes[5] = crop.bytes[5] == 255 ? 254 : crop.bytes[5] + 1
        crop.bytes[9] = crop.bytes[9] >= 2 ? crop.bytes[9] - 2 : crop.bytes[9] + 2
        // The same crop under the size-less name takes its size from the metadata; floats are accepted too.
        let pixels = try XCTUnwrap(reference["gray2.png.pixels"])
        let floatPixels = NamedArray(name: "gray2.png.pixels", shape: pixels.shape, floats: pixels.floats())
        var sizeFromMetadata = try XCTUnwrap(reference["noise.png.crop7"])
        sizeFromMetadata.name = "noise.png.crop"
        let dir = try folder(with: [crop, floatPixels, sizeFromMetadata], metadata: [("size", "7")])
        XCTAssertTrue(ImageReferenceCheck.isReferenceFolder(dir))

        let results = try ImageReferenceCheck.run(folder: dir)
        XCTAssertEqual(results.map(\.tensor), ["noise.png.crop7", "gray2.png.pixels", "noise.png.crop"])
        XCTAssertEqual([results[0].exact, results[0].offByOne, results[0].worse], [7 * 7 * 3 - 2, 1, 1])
        XCTAssertEqual(results[0].maxDifference, 2)
        XCTAssertFalse(results[0].withinTolerance)
        XCTAssertEqual(results[1].maxDifference, 0)
        XCTAssertEqual(results[1].samples, 13 * 11 * 3)
        XCTAssertEqual(results[2].operation, .centerCrop(size: 7))
        XCTAssertTrue(results[2].withinTolerance)
    }

    func testRefusesWhatItCannotCheck() throws {
        let reference = try SafetensorsFile.read(path: Self.resources + "/" + ImageReferenceCheck.referenceFileName)
        let crop = try XCTUnwrap(reference["noise.png.crop7"])
        func renamed(_ name: String) -> NamedArray { NamedArray(name: name, shape: crop.shape, dtype: crop.dtype, bytes: crop.bytes) }
        let cases: [(NamedArray, [String])] = [
            (renamed("noise.png.crop"), ["noise.png.crop", "no crop size", "\"size\""]),
            (renamed("noise.png.blur3"), ["unknown operation", "blur3"]),
            (renamed("noise.png.crop0"), ["crop size", "whole number"]),
            (renamed("pixels"), ["not named NAME.pixels"]),
            (renamed("../noise.png.pixels"), ["outside the folder"]),
            (renamed("absent.png.crop7"), ["absent.png", "cannot open"]),
            (renamed("noise.png.crop8"), ["noise.png.crop8", "[7, 7, 3]", "[8, 8, 3]"]),
            (renamed("noise.png.pixels"), ["[7, 7, 3]", "[23, 37, 3]"]),
        ]
        for (tensor, fragments) in cases {
            let dir = try folder(with: [tensor])
            assertDataError(fragments) { try ImageReferenceCheck.run(folder: dir) }
        }
        // Tensor names of the right form that name no file of the folder: some other kind of reference.
        _ = try folder(with: [renamed("posterior.pixels")])
        XCTAssertFalse(ImageReferenceCheck.isReferenceFolder(dir))
        write("reference.safetensors", Array("not safetensors".utf8))
        assertDataError(["reference.safetensors"]) { try ImageReferenceCheck.run(folder: dir) }
        XCTAssertFalse(ImageReferenceCheck.isReferenceFolder(dir))
        XCTAssertFalse(ImageReferenceCheck.isReferenceFolder(dir + "/missing"))
    }
}
