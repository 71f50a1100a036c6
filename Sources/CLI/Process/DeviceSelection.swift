import TensorCore
import CUDABackend

/// `--device cuda|cpu|auto`, accepted by every command and removed from its arguments before parsing.
enum DeviceChoice: String {
    case cpu, cuda, auto
}

/// The CUDA backend in use, if any (for memory figures and precision settings).
nonisolated(unsafe) var activeCUDA: CUDABackend?

/// Pulls `--device X` / `--device=X` out of `args`, or returns `fallback` when absent.
func extractDevice(_ args: inout [String], fallback: DeviceChoice) throws -> DeviceChoice {
    let choice = try extractOption(&args, "device")
    guard let choice else { return fallback }
    guard let d = DeviceChoice(rawValue: choice) else {
        throw CLIError("--device must be cuda, cpu or auto, got '\(choice)'", usage: true)
    }
    return d
}

/// Makes the chosen device the default one. `auto` falls back to the CPU and says so once.
func selectDevice(_ choice: DeviceChoice) throws {
    switch choice {
    case .cpu:
        Device.default = .cpu
    case .cuda:
        do {
            let cuda = try CUDABackend.load(device: try localGPUOrdinal())
            activeCUDA = cuda
            Device.default = cuda.device
        } catch {
            throw CLIError("--device cuda: \(error)")
        }
    case .auto:
        if let cuda = try? CUDABackend.load(device: try localGPUOrdinal()) {
            activeCUDA = cuda
            Device.default = cuda.device
        } else {
            Console.pendingNote = "note: no usable NVIDIA GPU found; running on the CPU"
            Device.default = .cpu
        }
    }
}

/// A one-line description of the device in use.
func deviceDescription() -> String {
    if let cuda = activeCUDA { return "\(cuda.deviceName) (CUDA)" }
    return "CPU (\(onlineCores()) cores, BLAS: \(CPUBackend.blasName))"
}

/// `--tf32` / `--bf16`: the GPU's matrix-product precision (float32 when neither). bf16 products round both
/// operands of every matrix product to bfloat16 and accumulate in float32, as PyTorch's bf16 autocast does;
/// attention then runs on TF32 tensor cores. Returns a label for reports ("" for float32 or on the CPU).
func applyProductPrecision(_ a: Arguments) -> String {
    guard let cuda = activeCUDA else { return "" }
    if a.has("bf16") {
        cuda.bf16Products = true
        cuda.allowTF32 = true
        return ", BF16 products and flash attention (head dims 64, 72)"
    }
    if a.has("tf32") {
        cuda.allowTF32 = true
        return ", TF32"
    }
    return ""
}
