#if canImport(Glibc)
import Glibc
#endif

/// Whether the AVX2Kernels module (built for AVX2 and FMA) may run: the float32 matrix product without a BLAS
/// (`PackedGEMM`) and the activation kernels. Elsewhere the portable Swift loops run.
enum AVX2 {
    /// Whether the processor has AVX2 and FMA (the flags of /proc/cpuinfo) and TVM_NO_AVX2 is unset.
    static let isAvailable: Bool = {
        if getenv("TVM_NO_AVX2") != nil { return false }
        guard let file = fopen("/proc/cpuinfo", "r") else { return false }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil, capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            guard text.hasPrefix("flags") else { continue }
            let flags = Set(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }))
            return flags.contains("avx2") && flags.contains("fma")
        }
        return false
    }()

    /// Available and not switched off (`CPUBackend.useAVX2`).
    static var enabled: Bool { CPUBackend.useAVX2 && isAvailable }
}
