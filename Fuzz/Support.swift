// Shared by every harness (compiled into each one by scripts/fuzz.sh).
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer's entry point calls this with the input as an array; each harness defines `fuzz(_:)`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    fuzz(bytes)
    return 0
}

/// The value `body` returns, or nil when it throws `E`, the one error type the reader documents. Any
/// other error breaks that contract (callers only catch `E`), so it stops the fuzzer like a crash.
func refusedAs<T, E: Error>(_: E.Type, _ body: () throws -> T) -> T? {
    do {
        return try body()
    } catch is E {
        return nil
    } catch {
        fatalError("threw \(type(of: error)) instead of \(E.self): \(error)")
    }
}

/// The message of the `E` that `body` throws, or nil when it succeeds; other errors stop the fuzzer.
func refusalMessage<E: Error & CustomStringConvertible>(_: E.Type, _ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch let e as E {
        return e.description
    } catch {
        fatalError("threw \(type(of: error)) instead of \(E.self): \(error)")
    }
}

/// Stops the fuzzer (a crash libFuzzer saves) when an invariant does not hold.
func require(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError(what()) }
}

/// Error messages are logged as one line and must stay so whatever the file holds.
func requireOneLine(_ message: String?) {
    if let message { require(!message.contains("\n") && !message.contains("\r"), "multi-line error: \(message)") }
}

/// Bitwise equality, so that NaN payloads count as equal when the bits are.
func sameBits(_ a: [Float], _ b: [Float]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
}

func sameBits(_ a: [Double], _ b: [Double]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
}

/// One scratch file per fuzzer process, for the readers that take a path (they have their own code for
/// header and data reads, so they are fuzzed against the in-memory parsers). /dev/shm keeps it in memory.
let scratchPath: String = {
    var st = stat()
    let dir = stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp"
    let path = "\(dir)/terminalvelocity-fuzz-\(getpid())"
    atexit { unlink(scratchPath) }
    return path
}()

/// Writes `bytes` to the scratch file and returns its path.
func scratchFile(_ bytes: [UInt8]) -> String {
    let fd = open(scratchPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    require(fd >= 0, "cannot create \(scratchPath)")
    var done = 0
    bytes.withUnsafeBytes { raw in
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            require(n > 0, "cannot write \(scratchPath)")
            done += n
        }
    }
    close(fd)
    return scratchPath
}
