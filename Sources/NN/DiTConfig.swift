import Formats

/// A model-configuration or checkpoint problem, one line naming the field or tensor involved.
public struct ModelError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Hyper-parameters of the Lipschitz-controlled DiT of TVM.md (the official `DiT` with learned guidance
/// embedding, QK RMSNorm and, by default, modulation norm).
public struct DiTConfig: Equatable, Sendable {
    public enum Initialization: String, Sendable {
        /// Xavier-normal divided by the largest singular value (TVM's default).
        case spectral
        /// Xavier-uniform (the original DiT's).
        case xavierUniform
    }

    public var patch: Int
    public var hidden: Int
    public var depth: Int
    public var heads: Int
    /// MLP width = Int(hidden * mlpRatio), as `int(hidden_size * mlp_ratio)` upstream.
    public var mlpRatio: Double
    /// Image side R (the latent resolution); the image is [C, R, R].
    public var inputSize: Int
    public var inChannels: Int
    /// Number of real classes; the label table has one more row, the null class.
    public var numClasses: Int
    /// Divide each adaLN modulation vector by its RMS (TVM's modulation norm).
    public var modulationNorm: Bool
    public var initialization: Initialization
    /// Spectral initialisation of the timestep MLPs too (else N(0, 0.02)); only with `.spectral`, as upstream.
    public var timeSpecInit: Bool
    /// Two more timestep MLPs embed a guidance interval (start, end) into the conditioning vector: improved
    /// MeanFlow's CFG-interval condition (guidance acts only where start <= t <= end).
    public var guidanceInterval: Bool
    /// In-context conditioning (iMF's): each condition's embedding is also added to learned tokens prepended to the
    /// patch tokens (class 8, guidance 4, interval start and end 2 each, t 4, gap 4), which the blocks attend to
    /// and the final layer drops; the adaLN vector stays.
    public var inContext: Bool

    public init(patch: Int, hidden: Int, depth: Int, heads: Int, mlpRatio: Double = 4, inputSize: Int,
                inChannels: Int, numClasses: Int, modulationNorm: Bool = true,
                init initialization: Initialization = .spectral, timeSpecInit: Bool = false, guidanceInterval: Bool = false,
                inContext: Bool = false) {
        self.patch = patch
        self.hidden = hidden
        self.depth = depth
        self.heads = heads
        self.mlpRatio = mlpRatio
        self.inputSize = inputSize
        self.inChannels = inChannels
        self.numClasses = numClasses
        self.modulationNorm = modulationNorm
        self.initialization = initialization
        self.timeSpecInit = timeSpecInit
        self.guidanceInterval = guidanceInterval
        self.inContext = inContext
    }

    /// Tokens per side.
    public var grid: Int { inputSize / patch }
    public var tokens: Int { grid * grid }
    /// The in-context tokens of each condition, in the order they precede the patches (none without `inContext`).
    public var contextTokenCounts: [(condition: String, count: Int)] {
        guard inContext else { return [] }
        return [("class", 8), ("guidance", 4)] + (guidanceInterval ? [("interval_start", 2), ("interval_end", 2)] : [])
            + [("t", 4), ("gap", 4)]
    }
    public var contextTokens: Int { contextTokenCounts.reduce(0) { $0 + $1.count } }
    public var headDim: Int { hidden / heads }
    public var mlpHidden: Int { Int(Double(hidden) * mlpRatio) }
    /// Length of one flattened patch, C * p * p.
    public var patchDim: Int { inChannels * patch * patch }

    /// Throws a `ModelError` naming the first inconsistent field.
    public func validate() throws {
        func need(_ ok: Bool, _ what: String) throws { if !ok { throw ModelError("invalid DiT config: \(what)") } }
        try need(patch >= 1, "patch must be at least 1, got \(patch)")
        try need(inputSize >= 1, "input size must be at least 1, got \(inputSize)")
        try need(inputSize % patch == 0, "input size \(inputSize) is not a multiple of the patch size \(patch)")
        try need(inChannels >= 1, "channels must be at least 1, got \(inChannels)")
        try need(numClasses >= 0, "classes must not be negative, got \(numClasses)")
        try need(depth >= 1, "depth must be at least 1, got \(depth)")
        try need(heads >= 1, "heads must be at least 1, got \(heads)")
        try need(hidden >= 4 && hidden % 4 == 0,
                 "hidden size must be a positive multiple of 4 (2-D sin-cos position embedding), got \(hidden)")
        try need(hidden % heads == 0, "hidden size \(hidden) is not divisible by \(heads) heads")
        try need(mlpRatio.isFinite && mlpRatio > 0 && Double(hidden) * mlpRatio < 1e9 && mlpHidden >= 1,
                 "mlp ratio must give a positive MLP width, got \(mlpRatio)")
        // Sizes beyond these are typos, and they would overflow the parameter arithmetic.
        try need(hidden <= 1 << 16 && depth <= 1024 && inputSize <= 1 << 14 && inChannels <= 1 << 12
                 && numClasses <= 1 << 24, "sizes out of range")
    }

    /// The standard sizes: S (384, 12, 6), B (768, 12, 12), L (1024, 24, 16), XL (1152, 28, 16).
    public static let sizes: [(name: String, hidden: Int, depth: Int, heads: Int)] = [
        ("S", 384, 12, 6), ("B", 768, 12, 12), ("L", 1024, 24, 16), ("XL", 1152, 28, 16),
    ]

    /// The names `named` knows, e.g. for help texts.
    public static let knownNames = ["S/2", "B/2", "L/2", "XL/2", "XL/2-18"]

    /// A named configuration: "S/2", "B/2", "L/2", "XL/2", or "XL/2-18" (XL with 18 heads of dimension 64, the
    /// paper's). Accepts an optional "DiT-" prefix and any patch size ("B/4"); "-H" sets the number of heads.
    public static func named(_ name: String, res: Int, channels: Int, classes: Int) throws -> DiTConfig {
        var s = name.uppercased()
        if s.hasPrefix("DIT-") { s.removeFirst(4) }
        let unknown = ModelError("unknown DiT size \"\(name)\"; known: \(knownNames.joined(separator: ", "))")
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let size = sizes.first(where: { $0.name == parts[0] }) else { throw unknown }
        let tail = parts[1].split(separator: "-", omittingEmptySubsequences: false)
        guard tail.count == 1 || tail.count == 2, let patch = Int(tail[0]), patch >= 1 else { throw unknown }
        var heads = size.heads
        if tail.count == 2 {
            guard let h = Int(tail[1]), h >= 1 else { throw unknown }
            heads = h
        }
        let config = DiTConfig(patch: patch, hidden: size.hidden, depth: size.depth, heads: heads,
                               inputSize: res, inChannels: channels, numClasses: classes)
        try config.validate()
        return config
    }
}

// MARK: JSON (stored in training checkpoints)

extension DiTConfig {
    /// The configuration as a JSON object (stored in training checkpoints).
    public var json: JSONValue {
        .object([
            ("patch", .number(Double(patch))), ("hidden", .number(Double(hidden))), ("depth", .number(Double(depth))),
            ("heads", .number(Double(heads))), ("mlp_ratio", .number(mlpRatio)), ("input_size", .number(Double(inputSize))),
            ("in_channels", .number(Double(inChannels))), ("num_classes", .number(Double(numClasses))),
            ("modulation_norm", .bool(modulationNorm)), ("init", .string(initialization.rawValue)),
            ("time_spec_init", .bool(timeSpecInit)), ("guidance_interval", .bool(guidanceInterval)),
            ("in_context", .bool(inContext)),
        ])
    }

    /// Reads `json`; throws a `ModelError` naming the missing or invalid field.
    public init(json: JSONValue) throws {
        func int(_ k: String) throws -> Int {
            guard let v = json[k]?.int else { throw ModelError("model config: missing or invalid \"\(k)\"") }
            return v
        }
        func bool(_ k: String) throws -> Bool {
            guard let v = json[k]?.bool else { throw ModelError("model config: missing or invalid \"\(k)\"") }
            return v
        }
        guard let ratio = json["mlp_ratio"]?.double else { throw ModelError("model config: missing or invalid \"mlp_ratio\"") }
        guard let initName = json["init"]?.string, let initialization = Initialization(rawValue: initName) else {
            throw ModelError("model config: missing or invalid \"init\"")
        }
        self.init(patch: try int("patch"), hidden: try int("hidden"), depth: try int("depth"), heads: try int("heads"),
                  mlpRatio: ratio, inputSize: try int("input_size"), inChannels: try int("in_channels"),
                  numClasses: try int("num_classes"), modulationNorm: try bool("modulation_norm"),
                  init: initialization, timeSpecInit: try bool("time_spec_init"),
                  // Absent in checkpoints written before the interval condition existed.
                  guidanceInterval: json["guidance_interval"] == nil ? false : try bool("guidance_interval"),
                  inContext: json["in_context"] == nil ? false : try bool("in_context"))
        try validate()
    }

    /// The first field in which `other` differs, as "hidden 32 vs 64" (self first), or nil when equal.
    public func firstDifference(from other: DiTConfig) -> String? {
        let fields: [(String, String, String)] = [
            ("patch", "\(patch)", "\(other.patch)"), ("hidden", "\(hidden)", "\(other.hidden)"),
            ("depth", "\(depth)", "\(other.depth)"), ("heads", "\(heads)", "\(other.heads)"),
            ("mlp_ratio", "\(mlpRatio)", "\(other.mlpRatio)"), ("input_size", "\(inputSize)", "\(other.inputSize)"),
            ("in_channels", "\(inChannels)", "\(other.inChannels)"), ("num_classes", "\(numClasses)", "\(other.numClasses)"),
            ("modulation_norm", "\(modulationNorm)", "\(other.modulationNorm)"),
            ("init", initialization.rawValue, other.initialization.rawValue),
            ("time_spec_init", "\(timeSpecInit)", "\(other.timeSpecInit)"),
            ("guidance_interval", "\(guidanceInterval)", "\(other.guidanceInterval)"),
            ("in_context", "\(inContext)", "\(other.inContext)"),
        ]
        for (name, a, b) in fields where a != b { return "\(name) \(a) vs \(b)" }
        return nil
    }
}
