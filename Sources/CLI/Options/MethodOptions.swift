import NN
import TVM
import Formats

/// The guidance options of MeanFlow and iMF on images, in `tvm train`'s help.
let meanFlowGuidanceHelp = """
  --method meanflow trains guidance in (no guidance input, 1 NFE samples it): --cfg W is the effective scale
  omega / (1 - kappa) with --cfg-kappa K (default 0.5, the official omega 1 at W = 2), applied where t lies in
  --cfg-interval LO,HI (default 0,1). --method imf feeds omega to the DiT's guidance input: drawn per row
  log-uniformly in --cfg-range (default 1,8; --cfg W fixes it), and --sample-cfg chooses it when sampling; its
  DiT also takes the interval where guidance acts, drawn per row (start in [0, 0.5], end in [0.5, 1]), which
  --sample-cfg-interval LO,HI chooses for the grids and FID (default 0,1: everywhere).
"""

/// The options only MeanFlow reads.
let meanFlowOptionNames: Set<String> = ["cfg-kappa", "cfg-interval"]
/// The options only iMF reads.
let improvedMeanFlowOptionNames: Set<String> = ["sample-cfg-interval"]

/// A guidance interval `LO,HI` with 0 <= LO <= HI <= 1, given as `flag`.
func parseGuidanceInterval(_ text: String, flag: String) throws -> ClosedRange<Double> {
    let p = commaSeparated(text).map { Double($0) }
    guard p.count == 2, let lo = p[0], let hi = p[1], lo >= 0, lo <= hi, hi <= 1 else {
        throw CLIError("--\(flag) must be LO,HI with 0 <= LO <= HI <= 1, got '\(text)'", usage: true)
    }
    return lo...hi
}

/// iMF's guidance interval on a fresh image model: the DiT takes the interval as a condition and the objective
/// draws it, as the official code trains (a model read from a file keeps its own choice: an iMF network made
/// before the interval condition existed trains and samples without it). Returns the interval of the grids and
/// FID (`--sample-cfg-interval`; nil: the whole interval).
func applyGuidanceInterval(_ a: Arguments, method: Method, model: inout DiTConfig, fresh: Bool,
                           into config: inout TrainConfig) throws -> ClosedRange<Double>? {
    guard method == .improvedMeanFlow else {
        if a.string("sample-cfg-interval") != nil { throw CLIError("--sample-cfg-interval is an option of --method imf", usage: true) }
        return nil
    }
    if fresh { model.guidanceInterval = model.numClasses > 0 }
    config.improvedMeanFlow.interval = model.guidanceInterval ? ImprovedMeanFlowObjective.IntervalDraw() : nil
    guard let text = a.string("sample-cfg-interval") else { return nil }
    guard model.guidanceInterval else {
        throw CLIError("--sample-cfg-interval: the model has no guidance-interval input (class-conditional iMF models made by this version have)",
                       usage: true)
    }
    return try parseGuidanceInterval(text, flag: "sample-cfg-interval")
}

/// Applies MeanFlow's or iMF's guidance settings from the parsed `scale` (`--cfg` or `--cfg-range`) and the
/// MeanFlow options; for them `config.guidance` keeps only the label dropout (no guidance draw, no kappa scaling).
/// Returns the settings for the run's description.
func applyMethodGuidance(_ a: Arguments, method: Method, scale: GuidanceConfig.Scale, labelDropout: Double,
                         into config: inout TrainConfig) throws -> [(String, JSONValue)] {
    guard method == .meanFlow || method == .improvedMeanFlow else {
        if let flag = meanFlowOptionNames.sorted().first(where: { a.string($0) != nil }) {
            throw CLIError("--\(flag) is an option of --method meanflow", usage: true)
        }
        return []
    }
    config.guidance = GuidanceConfig(scale: .off, labelDropout: labelDropout, scaledParameterization: false)
    if method == .improvedMeanFlow {
        if let flag = meanFlowOptionNames.sorted().first(where: { a.string($0) != nil }) {
            throw CLIError("--\(flag) is an option of --method meanflow; iMF takes --cfg-range", usage: true)
        }
        switch scale {
        case .constant(let w): config.improvedMeanFlow.guidanceRange = w...w
        case .uniform(let lo, let hi): config.improvedMeanFlow.guidanceRange = lo...hi
        default: preconditionFailure("image training always has a guidance scale")
        }
        return []
    }
    guard case .constant(let w) = scale else {
        throw CLIError("--method meanflow trains one guidance scale: give --cfg W, not --cfg-range", usage: true)
    }
    let kappa = try a.double("cfg-kappa", default: 0.5, range: 0...0.999)
    config.meanFlow.setGuidance(scale: w, kappa: kappa)
    if let text = a.string("cfg-interval") {
        config.meanFlow.guidanceInterval = try parseGuidanceInterval(text, flag: "cfg-interval")
    }
    let interval = config.meanFlow.guidanceInterval
    return [("cfg_kappa", .number(kappa)), ("cfg_interval", .string("\(interval.lowerBound),\(interval.upperBound)"))]
}

/// `--time-sampler`, in `tvm train`'s help.
let timeSamplerHelp = """
  --time-sampler X,..  the training times, logit-normal draws (docs/METHODS.md): TVM MU_S,SIGMA_S,MU_G,SIGMA_G
                    (default -0.4,1,-0.8,1: s and the gap), MeanFlow and iMF MU,SIGMA[,EQUAL] (default -0.4,1 and
                    the share of rows with r = t, 0.75 and 0.5), flow matching MU,SIGMA (default -0.4,1)
"""

/// Reads `--time-sampler` into the sampler of `config.method`; returns the draw's settings for the run's description.
func applyTimeSampler(_ a: Arguments, into config: inout TrainConfig) throws -> [(String, JSONValue)] {
    let shape: String
    var values: [Double]
    switch config.method {
    case .tvm:
        let g = config.timeSampler
        (shape, values) = ("MU_S,SIGMA_S,MU_G,SIGMA_G", [g.muS, g.sigmaS, g.muG, g.sigmaG])
    case .meanFlow, .improvedMeanFlow:
        let m = config.method == .meanFlow ? config.meanFlow.times : config.improvedMeanFlow.times
        (shape, values) = ("MU,SIGMA[,EQUAL]", [m.mu, m.sigma, m.fractionEqual])
    case .flowMatching:
        (shape, values) = ("MU,SIGMA", [config.flowMatching.mu, config.flowMatching.sigma])
    }
    // Read with the method's defaults as its default, so that config.json records the draw either way.
    let text = a.string("time-sampler", default: values.map { "\($0)" }.joined(separator: ","))
    let given = commaSeparated(text).compactMap { Double($0) }
    let count = shape.split(separator: ",").count, optional = shape.contains("[") ? 1 : 0
    // Means and widths of logit-normal draws: beyond 10 the sigmoid puts every time at 0 or 1.
    let inRange = given.enumerated().allSatisfy { i, x in
        i == 2 && optional == 1 ? (0...1).contains(x) : i % 2 == 0 ? abs(x) <= 10 : x > 0 && x <= 10
    }
    guard (count - optional...count).contains(given.count), given.count == commaSeparated(text).count, inRange else {
        throw CLIError("--time-sampler for --method \(config.method.rawValue) is \(shape) (means within +-10, widths in (0, 10]"
                       + (optional == 1 ? ", EQUAL in [0, 1]" : "") + "), got '\(text)'", usage: true)
    }
    values.replaceSubrange(0..<given.count, with: given)
    switch config.method {
    case .tvm: (config.timeSampler.muS, config.timeSampler.sigmaS, config.timeSampler.muG, config.timeSampler.sigmaG) =
        (values[0], values[1], values[2], values[3])
    case .meanFlow: (config.meanFlow.times.mu, config.meanFlow.times.sigma, config.meanFlow.times.fractionEqual) = (values[0], values[1], values[2])
    case .improvedMeanFlow:
        (config.improvedMeanFlow.times.mu, config.improvedMeanFlow.times.sigma, config.improvedMeanFlow.times.fractionEqual) =
            (values[0], values[1], values[2])
    case .flowMatching: (config.flowMatching.mu, config.flowMatching.sigma) = (values[0], values[1])
    }
    return [("time_sampler", .string(values.map { "\($0)" }.joined(separator: ",")))]
}
