#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// JPEG decoding through libjpeg-turbo's TurboJPEG library, opened at run time (Debian's `libturbojpeg0`) so
/// that building needs nothing but the toolchain.
///
/// The pixels are those of PIL's `Image.open(f).convert('RGB')`, which decodes with libjpeg-turbo too: the
/// accurate integer DCT and fancy (triangle-filter) chroma upsampling, the defaults of both. Grayscale JPEGs
/// stay one channel (`Image.rgb()` replicates it, as PIL does). Four-channel JPEGs (CMYK, or YCCK, which
/// libjpeg-turbo turns into CMYK) come back as RGB computed as PIL computes it: PIL reads every four-channel
/// JPEG as Adobe-inverted CMYK (rawmode `CMYK;I`, whatever the file's markers say), then `cmyk2rgb`.
public enum JPEG {
    /// Whether TurboJPEG was found; without it every decode throws `missingLibraryMessage`.
    public static var isAvailable: Bool { library != nil }

    /// The one line every JPEG decode fails with when the library is absent.
    public static let missingLibraryMessage = "JPEG decoding needs libjpeg-turbo's TurboJPEG library, which was not "
        + "found (tried \(TurboJPEG.candidates.joined(separator: ", ")); on Debian or Ubuntu: apt-get install libturbojpeg0"

    /// Whether `bytes` start like a JPEG file (the SOI marker followed by another marker).
    public static func hasSignature(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
    }

    /// Decodes a JPEG file held in memory to 8-bit gray (1 channel) or RGB (3 channels). Errors start with
    /// "JPEG:" and carry libjpeg-turbo's own message; callers add the file name.
    public static func decode(_ bytes: [UInt8]) throws -> Image {
        func fail(_ what: String) -> FormatError { FormatError("JPEG: " + what) }
        guard let tj = library else { throw fail(missingLibraryMessage) }
        guard !bytes.isEmpty else { throw fail("empty file") }
        guard hasSignature(bytes) else { throw fail("missing start-of-image marker (not a JPEG file)") }
        guard let handle = tj.initDecompress() else { throw fail("TurboJPEG could not create a decoder") }
        defer { _ = tj.destroy(handle) }
        func libraryMessage() -> String {
            tj.errorString(handle).map { String(cString: $0) } ?? "unknown TurboJPEG error"
        }

        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = -1
        let headerStatus = bytes.withUnsafeBufferPointer {
            tj.decompressHeader(handle, $0.baseAddress, UInt($0.count), &width, &height, &subsampling, &colorspace)
        }
        // The header call also fails on warnings (junk between markers, which PIL skips) and on sampling factors
        // TurboJPEG has no name for (which decode fine); what matters is whether it found the size and colours.
        guard width >= 1, height >= 1, colorspace >= 0 else {
            throw fail(headerStatus != 0 ? libraryMessage() : "the file holds no image (only tables)")
        }
        let pixelCount = Int(width) * Int(height)
        guard pixelCount <= Image.maxPixels else {
            throw fail("image of \(width)x\(height) pixels is over the \(Image.maxPixels)-pixel limit")
        }

        let format: (code: Int32, channels: Int)
        switch colorspace {
        case TurboJPEG.colorspaceGray: format = (TurboJPEG.pixelFormatGray, 1)
        case TurboJPEG.colorspaceCMYK, TurboJPEG.colorspaceYCCK: format = (TurboJPEG.pixelFormatCMYK, 4)
        default: format = (TurboJPEG.pixelFormatRGB, 3)
        }
        // PIL refuses a file that ends before its image data does; libjpeg-turbo would pad it with gray.
        guard hasEndAfterFirstScan(bytes) else { throw fail("file is truncated (no end-of-image marker after the image data)") }
        var pixels = [UInt8](repeating: 0, count: pixelCount * format.channels)
        func decompress(_ extraFlags: Int32) -> Int32 {
            bytes.withUnsafeBufferPointer { src in
                pixels.withUnsafeMutableBufferPointer { dst in
                    tj.decompress(handle, src.baseAddress, UInt(src.count), dst.baseAddress, width, 0, height, format.code,
                                  TurboJPEG.flagAccurateDCT | TurboJPEG.flagLimitScans | extraFlags)
                }
            }
        }
        // libjpeg-turbo reports damaged entropy-coded data as warnings and decodes through it, as PIL does; a fatal
        // error is something else. TurboJPEG tells them apart only until the first warning (it then calls any
        // failure a warning), and keeps the text of the first warning, so: stop at the first warning, and if there
        // was one, decode again through the warnings; a different final message then means a fatal error. (The
        // message buffer is per thread from libjpeg-turbo 2.0.6 on.)
        if decompress(TurboJPEG.flagStopOnWarning) != 0 {
            let firstMessage = libraryMessage()
            guard tj.errorCode(handle) == TurboJPEG.errorWarning else { throw fail(firstMessage) }
            guard !firstMessage.contains(TurboJPEG.prematureEndWarning) else { throw fail("file is truncated (\(firstMessage))") }
            if decompress(0) != 0, libraryMessage() != firstMessage { throw fail(libraryMessage()) }
        }
        if format.channels == 4 {
            return Image(width: Int(width), height: Int(height), channels: 3, pixels: rgbFromInvertedCMYK(pixels))
        }
        return Image(width: Int(width), height: Int(height), channels: format.channels, pixels: pixels)
    }

    /// Whether an end-of-image marker follows the first scan's header. The marker segments before the scan are
    /// walked by their lengths, so an embedded thumbnail (a JPEG inside an APP1 segment) does not count; in the
    /// entropy-coded data that follows, a 0xFF byte is always escaped, so 0xFF 0xD9 there is the real marker.
    /// A file whose headers cannot be walked passes, for libjpeg-turbo to describe what is wrong.
    static func hasEndAfterFirstScan(_ bytes: [UInt8]) -> Bool {
        var i = 2
        while i + 4 <= bytes.count, bytes[i] == 0xFF {
            let marker = bytes[i + 1]
            if marker == 0xFF { i += 1; continue }  // fill byte
            if marker == 0xDA { break }
            if marker == 0x01 || (0xD0...0xD7).contains(marker) { i += 2; continue }  // markers without a length
            i += 2 + (Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]))
        }
        guard i + 4 <= bytes.count, bytes[i] == 0xFF, bytes[i + 1] == 0xDA else { return true }
        var j = bytes.count - 2
        while j > i {
            if bytes[j] == 0xFF && bytes[j + 1] == 0xD9 { return true }
            j -= 1
        }
        return false
    }

    /// PIL's conversion of a four-channel JPEG's samples to RGB: it first inverts them (`CMYK;I`), then maps
    /// each (c, k) to nk − round(c · nk / 255) with nk = 255 − k, the rounding being its MULDIV255.
    static func rgbFromInvertedCMYK(_ samples: [UInt8]) -> [UInt8] {
        let n = samples.count / 4
        return [UInt8](unsafeUninitializedCapacity: n * 3) { out, count in
            for p in 0..<n {
                let nk = Int(samples[4 * p + 3])  // 255 − (255 − stored k)
                for ch in 0..<3 {
                    let c = 255 - Int(samples[4 * p + ch])
                    let t = c * nk + 128
                    out[3 * p + ch] = UInt8(nk - (((t >> 8) + t) >> 8))
                }
            }
            count = n * 3
        }
    }

    static let library: TurboJPEG? = TurboJPEG.load(TurboJPEG.candidates)
}

/// The TurboJPEG functions this module calls (the version-2 API, present in libjpeg-turbo 2.0 and later).
struct TurboJPEG {
    typealias InitDecompress = @convention(c) () -> UnsafeMutableRawPointer?
    typealias DecompressHeader = @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, UInt,
                                                 UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?,
                                                 UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?) -> Int32
    typealias Decompress = @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<UInt8>?, UInt,
                                           UnsafeMutablePointer<UInt8>?, Int32, Int32, Int32, Int32, Int32) -> Int32
    typealias Destroy = @convention(c) (UnsafeMutableRawPointer?) -> Int32
    typealias ErrorString = @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutablePointer<CChar>?
    typealias ErrorCode = @convention(c) (UnsafeMutableRawPointer?) -> Int32

    let initDecompress: InitDecompress
    let decompressHeader: DecompressHeader
    let decompress: Decompress
    let destroy: Destroy
    let errorString: ErrorString
    let errorCode: ErrorCode

    static let candidates = ["libturbojpeg.so.0", "libturbojpeg.so", "libturbojpeg.dylib"]

    // Constants of turbojpeg.h.
    static let pixelFormatRGB: Int32 = 0, pixelFormatGray: Int32 = 6, pixelFormatCMYK: Int32 = 11
    static let colorspaceGray: Int32 = 2, colorspaceCMYK: Int32 = 3, colorspaceYCCK: Int32 = 4
    static let flagAccurateDCT: Int32 = 4096, flagStopOnWarning: Int32 = 8192
    /// Refuses progressive files of more than 500 scans, which can take minutes to decode (a denial of service).
    static let flagLimitScans: Int32 = 32768
    static let errorWarning: Int32 = 0
    /// libjpeg's JWRN_JPEG_EOF text, unchanged since libjpeg 6, reported when the data runs out.
    static let prematureEndWarning = "Premature end of JPEG file"

    /// Opens the first of the libraries `names` that has every function, or nil.
    static func load(_ names: [String]) -> TurboJPEG? {
        for name in names {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            if let i = dlsym(handle, "tjInitDecompress"), let h = dlsym(handle, "tjDecompressHeader3"),
               let d = dlsym(handle, "tjDecompress2"), let x = dlsym(handle, "tjDestroy"),
               let s = dlsym(handle, "tjGetErrorStr2"), let c = dlsym(handle, "tjGetErrorCode") {
                return TurboJPEG(initDecompress: unsafeBitCast(i, to: InitDecompress.self),
                                 decompressHeader: unsafeBitCast(h, to: DecompressHeader.self),
                                 decompress: unsafeBitCast(d, to: Decompress.self),
                                 destroy: unsafeBitCast(x, to: Destroy.self),
                                 errorString: unsafeBitCast(s, to: ErrorString.self),
                                 errorCode: unsafeBitCast(c, to: ErrorCode.self))
            }
            dlclose(handle)
        }
        return nil
    }
}
