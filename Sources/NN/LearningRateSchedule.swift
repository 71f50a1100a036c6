#if canImport(Glibc)
import Glibc
#endif

/// The learning rate at each training step, as a factor of the peak rate: a linear warm-up, then constant, a
/// cosine decay to zero, or an inverse-square-root decay. A pure function of the step, so a resumed run follows
/// the schedule of an uninterrupted one without saving anything but the step and the schedule itself.
public struct LearningRateSchedule: Equatable, Sendable {
    public enum Decay: Equatable, Sendable {
        /// The peak rate after the warm-up, to the end.
        case constant
        /// Half a cosine from the peak at the end of the warm-up to zero at step `end`, zero after it.
        case cosine(end: Int)
        /// The peak up to step `reference`, then peak * sqrt(reference / k) (EDM2's schedule, with the
        /// Transformer's when `reference` is the warm-up length).
        case inverseSquareRoot(reference: Int)
    }

    /// Steps over which the rate rises linearly to the peak: step k (1-based) gets k / warmup of it.
    public var warmup: Int
    public var decay: Decay

    public init(warmup: Int = 0, decay: Decay = .constant) {
        precondition(warmup >= 0, "warm-up steps must not be negative")
        switch decay {
        case .constant: break
        case .cosine(let end): precondition(end > warmup, "a cosine decay must end after the warm-up")
        case .inverseSquareRoot(let reference): precondition(reference >= 1, "the inverse-square-root reference step must be positive")
        }
        self.warmup = warmup
        self.decay = decay
    }

    /// The peak rate at every step: today's behaviour, and what `TrainConfig` starts with.
    public static let constant = LearningRateSchedule()

    /// The factor of the peak rate at optimizer step k (1-based). Exactly 1 wherever the schedule is flat, so a
    /// constant schedule leaves the rate's bits alone.
    public func factor(step k: Int) -> Double {
        let warm = warmup > 0 && k < warmup ? Double(max(k, 0)) / Double(warmup) : 1
        switch decay {
        case .constant:
            return warm
        case .cosine(let end):
            guard k > warmup else { return warm }
            guard k < end else { return 0 }
            let progress = Double(k - warmup) / Double(end - warmup)
            return warm * 0.5 * (1 + cos(Double.pi * progress))
        case .inverseSquareRoot(let reference):
            guard k > reference else { return warm }
            return warm * (Double(reference) / Double(k)).squareRoot()
        }
    }
}

extension LearningRateSchedule.Decay: CustomStringConvertible {
    /// "constant", "cosine:END" or "rsqrt:REF", as `--schedule` takes it and checkpoints record it.
    public var description: String {
        switch self {
        case .constant: return "constant"
        case .cosine(let end): return "cosine:\(end)"
        case .inverseSquareRoot(let reference): return "rsqrt:\(reference)"
        }
    }
}
