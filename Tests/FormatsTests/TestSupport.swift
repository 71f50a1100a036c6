import XCTest
@testable import Formats
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp, removed (with its plain files) by `remove()`.
struct TempDir {
    let path: String

    init() throws {
        var template = Array("/tmp/formats-tests-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw FormatError("mkdtemp failed")
        }
        path = String(cString: p)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func entries() -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    func remove() {
        for name in entries() { unlink(file(name)) }
        rmdir(path)
    }
}

/// Asserts that `body` throws a `FormatError` whose message contains every one of `fragments`.
func assertFormatError<T>(_ body: @autoclosure () throws -> T, contains fragments: [String],
                          file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected a FormatError containing \(fragments)", file: file, line: line)
    } catch let e as FormatError {
        for f in fragments where !e.message.contains(f) {
            XCTFail("error message \"\(e.message)\" does not contain \"\(f)\"", file: file, line: line)
        }
        XCTAssertFalse(e.message.contains("\n"), "error messages are one line", file: file, line: line)
    } catch {
        XCTFail("expected a FormatError, got \(error)", file: file, line: line)
    }
}

/// Deterministic pseudo-random bytes (xorshift) so failures reproduce.
func pseudoRandomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var s = seed | 1
    return (0..<n).map { _ in
        s ^= s << 13
        s ^= s >> 7
        s ^= s << 17
        return UInt8(truncatingIfNeeded: s >> 24)
    }
}

/// A file of `Tests/Resources/pil-images`: small images and what PIL makes of them (its make_reference.py says how
/// they were made).
func pilImagesResource(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Resources/pil-images/\(name)").path
}
