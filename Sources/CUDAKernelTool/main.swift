#if canImport(Glibc)
import Glibc
#endif
import KernelDeclarations

// Build tool of the CUDA backend (run by Plugins/CUDAKernelPlugin): for every .cu file given, writes
// OUTPUT_DIR/<name>.cu.swift with the file's kernel family and typed launchers (see KernelDeclarations), and
// OUTPUT_DIR/kernel_families.swift listing them all.
// Usage: CUDAKernelTool OUTPUT_DIR FILE.cu|FILE.cuh...

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes `text` to `path` unless the file already holds it: SwiftPM runs this tool on every build (whenever the
/// tool is relinked), and an untouched file keeps CUDABackend from being compiled again for nothing.
func writeFile(_ path: String, _ text: String) -> Bool {
    if readFile(path) == text { return true }
    guard let f = fopen(path, "wb") else { return false }
    let bytes = Array(text.utf8)
    let ok = fwrite(bytes, 1, bytes.count, f) == bytes.count
    return fclose(f) == 0 && ok
}

func baseName(_ path: String) -> String { String(path.split(separator: "/").last ?? Substring(path)) }

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2 else {
    fputs("usage: CUDAKernelTool OUTPUT_DIR FILE.cu|FILE.cuh...\n", stderr)
    exit(2)
}
let outputDirectory = arguments[0]
let inputs = Array(arguments.dropFirst())
var texts: [String: String] = [:]
for path in inputs {
    guard let text = readFile(path) else {
        fputs("\(path):1: error: cannot read this kernel file\n", stderr)
        exit(1)
    }
    texts[TranslationUnit.normalize(path)] = text
}
// Paths in #line directives and comments: from the target's folder on (Sources/CUDABackend/...), so the
// generated text does not depend on where the checkout lies (the kernel cache keys on it).
func display(_ path: String) -> String {
    guard let r = path.firstRange(of: "Sources/") else { return baseName(path) }
    return String(path[r.lowerBound...])
}
var failed = false
for path in inputs where path.hasSuffix(".cu") {
    let family = String(baseName(path).dropLast(3))
    do {
        let key = TranslationUnit.normalize(path)
        let file = try KernelParser.parse(texts[key]!, file: path, family: family)
        let source = try TranslationUnit.assemble(path: key, read: { texts[$0] }, display: display)
        let swift = SwiftEmitter.emit(file, source: source, origin: display(path))
        if !writeFile("\(outputDirectory)/\(baseName(path)).swift", swift) {
            fputs("\(path):1: error: cannot write \(outputDirectory)/\(baseName(path)).swift\n", stderr)
            failed = true
        }
    } catch let e as DeclarationError {
        fputs("\(e)\n", stderr)
        failed = true
    }
}
let families = inputs.filter { $0.hasSuffix(".cu") }.map { String(baseName($0).dropLast(3)) }
if !writeFile("\(outputDirectory)/kernel_families.swift", SwiftEmitter.emitRegistry(families)) {
    fputs("error: cannot write \(outputDirectory)/kernel_families.swift\n", stderr)
    failed = true
}
exit(failed ? 1 : 0)
