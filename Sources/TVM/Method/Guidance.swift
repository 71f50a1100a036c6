import TensorCore
import NN

/// Classifier-free guidance during training (TVM.md): how w is drawn, label dropout, and whether the
/// network output is scaled by kappa = w.
public struct GuidanceConfig: Equatable {
    public enum Scale: Equatable {
        /// No guidance input: w = 1 (unconditional data, or plain conditional training).
        case off
        case constant(Double)
        case uniform(Double, Double)
        /// beta = 1 / w drawn uniformly in (0, 1) (the official default when no w is given).
        case betaUniform
    }
    public var scale: Scale
    public var labelDropout: Double
    public var scaledParameterization: Bool

    public init(scale: Scale = .off, labelDropout: Double = 0.1, scaledParameterization: Bool = true) {
        self.scale = scale
        self.labelDropout = labelDropout
        self.scaledParameterization = scaledParameterization
    }

    public static let unconditional = GuidanceConfig(scale: .off, labelDropout: 0, scaledParameterization: false)

    /// One-hot classes (all-zero rows are the null class) and beta per row for a batch of labels.
    /// A dropped row gets the null class and beta = 1.
    public func conditioning(labels: [Int], classes: Int, rng: inout RandomGenerator, on device: Device) -> Conditioning {
        let n = labels.count
        let drop = rng.uniformFloats(n), draw = rng.uniformFloats(n)
        var onehot = [Float](repeating: 0, count: n * classes)
        var beta = [Float](repeating: 1, count: n)
        for i in 0..<n {
            let dropped = Double(drop[i]) < labelDropout
            if !dropped { onehot[i * classes + labels[i]] = 1 }
            switch scale {
            case .off: beta[i] = 1
            case .constant(let w): beta[i] = Float(1 / w)
            case .uniform(let lo, let hi): beta[i] = Float(1 / (lo + (hi - lo) * Double(draw[i])))
            case .betaUniform: beta[i] = max(draw[i], 1e-4)
            }
            if dropped { beta[i] = 1 }
        }
        return Conditioning(classes: Tensor(onehot, shape: [n, classes], on: device),
                            beta: Tensor(beta, shape: [n], on: device))
    }
}

extension Conditioning {
    /// Sampling with guidance scale w: one-hot classes from `labels` and beta = 1 / w on every row, and the guidance
    /// interval on every row when given (for a DiT with the interval input; nil: its default, the whole interval).
    public static func sampling(labels: [Int], classes: Int, guidance w: Double, interval: ClosedRange<Double>? = nil,
                                on device: Device = .default) -> Conditioning {
        let n = labels.count
        var onehot = [Float](repeating: 0, count: n * classes)
        for (i, l) in labels.enumerated() { onehot[i * classes + l] = 1 }
        return Conditioning(classes: Tensor(onehot, shape: [n, classes], on: device),
                            beta: Tensor([Float](repeating: Float(1 / w), count: n), shape: [n], on: device),
                            interval: interval.map { (Tensor.full($0.lowerBound, shape: [n], on: device),
                                                      Tensor.full($0.upperBound, shape: [n], on: device)) })
    }
}
