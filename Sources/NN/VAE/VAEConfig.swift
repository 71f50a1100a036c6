import Formats

/// The structure of a diffusers `AutoencoderKL` as Stability's SD-VAE uses it, read from its `config.json`.
///
/// Only the fields that shape the network are kept. A field the file leaves out takes diffusers' default, as
/// `from_pretrained` does; fields that do not change what encode and decode compute (`scaling_factor`,
/// `sample_size`, `force_upcast`, ...) are ignored.
public struct VAEConfig: Equatable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    /// Output width of each encoder block, first to last; the decoder walks them in reverse.
    public var blockOutChannels: [Int]
    /// Resnets per encoder block; decoder blocks have one more.
    public var layersPerBlock: Int
    public var latentChannels: Int
    public var normGroups: Int
    /// The 1x1 convolution after the encoder (`quant_conv`) and before the decoder (`post_quant_conv`).
    public var useQuantConv: Bool
    public var usePostQuantConv: Bool
    /// Whether the encoder's and decoder's mid blocks hold their self-attention.
    public var midBlockAttention: Bool

    public init(inChannels: Int = 3, outChannels: Int = 3, blockOutChannels: [Int], layersPerBlock: Int,
                latentChannels: Int = 4, normGroups: Int, useQuantConv: Bool = true, usePostQuantConv: Bool = true,
                midBlockAttention: Bool = true) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.blockOutChannels = blockOutChannels
        self.layersPerBlock = layersPerBlock
        self.latentChannels = latentChannels
        self.normGroups = normGroups
        self.useQuantConv = useQuantConv
        self.usePostQuantConv = usePostQuantConv
        self.midBlockAttention = midBlockAttention
    }

    /// Stability's SD-VAE (`stabilityai/sd-vae-ft-ema` and `-mse`).
    public static let stableDiffusion = VAEConfig(blockOutChannels: [128, 256, 512, 512], layersPerBlock: 2, normGroups: 32)

    /// How much smaller the latents are than the images, per side: every encoder block but the last halves them.
    public var downsamplingFactor: Int { 1 << (blockOutChannels.count - 1) }

    /// Every count positive and within reason, and the group norms' group count dividing every width they see.
    public func validate() throws {
        func check(_ ok: Bool, _ what: String) throws { if !ok { throw ModelError(what) } }
        let limit = 1 << 16
        try check((1...limit).contains(inChannels), "in_channels must be in 1...\(limit), got \(inChannels)")
        try check((1...limit).contains(outChannels), "out_channels must be in 1...\(limit), got \(outChannels)")
        try check((1...limit).contains(latentChannels), "latent_channels must be in 1...\(limit), got \(latentChannels)")
        try check((1...16).contains(blockOutChannels.count), "block_out_channels must hold 1 to 16 widths, got \(blockOutChannels.count)")
        try check(blockOutChannels.allSatisfy { (1...limit).contains($0) }, "block_out_channels must be in 1...\(limit), got \(blockOutChannels)")
        try check((1...64).contains(layersPerBlock), "layers_per_block must be in 1...64, got \(layersPerBlock)")
        try check(normGroups >= 1, "norm_num_groups must be positive, got \(normGroups)")
        if let w = blockOutChannels.first(where: { $0 % normGroups != 0 }) {
            throw ModelError("norm_num_groups \(normGroups) does not divide the block width \(w)")
        }
    }

    /// Reads and validates `config.json`; errors name `path`.
    public static func read(path: String) throws -> VAEConfig {
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try parse(bytes, source: path)
    }

    /// Parses the JSON text of a diffusers `config.json`; `source` names it in errors.
    public static func parse(_ bytes: [UInt8], source: String) throws -> VAEConfig {
        func fail(_ what: String) -> ModelError { ModelError("\(source): \(what)") }
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch { throw fail("not valid JSON: \(error)") }
        guard json.object != nil else { throw fail("not a JSON object") }
        if let name = json["_class_name"], name.string != "AutoencoderKL" {
            throw fail("_class_name is \(name.serialized()), expected \"AutoencoderKL\"")
        }
        // A key that is absent or null takes diffusers' default.
        func field(_ key: String) -> JSONValue? { json[key].flatMap { $0.isNull ? nil : $0 } }
        func int(_ key: String, default d: Int) throws -> Int {
            guard let v = field(key) else { return d }
            guard let i = v.int else { throw fail("\"\(key)\" must be a whole number, got \(v.serialized())") }
            return i
        }
        func bool(_ key: String, default d: Bool) throws -> Bool {
            guard let v = field(key) else { return d }
            guard let b = v.bool else { throw fail("\"\(key)\" must be true or false, got \(v.serialized())") }
            return b
        }
        func list<T>(_ key: String, default d: [T], of kind: String, _ element: (JSONValue) -> T?) throws -> [T] {
            guard let v = field(key) else { return d }
            guard let items = v.array else { throw fail("\"\(key)\" must be a list of \(kind), got \(v.serialized())") }
            let values = items.compactMap(element)
            guard values.count == items.count else { throw fail("\"\(key)\" must be a list of \(kind), got \(v.serialized())") }
            return values
        }
        let widths = try list("block_out_channels", default: [64], of: "whole numbers") { $0.int }
        for (key, expected) in [("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")] {
            let types = try list(key, default: [expected], of: "block type names") { $0.string }
            if let other = types.first(where: { $0 != expected }) {
                throw fail("\"\(key)\" holds \(quoted(other)); only \(expected) is supported")
            }
            guard types.count == widths.count else {
                throw fail("\"\(key)\" has \(types.count) blocks but \"block_out_channels\" has \(widths.count)")
            }
        }
        if let act = field("act_fn"), act.string != "silu" && act.string != "swish" {
            throw fail("\"act_fn\" is \(act.serialized()); only \"silu\" (or its alias \"swish\") is supported")
        }
        let config = VAEConfig(inChannels: try int("in_channels", default: 3), outChannels: try int("out_channels", default: 3),
                               blockOutChannels: widths, layersPerBlock: try int("layers_per_block", default: 1),
                               latentChannels: try int("latent_channels", default: 4),
                               normGroups: try int("norm_num_groups", default: 32),
                               useQuantConv: try bool("use_quant_conv", default: true),
                               usePostQuantConv: try bool("use_post_quant_conv", default: true),
                               midBlockAttention: try bool("mid_block_add_attention", default: true))
        do { try config.validate() } catch let e as ModelError { throw fail(e.message) }
        return config
    }
}
