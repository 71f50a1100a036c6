import XCTest
import Formats
#if canImport(Glibc)
import Glibc
#endif

/// The path and folder helpers every loader and command shares, and the per-line log writer.
final class FileSystemTests: XCTestCase {
    func testQuestionsAboutPaths() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try AtomicFile.write(path: dir.file("a.txt"), bytes: [1])
        XCTAssertTrue(FileSystem.exists(dir.file("a.txt")))
        XCTAssertTrue(FileSystem.isRegularFile(dir.file("a.txt")))
        XCTAssertFalse(FileSystem.isDirectory(dir.file("a.txt")))
        XCTAssertTrue(FileSystem.isDirectory(dir.path))
        XCTAssertFalse(FileSystem.isRegularFile(dir.path))
        XCTAssertFalse(FileSystem.exists(dir.file("missing")))
        XCTAssertFalse(FileSystem.isDirectory(dir.file("missing")))
        try AtomicFile.write(path: dir.file("b.txt"), bytes: [UInt8](repeating: 7, count: 1234))
        XCTAssertEqual(FileSystem.size(dir.file("b.txt")), 1234)
        XCTAssertNil(FileSystem.size(dir.file("missing")))
    }

    func testListSortsByBytesAndHidesDotNames() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        for name in ["b", "a", "B", ".hidden", "é"] { try AtomicFile.write(path: dir.file(name), bytes: []) }
        XCTAssertEqual(try FileSystem.list(dir.path), ["B", "a", "b", "é"])
        assertFormatError(try FileSystem.list(dir.file("missing")), contains: [dir.file("missing"), "cannot open directory"])
    }

    func testMakeDirectoriesCreatesTheMissingFoldersAndRefusesAFileInTheWay() throws {
        let dir = try TempDir()
        defer {
            for sub in ["x/y/z", "x/y", "x"] { rmdir(dir.file(sub)) }
            dir.remove()
        }
        try FileSystem.makeDirectories(dir.file("x/y/z"))
        XCTAssertTrue(FileSystem.isDirectory(dir.file("x/y/z")))
        try FileSystem.makeDirectories(dir.file("x/y"))  // already there
        try AtomicFile.write(path: dir.file("f"), bytes: [])
        assertFormatError(try FileSystem.makeDirectories(dir.file("f")), contains: ["cannot create directory \(dir.file("f"))", "exists"])
        // Below a file, the folder asked for is the one named.
        assertFormatError(try FileSystem.makeDirectories(dir.file("f/sub")), contains: ["cannot create directory \(dir.file("f/sub"))"])
    }

    func testLineWriterKeepsEveryCompleteLineAndAppends() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let path = dir.file("log.jsonl")
        try LineWriter(path: path).write("one")
        let log = try LineWriter(path: path, append: true)
        try log.write("two")
        // Flushed per line: readable while the writer is still open.
        XCTAssertEqual(String(decoding: try AtomicFile.read(path: path), as: UTF8.self), "one\ntwo\n")
        try LineWriter(path: path).write("three")
        XCTAssertEqual(String(decoding: try AtomicFile.read(path: path), as: UTF8.self), "three\n")
        assertFormatError(try LineWriter(path: dir.file("missing/log")), contains: ["cannot write \(dir.file("missing/log"))"])
    }
}
