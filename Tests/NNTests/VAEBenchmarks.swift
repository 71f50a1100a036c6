import XCTest
import Dispatch
import TensorCore
import NN
#if canImport(Glibc)
import Glibc
#endif

/// Encode and decode times of the VAE on the CPU: the small fixture model on its 2 x 32x32 images, and one
/// 256x256 image through a model of the SD-VAE's size (block widths 128, 256, 512, 512, 32 groups) with random
/// weights built here. Runs only with TVM_VAE_BENCH=1; prints one `BENCH` line per measurement: the best of
/// 5 runs for the small model, of `TVM_VAE_BENCH_REPEATS` (default 1) for the large one, after one warm-up run,
/// as wall-clock seconds and the process's CPU seconds (all threads; on a shared machine the steadier figure).
final class VAEBenchmarks: XCTestCase {
    func testEncodeDecodeTimes() throws {
        let env = ProcessInfo.processInfo.environment
        guard env["TVM_VAE_BENCH"] == "1" else { throw XCTSkip("set TVM_VAE_BENCH=1") }
        print("BENCH cpu: \(ProcessInfo.processInfo.activeProcessorCount) cores online, matrix products: \(CPUBackend.blasName)")
        func processCPUSeconds() -> Double {
            var t = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
        func seconds(repeats: Int, _ body: () throws -> Tensor) rethrows -> (wall: Double, cpu: Double) {
            _ = try body().floats
            var best = (wall: Double.infinity, cpu: Double.infinity)
            for _ in 0..<repeats {
                let (start, startCPU) = (DispatchTime.now().uptimeNanoseconds, processCPUSeconds())
                _ = try body().floats
                best = (min(best.wall, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9),
                        min(best.cpu, processCPUSeconds() - startCPU))
            }
            return best
        }
        func report(_ what: String, _ vae: AutoencoderKL, images: Tensor, repeats: Int) throws {
            let latents = try vae.encode(images).mean
            let encode = try seconds(repeats: repeats) { try vae.encode(images).mean }
            let decode = try seconds(repeats: repeats) { try vae.decode(latents) }
            print(String(format: "BENCH %@: encode %@ %.3f s (CPU %.3f s), decode %@ %.3f s (CPU %.3f s)", what, "\(images.shape)",
                         encode.wall, encode.cpu, "\(latents.shape)", decode.wall, decode.cpu))
        }

        if let dir = VAETests.fixtureDirectory {
            let vae = try AutoencoderKL(directory: dir, on: .cpu)
            var rng = RandomGenerator(seed: 1)
            try report("vae_small", vae, images: Tensor(rng.uniformFloats(2 * 3 * 32 * 32).map { $0 * 2 - 1 }, shape: [2, 3, 32, 32], on: .cpu),
                       repeats: 5)
        }

        let vae = AutoencoderKL(randomWeightsFor: .stableDiffusion, seed: 2, on: .cpu)
        var rng = RandomGenerator(seed: 2)
        try report("SD-VAE size, random weights", vae,
                   images: Tensor(rng.uniformFloats(3 * 256 * 256).map { $0 * 2 - 1 }, shape: [1, 3, 256, 256], on: .cpu),
                   repeats: Int(env["TVM_VAE_BENCH_REPEATS"] ?? "") ?? 1)
    }
}
