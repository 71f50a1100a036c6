// swift-tools-version:6.0
import PackageDescription

// Layers, bottom to top: TensorCore (tensors, autodiff, CPU backend) -> NN (layers, DiT, optimizers)
// -> TVM (the method; the trainer and the training loop) ; Formats (file readers/writers, paths), Data, Eval
// beside them ; Distributed (communicators, data-parallel gradients) under TVM ; CLI on top. CUDABackend (beside
// TensorCore) gets its kernels from .cu files through CUDAKernelPlugin, which runs CUDAKernelTool at build time.
// docs/ARCHITECTURE.md has the map.
let release: [SwiftSetting] = []
// The CPU's float32 register tile (AVX2Kernels) is the one module built for AVX2 and FMA; TensorCore calls it only
// where /proc/cpuinfo lists both. On other architectures it is plain Swift that nothing calls.
#if arch(x86_64)
let avx2: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-mavx2", "-Xcc", "-mfma"])]
#else
let avx2: [SwiftSetting] = []
#endif

let package = Package(
    name: "TerminalVelocity",
    products: [
        .executable(name: "tvm", targets: ["CLI"]),
    ],
    targets: [
        .target(name: "AVX2Kernels", swiftSettings: avx2),
        .target(name: "TensorCore", dependencies: ["AVX2Kernels"], swiftSettings: release),
        .target(name: "CUDABackend", dependencies: ["TensorCore"], swiftSettings: release, plugins: ["CUDAKernelPlugin"]),
        // The build tool that turns the CUDA backend's .cu files into Swift (KernelDeclarations parses them).
        .target(name: "KernelDeclarations"),
        .executableTarget(name: "CUDAKernelTool", dependencies: ["KernelDeclarations"]),
        .plugin(name: "CUDAKernelPlugin", capability: .buildTool(), dependencies: ["CUDAKernelTool"]),
        .target(name: "Formats", swiftSettings: release),
        .target(name: "NN", dependencies: ["TensorCore", "Formats"], swiftSettings: release),
        .target(name: "Data", dependencies: ["TensorCore", "Formats"], swiftSettings: release),
        .target(name: "Eval", dependencies: ["TensorCore", "Formats", "Data"], swiftSettings: release),
        .target(name: "Distributed", dependencies: ["TensorCore"], swiftSettings: release),
        .target(name: "TVM", dependencies: ["TensorCore", "NN", "Data", "Eval", "Formats", "Distributed"], swiftSettings: release),
        .executableTarget(name: "CLI", dependencies: ["TensorCore", "CUDABackend", "NN", "TVM", "Data", "Eval", "Formats",
                                                      "Distributed"],
                          swiftSettings: release),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats"]),
        .testTarget(name: "KernelDeclarationsTests", dependencies: ["KernelDeclarations"]),
        .testTarget(name: "CUDABackendTests", dependencies: ["CUDABackend", "TensorCore", "Eval", "Distributed", "NN", "TVM"]),
        .testTarget(name: "EvalTests", dependencies: ["Eval", "Data", "TensorCore", "Formats"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "TensorCore", "Formats"]),
        .testTarget(name: "CLITests", dependencies: ["CLI", "Formats", "TensorCore", "NN", "TVM", "Data", "Eval"]),
        .testTarget(name: "TVMTests", dependencies: ["TVM", "NN", "TensorCore", "Data", "Eval", "Formats"]),
        .testTarget(name: "DistributedTests", dependencies: ["Distributed", "TVM", "NN", "TensorCore", "Data"]),
    ],
    swiftLanguageModes: [.v5]
)
