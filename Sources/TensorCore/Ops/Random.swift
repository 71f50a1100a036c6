// Random tensors: the backend's counter-based Philox draws (Core/RandomGenerator.swift), the same numbers on every
// backend.

extension Tensor {
    /// Standard normal values from `rng` (the same numbers on every backend).
    public static func randomNormal(_ shape: [Int], rng: inout RandomGenerator, dtype: DType = .float32,
                                    on device: Device = .default) -> Tensor {
        random(shape, normal: true, rng: &rng, dtype: dtype, on: device)
    }

    /// Uniform values in [0, 1).
    public static func randomUniform(_ shape: [Int], rng: inout RandomGenerator, dtype: DType = .float32,
                                     on device: Device = .default) -> Tensor {
        random(shape, normal: false, rng: &rng, dtype: dtype, on: device)
    }

    private static func random(_ shape: [Int], normal: Bool, rng: inout RandomGenerator, dtype: DType,
                               on device: Device) -> Tensor {
        let n = Shape.count(shape)
        let s = device.backend.allocate(n, dtype)
        device.backend.random(s, normal: normal, seed: rng.seed, counter: rng.reserve(n))
        return Tensor(storage: s, shape: shape)
    }
}
