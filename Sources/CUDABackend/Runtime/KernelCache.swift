#if canImport(Glibc)
import Glibc
#endif

/// Compiled kernel images kept on disk between runs, keyed by a hash of the source, the options and the NVRTC
/// version, so a process compiles only what changed. TVM_CUDA_CACHE_DIR picks the folder; TVM_CUDA_NO_CACHE=1
/// turns the cache off. Any failure to read or write falls back to compiling.
enum KernelCache {
    static var directory: String? {
        if environment("TVM_CUDA_NO_CACHE") == "1" { return nil }
        if let d = environment("TVM_CUDA_CACHE_DIR") { return d }
        if let x = environment("XDG_CACHE_HOME") { return "\(x)/terminalvelocity/cuda" }
        if let h = environment("HOME") { return "\(h)/.cache/terminalvelocity/cuda" }
        return nil
    }

    /// FNV-1a, 64 bits, over the UTF-8 of each part.
    static func key(_ parts: [String]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for part in parts {
            for b in part.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            h = (h ^ 0xff) &* 0x100_0000_01b3
        }
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    /// The key of a kernel module's image: its source, its NVRTC options (the target architecture first), the NVRTC
    /// version and the image's kind.
    static func moduleKey(source: String, options: [String], nvrtc version: (major: Int, minor: Int), cubin: Bool) -> String {
        key([source, options.joined(separator: " "), "nvrtc \(version)", cubin ? "cubin" : "ptx"])
    }

    static func load(_ key: String) -> [UInt8]? {
        guard let dir = directory, let f = fopen("\(dir)/\(key).bin", "rb") else { return nil }
        defer { fclose(f) }
        fseek(f, 0, SEEK_END)
        let size = ftell(f)
        guard size > 0 else { return nil }
        fseek(f, 0, SEEK_SET)
        var bytes = [UInt8](repeating: 0, count: size)
        guard fread(&bytes, 1, size, f) == size else { return nil }
        return bytes
    }

    /// Writes an image under `key` in `dir` (default: the cache folder); whether it was written.
    @discardableResult
    static func store(_ key: String, _ bytes: [UInt8], in dir: String? = directory) -> Bool {
        guard let dir else { return false }
        var path = dir.hasPrefix("/") ? "" : "."
        for part in dir.split(separator: "/") {
            path += "/" + part
            mkdir(path, 0o755)
        }
        let tmp = "\(dir)/\(key).\(getpid()).tmp"
        guard let f = fopen(tmp, "wb") else { return false }
        let ok = fwrite(bytes, 1, bytes.count, f) == bytes.count
        fclose(f)
        guard ok, rename(tmp, "\(dir)/\(key).bin") == 0 else { unlink(tmp); return false }
        return true
    }
}
