import PackagePlugin

/// Turns the CUDA backend's `.cu` kernel files (and the `.cuh` headers they include) into Swift: for each `.cu`,
/// a generated `<name>.cu.swift` holding the CUDA text NVRTC compiles at run time and a typed launch method per
/// kernel, so the binary needs no file besides the CUDA libraries and a renamed kernel or changed parameter
/// list fails the build; and `kernel_families.swift`, the list of them all.
@main
struct CUDAKernelPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let files = target.sourceFiles.map(\.url).filter { $0.pathExtension == "cu" || $0.pathExtension == "cuh" }
            .sorted { $0.path < $1.path }
        let outputs = files.filter { $0.pathExtension == "cu" }
            .map { context.pluginWorkDirectoryURL.appending(path: $0.lastPathComponent + ".swift") }
        guard !outputs.isEmpty else { return [] }
        let registry = context.pluginWorkDirectoryURL.appending(path: "kernel_families.swift")
        return [.buildCommand(displayName: "Generating Swift for \(outputs.count) CUDA kernel files of \(target.name)",
                              executable: try context.tool(named: "CUDAKernelTool").url,
                              arguments: [context.pluginWorkDirectoryURL.path] + files.map(\.path),
                              inputFiles: files, outputFiles: outputs + [registry])]
    }
}
