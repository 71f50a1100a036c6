#if canImport(Glibc)
import Glibc
#endif

/// DEFLATE compression through the system's zlib, found at run time (`libz.so.1`, Debian's zlib1g, which
/// every Linux system has), so that building needs nothing but the toolchain. zlib decodes the image data
/// of PNG files, gzip members (`Data.Gzip` parses their header and trailer) and ZIP entries.
///
/// Without zlib every call throws one `FormatError` that says what to install.
public enum Zlib {
    /// What surrounds the DEFLATE data.
    public enum Format: Sendable {
        /// Bare DEFLATE (RFC 1951): ZIP entries and the body of a gzip member.
        case raw
        /// zlib (RFC 1950): a two-byte header, DEFLATE, and the Adler-32 of the data (PNG's image data).
        case zlib

        /// zlib's `windowBits`: a 32 KB window; negative selects raw DEFLATE.
        var windowBits: Int32 { self == .raw ? -15 : 15 }

        var name: String { self == .raw ? "DEFLATE data" : "zlib stream" }
    }

    /// What `inflate` decoded.
    public struct Inflated: Sendable {
        /// The decompressed bytes: the whole stream, or its first `maxOutput` bytes.
        public var output: [UInt8]
        /// The index in the input just past the end of the stream (the Adler-32 trailer included for
        /// `.zlib`), or nil when decoding stopped at `maxOutput` bytes with more of the stream to come.
        public var end: Int?
    }

    /// Compresses `data` at `level` (0 stores, 1 is fastest, 9 smallest; zlib's default is 6).
    public static func deflate(_ data: [UInt8], format: Format, level: Int = 6) throws -> [UInt8] {
        let z = try library.get()
        let stream = ZStreamBox()
        defer { stream.release() }
        try check(z.deflateInit2(stream.pointer, Int32(clamping: level), deflatedMethod, format.windowBits,
                                 defaultMemLevel, defaultStrategy, z.version(), zStreamSize), "deflateInit2")
        defer { _ = z.deflateEnd(stream.pointer) }
        // deflateBound is a guaranteed upper limit for compressing all input with Z_FINISH, so one buffer suffices.
        let bound = Int(z.deflateBound(stream.pointer, UInt(data.count)))
        return try data.withUnsafeBufferPointer { input in
            try [UInt8](unsafeUninitializedCapacity: bound) { out, written in
                written = 0
                var fed = 0
                stream.nextIn = UnsafeMutablePointer(mutating: input.baseAddress)
                stream.nextOut = out.baseAddress
                while true {
                    // zlib counts in 32-bit integers: larger buffers go in and out in pieces.
                    if stream.availIn == 0 {
                        let piece = min(input.count - fed, Int(UInt32.max))
                        stream.availIn = UInt32(piece)
                        fed += piece
                    }
                    if stream.availOut == 0 { stream.availOut = UInt32(min(bound - written, Int(UInt32.max))) }
                    let before = Int(stream.availOut)
                    let rc = z.deflate(stream.pointer, fed == input.count ? finish : noFlush)
                    written += before - Int(stream.availOut)
                    if rc == streamEnd { return }
                    try check(rc == bufferError ? ok : rc, "deflate")
                }
            }
        }
    }

    /// Decodes the stream that starts at `data[start]`: all of it, or its first `maxOutput` bytes when it
    /// decodes to more (`end` is then nil), so a few KB of input cannot claim gigabytes of memory. Damaged
    /// or truncated data throws a one-line `FormatError`, as does a wrong Adler-32 for `.zlib`. When the
    /// output reaches exactly `maxOutput` bytes, one more symbol is decoded to learn whether the stream
    /// ends there; the data after that is not read.
    public static func inflate(_ data: [UInt8], start: Int = 0, format: Format, maxOutput: Int) throws -> Inflated {
        let z = try library.get()
        let limit = max(maxOutput, 0)
        let first = min(max(start, 0), data.count)
        let stream = ZStreamBox()
        defer { stream.release() }
        try check(z.inflateInit2(stream.pointer, format.windowBits, z.version(), zStreamSize), "inflateInit2")
        defer { _ = z.inflateEnd(stream.pointer) }

        // The output grows by doubling from a guess of 4:1 (typical of images and text), never past the
        // limit; one spare byte past the limit lets the last decode tell "ends here" from "goes on".
        var capacity = min(limit, max(1 << 16, (data.count - first).multipliedReportingOverflow(by: 4).partialValue))
        var buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity + 1)
        defer { buffer.deallocate() }
        var produced = 0
        return try data.withUnsafeBufferPointer { input in
            let base = UnsafeMutablePointer(mutating: input.baseAddress)
            var fed = first
            stream.nextIn = base.map { $0 + first }
            while true {
                if stream.availIn == 0 && fed < input.count {
                    let piece = min(input.count - fed, Int(UInt32.max))
                    stream.availIn = UInt32(piece)
                    fed += piece
                }
                if produced == capacity && capacity < limit {
                    let grown = min(limit, capacity.multipliedReportingOverflow(by: 2).partialValue)
                    let moved = UnsafeMutablePointer<UInt8>.allocate(capacity: grown + 1)
                    moved.update(from: buffer, count: produced)
                    buffer.deallocate()
                    buffer = moved
                    capacity = grown
                }
                let room = produced < capacity ? min(capacity - produced, Int(UInt32.max)) : 1
                stream.nextOut = buffer + produced
                stream.availOut = UInt32(room)
                let rc = z.inflate(stream.pointer, noFlush)
                produced += room - Int(stream.availOut)
                if produced > limit {
                    return Inflated(output: Array(UnsafeBufferPointer(start: buffer, count: limit)), end: nil)
                }
                switch rc {
                case streamEnd:
                    let consumed = fed - Int(stream.availIn)
                    return Inflated(output: Array(UnsafeBufferPointer(start: buffer, count: produced)), end: consumed)
                case ok:
                    continue
                case bufferError where stream.availIn == 0 && fed == input.count:
                    throw FormatError("\(format.name) ends early (truncated)")
                case needDictionary:
                    throw FormatError("\(format.name) needs a preset dictionary, which no format read here uses")
                case dataError:
                    throw FormatError("\(format.name): \(stream.message ?? "invalid data")")
                default:
                    try check(rc, "inflate")
                }
            }
        }
    }

    // MARK: The library

    struct Library {
        typealias DeflateInit2 = @convention(c) (UnsafeMutableRawPointer, Int32, Int32, Int32, Int32, Int32,
                                                 UnsafePointer<CChar>, Int32) -> Int32
        typealias InflateInit2 = @convention(c) (UnsafeMutableRawPointer, Int32, UnsafePointer<CChar>, Int32) -> Int32
        typealias Step = @convention(c) (UnsafeMutableRawPointer, Int32) -> Int32
        typealias End = @convention(c) (UnsafeMutableRawPointer) -> Int32
        typealias Bound = @convention(c) (UnsafeMutableRawPointer, UInt) -> UInt
        typealias Version = @convention(c) () -> UnsafePointer<CChar>

        let deflateInit2: DeflateInit2
        let deflate: Step
        let deflateEnd: End
        let deflateBound: Bound
        let inflateInit2: InflateInit2
        let inflate: Step
        let inflateEnd: End
        /// zlibVersion(): the init functions check it (and the size of `z_stream`) against the library's own.
        let version: Version
    }

    /// Loaded once; the error is kept so every caller reports the same line.
    static let library = load(candidates: ["libz.so.1", "libz.so"])

    /// The first of `candidates` that dlopen finds with every function used here.
    static func load(candidates: [String]) -> Result<Library, FormatError> {
        for name in candidates {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            func symbol<T>(_ symbol: String, as type: T.Type) -> T? {
                dlsym(handle, symbol).map { unsafeBitCast($0, to: type) }
            }
            if let deflateInit2 = symbol("deflateInit2_", as: Library.DeflateInit2.self),
               let deflate = symbol("deflate", as: Library.Step.self),
               let deflateEnd = symbol("deflateEnd", as: Library.End.self),
               let deflateBound = symbol("deflateBound", as: Library.Bound.self),
               let inflateInit2 = symbol("inflateInit2_", as: Library.InflateInit2.self),
               let inflate = symbol("inflate", as: Library.Step.self),
               let inflateEnd = symbol("inflateEnd", as: Library.End.self),
               let version = symbol("zlibVersion", as: Library.Version.self) {
                return .success(Library(deflateInit2: deflateInit2, deflate: deflate, deflateEnd: deflateEnd,
                                        deflateBound: deflateBound, inflateInit2: inflateInit2, inflate: inflate,
                                        inflateEnd: inflateEnd, version: version))
            }
            dlclose(handle)
        }
        return .failure(FormatError("zlib (\(candidates.joined(separator: " or "))) was not found: install Debian's zlib1g to read or write PNG, gzip and ZIP files"))
    }

    // zlib's constants (zlib.h).
    static let ok: Int32 = 0, streamEnd: Int32 = 1, needDictionary: Int32 = 2
    static let dataError: Int32 = -3, memoryError: Int32 = -4, bufferError: Int32 = -5, versionError: Int32 = -6
    static let noFlush: Int32 = 0, finish: Int32 = 4
    static let deflatedMethod: Int32 = 8, defaultMemLevel: Int32 = 8, defaultStrategy: Int32 = 0
    static let zStreamSize = Int32(MemoryLayout<ZStream>.size)

    /// Turns a zlib status other than Z_OK into an error naming the call.
    static func check(_ rc: Int32, _ call: String) throws {
        switch rc {
        case ok: return
        case memoryError: throw FormatError("zlib \(call): out of memory")
        case versionError: throw FormatError("zlib \(call): the installed libz.so.1 is incompatible (z_stream layout or version)")
        default: throw FormatError("zlib \(call) failed with status \(rc)")
        }
    }
}

/// zlib's `z_stream` as laid out on 64-bit Linux (LP64: `uLong` is 64 bits); `ZlibTests` checks the
/// offsets, and zlib's init functions refuse a different total size.
struct ZStream {
    var nextIn: UnsafeMutablePointer<UInt8>? = nil
    var availIn: UInt32 = 0
    var totalIn: UInt = 0
    var nextOut: UnsafeMutablePointer<UInt8>? = nil
    var availOut: UInt32 = 0
    var totalOut: UInt = 0
    var message: UnsafePointer<CChar>? = nil
    var state: OpaquePointer? = nil
    /// zalloc, zfree, opaque: null selects zlib's own malloc and free.
    var allocate: OpaquePointer? = nil
    var free: OpaquePointer? = nil
    var opaque: OpaquePointer? = nil
    var dataType: Int32 = 0
    var adler: UInt = 0
    var reserved: UInt = 0
}

/// A `ZStream` at a fixed heap address: zlib keeps a pointer back to the stream in its state and refuses
/// a stream that has moved, which a Swift value passed inout could do between calls.
struct ZStreamBox {
    let pointer: UnsafeMutableRawPointer
    private var typed: UnsafeMutablePointer<ZStream> { pointer.assumingMemoryBound(to: ZStream.self) }

    init() {
        let typed = UnsafeMutablePointer<ZStream>.allocate(capacity: 1)
        typed.initialize(to: ZStream())
        pointer = UnsafeMutableRawPointer(typed)
    }

    func release() { typed.deallocate() }

    var nextIn: UnsafeMutablePointer<UInt8>? {
        get { typed.pointee.nextIn }
        nonmutating set { typed.pointee.nextIn = newValue }
    }
    var availIn: UInt32 {
        get { typed.pointee.availIn }
        nonmutating set { typed.pointee.availIn = newValue }
    }
    var nextOut: UnsafeMutablePointer<UInt8>? {
        get { typed.pointee.nextOut }
        nonmutating set { typed.pointee.nextOut = newValue }
    }
    var availOut: UInt32 {
        get { typed.pointee.availOut }
        nonmutating set { typed.pointee.availOut = newValue }
    }
    /// zlib's description of the last error, e.g. "invalid block type".
    var message: String? { typed.pointee.message.map { String(cString: $0) } }
}
