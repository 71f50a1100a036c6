import TensorCore
import NN
import Formats

/// A training state of the official code (`training-state-*.pt`, written by `torch.save` as a ZIP archive): the
/// student `net`, the evaluation EMA `ema`, the TVM teacher `ema_target`, and AdamW's `optimizer_state`, mapped to
/// this project's trainer so that `tvm train --resume-from FILE.pt` continues the run.
///
/// AdamW's state dict numbers the parameters in the order of `net.parameters()` (its `param_groups` list the
/// numbers); each number with a state has `step`, `exp_avg` and `exp_avg_sq`. Parameters without a state (the
/// fixed position embedding, which has no gradient) get zero moments, as this project's AdamW starts them.
public struct OfficialTrainingState {
    public let student: OfficialNetwork
    public let ema: OfficialNetwork
    public let teacher: OfficialNetwork
    /// AdamW's step count (equal for every parameter with a state; 0 when none has one yet).
    public let optimizerStep: Int
    /// First and second moments under the DiT's parameter names, zeros where the file has none.
    public let adamM: ParameterSet
    public let adamV: ParameterSet
    /// The settings of the optimizer that wrote the file.
    public let learningRate: Double
    public let beta1: Double
    public let beta2: Double
    public let eps: Double
    public let weightDecay: Double

    public var config: DiTConfig { student.config }

    /// Reads and checks a training state: the three networks (one architecture), and an AdamW state whose moments
    /// have their parameters' shapes. Throws a one-line `ModelError`.
    public static func read(path: String, on device: Device = .default) throws -> OfficialTrainingState {
        let file: TorchPickle
        do { file = try TorchPickle.read(path: path) } catch let e as FormatError { throw ModelError(e.message) }
        return try OfficialTrainingState(file, on: device)
    }

    init(_ file: TorchPickle, on device: Device) throws {
        func fail(_ s: String) -> ModelError { ModelError("\(file.source): \(s)") }
        student = try OfficialNetwork(file, key: "net", on: device)
        ema = try OfficialNetwork(file, key: "ema", on: device)
        teacher = try OfficialNetwork(file, key: "ema_target", on: device)
        for other in [ema, teacher] {
            if let diff = other.config.firstDifference(from: student.config) {
                throw fail("\(other.key) and net are different models (\(other.key) vs net: \(diff))")
            }
            guard other.scaledParameterization == student.scaledParameterization else {
                throw fail("\(other.key) and net differ in do_scale_param")
            }
        }
        guard let optimizer = file.root["optimizer_state"] else { throw fail("no \"optimizer_state\"") }
        let adam = try AdamState(optimizer, file: file, order: student.parameterOrder, shapes: Dictionary(
            uniqueKeysWithValues: student.parameters.pairs.map { ($0.0, $0.1.shape) }))
        optimizerStep = adam.step
        (learningRate, beta1, beta2, eps, weightDecay) = (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weightDecay)
        let m = ParameterSet(), v = ParameterSet()
        for (name, t) in student.parameters.pairs {
            m[name] = adam.moments[name].map { Tensor($0.m, shape: t.shape, on: device) } ?? t.zerosLike()
            v[name] = adam.moments[name].map { Tensor($0.v, shape: t.shape, on: device) } ?? t.zerosLike()
        }
        adamM = m
        adamV = v
    }

    /// Puts the state into `trainer`, whose model and scaled parameterization must be the file's: student, teacher
    /// and evaluation EMA (extra EMAs start from the student), AdamW's moments and step; the run's step count
    /// becomes AdamW's. The random stream is the trainer's own (the file has none), and the optimizer keeps the
    /// trainer's settings: compare them with `learningRate`, `beta1`, ... to warn about a change.
    public func restore(into trainer: Trainer<DiT>) throws {
        if let diff = config.firstDifference(from: trainer.net.config) {
            throw ModelError("the official training state is another model than this run's (file vs run: \(diff))")
        }
        guard trainer.config.guidance.scaledParameterization == student.scaledParameterization else {
            throw ModelError("the official training state has do_scale_param \(student.scaledParameterization ? "on" : "off"), "
                             + "this run has the scaled parameterization \(student.scaledParameterization ? "off" : "on")")
        }
        trainer.restore(step: optimizerStep, rng: trainer.rng, student: student.parameters, teacher: teacher.parameters,
                        ema: ema.parameters, extraEMAs: Array(repeating: nil, count: trainer.extraEMAs.count), optimizerStep: optimizerStep,
                        m: adamM, v: adamV)
    }
}

/// `torch.optim.AdamW.state_dict()` as pickled: `{'state': {index: {'step', 'exp_avg', 'exp_avg_sq'}},
/// 'param_groups': [{'lr', 'betas', 'eps', 'weight_decay', 'amsgrad', ..., 'params': [index, ...]}]}`.
struct AdamState {
    var step = 0
    var lr = 0.0, beta1 = 0.0, beta2 = 0.0, eps = 0.0, weightDecay = 0.0
    var moments: [String: (m: [Float], v: [Float])] = [:]

    /// `order` names the parameters in `net.parameters()` order; `shapes` gives each one's shape.
    init(_ value: PickleValue, file: TorchPickle, order: [String], shapes: [String: [Int]]) throws {
        func fail(_ s: String) -> ModelError { ModelError("\(file.source): optimizer_state: \(s)") }
        guard let groups = value["param_groups"]?.list, !groups.isEmpty, let states = value["state"]?.dictionary else {
            throw fail("not an optimizer state dict (no 'state' and 'param_groups')")
        }
        var indices: [Int] = []
        var settings: [Double]?
        for group in groups {
            guard let params = group["params"]?.list?.map(\.int), params.allSatisfy({ $0 != nil }) else {
                throw fail("a parameter group has no list of parameter numbers")
            }
            indices += params.map { $0! }
            guard let lr = group["lr"]?.double, let betas = group["betas"]?.tuple?.compactMap(\.double), betas.count == 2,
                  let eps = group["eps"]?.double, let decay = group["weight_decay"]?.double else {
                throw fail("a parameter group lacks lr, betas, eps or weight_decay: not AdamW's")
            }
            guard group["amsgrad"]?.bool != true, group["maximize"]?.bool != true else {
                throw fail("amsgrad or maximize is on; this project's AdamW has neither")
            }
            let these = [lr, betas[0], betas[1], eps, decay]
            guard settings == nil || settings == these else { throw fail("parameter groups with different settings are not supported") }
            settings = these
        }
        (lr, beta1, beta2, eps, weightDecay) = (settings![0], settings![1], settings![2], settings![3], settings![4])
        guard indices.count == order.count, Set(indices).count == indices.count else {
            throw fail("the parameter groups number \(indices.count) parameters (\(Set(indices).count) different); "
                       + "the network has \(order.count)")
        }
        let nameOf = Dictionary(uniqueKeysWithValues: zip(indices, order))
        var steps = Set<Int>()
        for (key, state) in states {
            guard let index = key.int, let name = nameOf[index] else { throw fail("a state for \(key.summary), which no group lists") }
            let what = "optimizer_state.state[\(index)] (\(name))"
            guard let stepValue = state["step"], let m = state["exp_avg"], let v = state["exp_avg_sq"] else {
                throw fail("\(what) lacks step, exp_avg or exp_avg_sq")
            }
            let step: Double
            do {
                // `step` is a float32 scalar tensor since PyTorch 1.12, a number before.
                step = try stepValue.double ?? file.tensor(stepValue, what: what + ".step").doubles().first ?? -1
                let tm = try file.tensor(m, what: what + ".exp_avg"), tv = try file.tensor(v, what: what + ".exp_avg_sq")
                guard tm.shape == shapes[name], tv.shape == shapes[name] else {
                    throw fail("\(what) has moments of shape \(Checkpoint.shapeText(tm.shape)) and \(Checkpoint.shapeText(tv.shape)), "
                               + "the parameter is \(Checkpoint.shapeText(shapes[name] ?? []))")
                }
                let mv = tm.floats(), vv = tv.floats()
                guard mv.allSatisfy(\.isFinite), vv.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                    throw fail("\(what) holds non-finite moments or a negative second moment")
                }
                moments[name] = (mv, vv)
            } catch let e as FormatError { throw ModelError(e.message) }
            guard step >= 0, step == step.rounded(), step < 1e15 else { throw fail("\(what) has the step \(step)") }
            steps.insert(Int(step))
        }
        guard steps.count <= 1 else { throw fail("the parameters are at different steps \(steps.sorted())") }
        step = steps.first ?? 0
    }
}
