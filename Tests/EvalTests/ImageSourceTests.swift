import Foundation
import XCTest
import Data
import Formats

/// Image sources: class folders, labels files, class maps, the official folder and ZIP formats, and bad files.
final class ImageSourceTests: TempDirTestCase {
    /// A small PNG whose pixels encode `seed`, so a test can tell which file was decoded.
    func png(_ seed: UInt8, width: Int = 3, height: Int = 2) -> [UInt8] {
        try! Image(width: width, height: height, channels: 3, pixels: [UInt8](repeating: seed, count: width * height * 3)).pngBytes()
    }

    func resource(_ name: String) throws -> [UInt8] {
        try AtomicFile.read(path: ImageReferenceTests.resources + "/" + name)
    }

    func testClassFoldersInSortedOrder() throws {
        write("train/b_cls/x.png", png(1))
        write("train/a_cls/y.png", png(2))
        write("train/a_cls/sub/z.PNG", png(3))
        write("train/a_cls/notes.txt", Array("not an image".utf8))
        write("train/.cache/w.png", png(4))
        try FileManager.default.createDirectory(atPath: dir + "/train/c_empty", withIntermediateDirectories: true)
        let source = try ImageSource.open(dir + "/train")
        XCTAssertEqual(source.names, ["a_cls/sub/z.PNG", "a_cls/y.png", "b_cls/x.png"])
        XCTAssertEqual(source.labels, [0, 0, 1])
        XCTAssertEqual(source.classNames, ["a_cls", "b_cls"], "a folder without images is no class, as in the official tool")
        XCTAssertEqual(source.classCount, 2)
        XCTAssertEqual((0..<3).map { try? source.image($0).pixels[0] }, [3, 2, 1])
        XCTAssertEqual(try source.image(0).channels, 3)
        XCTAssertEqual(source.location(2), dir + "/train/b_cls/x.png")

        // A symbolic link back to the top is followed once, not forever.
        try FileManager.default.createSymbolicLink(atPath: dir + "/train/b_cls/loop", withDestinationPath: dir + "/train")
        XCTAssertEqual(try ImageSource.open(dir + "/train").count, 3)

        write("train/loose.png", png(5))
        assertDataError(["loose.png", "beside the class folders"]) { try ImageSource.open(dir + "/train") }
    }

    func testClassMaps() throws {
        write("train/n02/x.png", png(1))
        write("train/n01/y.png", png(2))
        let maps: [(String, String)] = [
            ("map.json", #"{"n01": 7, "n02": 3, "n99": 0}"#),
            ("keras.json", #"{"0": ["n99", "ninety-nine"], "3": ["n02", "two"], "7": ["n01", "one"]}"#),
            ("map.csv", "folder,index\nn01,7\nn02,3\nn99,0\n"),
            ("map.txt", "n99 0\r\nn02 3\r\n\r\nn01 7\r\n"),
        ]
        for (name, text) in maps {
            let map = write(name, Array(text.utf8))
            let source = try ImageSource.folder(dir + "/train", classMap: map)
            XCTAssertEqual(source.names, ["n01/y.png", "n02/x.png"], name)
            XCTAssertEqual(source.labels, [7, 3], name)
            XCTAssertEqual(source.classCount, 8, name)
            XCTAssertEqual(source.classNames?[0], "n99", name)
            XCTAssertEqual(source.classNames?[1], "1", "an index the map skips is named by its number")
        }
        // One class per line, numbered in line order (LOC_synset_mapping.txt).
        let synsets = write("synsets.txt", Array("n02 two, deux\nn01 one\n".utf8))
        XCTAssertEqual(try ImageSource.folder(dir + "/train", classMap: synsets).labels, [1, 0])

        let partial = write("partial.json", Array(#"{"n01": 0}"#.utf8))
        assertDataError(["partial.json", "\"n02\"", "not in the class map"]) { try ImageSource.folder(dir + "/train", classMap: partial) }
        let clash = write("clash.json", Array(#"{"n01": 0, "n02": 0}"#.utf8))
        assertDataError(["clash.json", "same index 0"]) { try ImageSource.folder(dir + "/train", classMap: clash) }
        let broken = write("broken.json", Array(#"{"n01": 0,"#.utf8))
        assertDataError(["broken.json", "invalid JSON"]) { try ImageSource.folder(dir + "/train", classMap: broken) }
        assertDataError(["missing.json", "cannot open"]) { try ImageSource.folder(dir + "/train", classMap: self.dir + "/missing.json") }
    }

    func testFolderWithLabelsFile() throws {
        write("val/ILSVRC_2.png", png(2))
        write("val/ILSVRC_1.jpg", try resource("gray.jpg"))
        write("val/img 3.png", png(3))
        let files: [(String, String, [Int], [String]?)] = [
            ("labels.csv", "file,label\nILSVRC_1.jpg,5\nILSVRC_2.png,0\nimg 3.png,5\n", [5, 0, 5], nil),
            ("labels.txt", "ILSVRC_1.jpg 5\nILSVRC_2.png\t0\nimg 3.png 5\n", [5, 0, 5], nil),
            ("labels.json", #"{"ILSVRC_1.jpg": 5, "ILSVRC_2.png": 0, "img 3.png": 5}"#, [5, 0, 5], nil),
            ("names.csv", "ILSVRC_1.jpg,n02\nILSVRC_2.png,n01\nimg 3.png,n02\n", [1, 0, 1], ["n01", "n02"]),
        ]
        for (name, text, labels, classNames) in files {
            let source = try ImageSource.folder(dir + "/val", labels: write(name, Array(text.utf8)))
            XCTAssertEqual(source.names, ["ILSVRC_1.jpg", "ILSVRC_2.png", "img 3.png"], name)
            XCTAssertEqual(source.labels, labels, name)
            XCTAssertEqual(source.classCount, (labels.max() ?? 0) + 1, name)
            XCTAssertEqual(source.classNames, classNames, name)
        }
        let missing = write("missing.csv", Array("ILSVRC_1.jpg,1\nILSVRC_2.png,0\n".utf8))
        assertDataError(["missing.csv", "1 of the 3 images have no label", "img 3.png"]) {
            try ImageSource.folder(self.dir + "/val", labels: missing)
        }
        let extra = write("extra.csv", Array("ILSVRC_1.jpg,1\nILSVRC_2.png,0\nimg 3.png,0\ngone.png,0\n".utf8))
        assertDataError(["extra.csv", "not images of", "gone.png"]) { try ImageSource.folder(self.dir + "/val", labels: extra) }
        let mixed = write("mixed.csv", Array("ILSVRC_1.jpg,1\nILSVRC_2.png,n01\nimg 3.png,0\n".utf8))
        assertDataError(["mixed.csv", "mix class indices and class names"]) { try ImageSource.folder(self.dir + "/val", labels: mixed) }
        let twice = write("twice.csv", Array("ILSVRC_1.jpg,1\nILSVRC_1.jpg,2\n".utf8))
        assertDataError(["twice.csv", "labelled twice"]) { try ImageSource.folder(self.dir + "/val", labels: twice) }
        let negative = write("negative.json", Array(#"{"ILSVRC_1.jpg": -1}"#.utf8))
        assertDataError(["negative.json", "-1"]) { try ImageSource.folder(self.dir + "/val", labels: negative) }
    }

    func testOfficialFolderAndUnlabeledFolders() throws {
        write("ds/00000/img00000000.png", png(1))
        write("ds/00000/img00000001.png", png(2))
        write("ds/00001/img00001000.png", png(3))
        write("ds/dataset.json", Array(#"{"labels": [["00000/img00000000.png", 4], ["00000/img00000001.png", 0], ["00001/img00001000.png", 4]]}"#.utf8))
        let official = try ImageSource.open(dir + "/ds")
        XCTAssertEqual(official.labels, [4, 0, 4], "dataset.json, not the folder names")
        XCTAssertEqual(official.classCount, 5)

        write("plain/a.png", png(1))
        write("plain/b.png", png(2))
        let plain = try ImageSource.open(dir + "/plain")
        XCTAssertNil(plain.labels)
        XCTAssertNil(plain.classCount)
        write("one/only/a.png", png(1))
        XCTAssertNil(try ImageSource.open(dir + "/one").labels, "one top-level folder is no class layout, as in the official tool")
        write("nulls/a.png", png(1))
        write("nulls/dataset.json", Array(#"{"labels": null}"#.utf8))
        XCTAssertNil(try ImageSource.open(dir + "/nulls").labels)

        write("none/readme.txt", Array("hello".utf8))
        assertDataError(["none", "no image files"]) { try ImageSource.open(self.dir + "/none") }
        assertDataError(["absent", "no such file or folder"]) { try ImageSource.open(self.dir + "/absent") }
    }

    func testOfficialZIP() throws {
        let writer = try ZIPWriter(path: dir + "/set.zip")
        try writer.add(name: "00000/img00000001.png", bytes: png(2))
        try writer.add(name: "00000/img00000000.jpg", bytes: resource("gray.jpg"))
        try writer.add(name: "dataset.json", bytes: Array(#"{"labels": [["00000/img00000000.jpg", 1], ["00000/img00000001.png", 0]]}"#.utf8))
        try writer.finish()
        let source = try ImageSource.open(dir + "/set.zip")
        XCTAssertEqual(source.names, ["00000/img00000000.jpg", "00000/img00000001.png"])
        XCTAssertEqual(source.labels, [1, 0])
        XCTAssertEqual(source.location(1), "\(dir)/set.zip: entry \"00000/img00000001.png\"")
        XCTAssertEqual(try source.image(1).pixels[0], 2)
        assertDataError(["set.zip", "applies to folders"]) { try ImageSource.open(self.dir + "/set.zip", labels: "x.csv") }

        let unlabeled = try ZIPWriter(path: dir + "/bare.zip")
        try unlabeled.add(name: "a.png", bytes: png(1))
        try unlabeled.finish()
        XCTAssertNil(try ImageSource.zip(dir + "/bare.zip").labels)

        let partial = try ZIPWriter(path: dir + "/partial.zip")
        try partial.add(name: "a.png", bytes: png(1))
        try partial.add(name: "b.png", bytes: png(2))
        try partial.add(name: "dataset.json", bytes: Array(#"{"labels": [["a.png", 0]]}"#.utf8))
        try partial.finish()
        assertDataError(["partial.zip: dataset.json", "have no label", "b.png"]) { try ImageSource.zip(self.dir + "/partial.zip") }
        // The same archive with its first entry marked deflated (method 8) in the central directory.
        var deflated = try AtomicFile.read(path: dir + "/partial.zip")
        let central = try XCTUnwrap((0..<(deflated.count - 4)).first { Array(deflated[$0..<($0 + 4)]) == [0x50, 0x4B, 0x01, 0x02] })
        deflated[central + 10] = 8
        write("deflated.zip", deflated)
        assertDataError(["deflated.zip", "\"a.png\" is compressed (method 8)"]) { try ImageSource.zip(self.dir + "/deflated.zip") }
        write("fake.zip", Array("not a zip".utf8))
        assertDataError(["fake.zip", "not a ZIP"]) { try ImageSource.zip(self.dir + "/fake.zip") }
    }

    func testSharedFixtureZIPHoldsTheCrops() throws {
        let fixture = try ImageReferenceTests.sharedFixture()
        let source = try ImageSource.zip(fixture + "/dataset.zip")
        XCTAssertEqual(source.count, 4)
        XCTAssertEqual(source.labels, [0, 1, 2, 0])
        XCTAssertEqual(source.classCount, 3)
        // The archive holds the ADM crops of img0.png ... img3.png, which this implementation reproduces exactly.
        for i in 0..<4 {
            let crop = try Image.read(path: fixture + "/img\(i).png").rgb().centerCropDhariwal(size: 64)
            XCTAssertEqual(try source.image(i), crop, source.names[i])
        }
    }

    /// Each bad file is an `ImageError` naming it; the rest of the source stays readable.
    func testBadImagesAreNamed() throws {
        let good = png(9, width: 40, height: 30)
        let jpeg = try resource("progressive422.jpg")
        write("bad/a_empty.png", [])
        write("bad/b_truncated.png", Array(good.prefix(good.count - 20)))
        write("bad/c_text.jpg", Array("<html>404 not found</html>".utf8))
        if JPEG.isAvailable { write("bad/d_truncated.jpg", Array(jpeg.prefix(jpeg.count / 2))) }
        write("bad/e_good.png", good)
        write("bad/f_corrupt.png", good.enumerated().map { $0.offset == 50 ? $0.element ^ 0xFF : $0.element })
        write("bad/g_gone.png", good)
        let source = try ImageSource.open(dir + "/bad")
        try FileManager.default.removeItem(atPath: dir + "/bad/g_gone.png")
        func failure(_ i: Int) -> ImageSource.ImageError? {
            do { _ = try source.image(i); return nil } catch { return error as? ImageSource.ImageError }
        }
        let expected: [(ImageSource.ImageError.Kind, String)?] = [(.undecodable, "empty file"), (.undecodable, "PNG:"), (.undecodable, "HTML")]
            + (JPEG.isAvailable ? [(.undecodable, "truncated")] : []) + [nil, (.undecodable, "CRC mismatch"), (.unreadable, "cannot open")]
        XCTAssertEqual(source.count, expected.count)
        for (i, want) in expected.enumerated() {
            let got = failure(i)
            guard let (kind, fragment) = want else { XCTAssertNil(got, source.names[i]); continue }
            guard let got else { XCTFail("\(source.names[i]) decoded"); continue }
            XCTAssertEqual(got.kind, kind, source.names[i])
            XCTAssertTrue(got.message.contains(dir + "/bad/" + source.names[i]), got.message)
            XCTAssertTrue(got.message.contains(fragment), got.message)
            XCTAssertFalse(got.message.contains("\n"))
        }
    }
}
