// Reverse mode (a tape of nodes walked backwards) and forward mode (tangents carried beside values),
// composed the way TVM needs: a primitive's JVP rule is written with ordinary tensor ops, so the tangent
// a `jvp` returns is itself recorded on the tape and gradients of anything computed from it flow back
// through the JVP into the parameters (reverse over forward, what torch.func.jvp + autograd gives).

/// Identity of a differentiation leaf; aliases of one leaf (made by `jvp`) share it.
final class LeafID {}

enum GradSource {
    case leaf(LeafID)
    case node(Node, Int)
}

/// Cotangents of the outputs to cotangents of the inputs (nil: zero). Runs with recording off.
/// Rules receive the outputs as arguments and must not capture output tensors (that would make a cycle).
public typealias VJPRule = (_ inputs: [Tensor], _ outputs: [Tensor], _ cotangents: [Tensor?]) -> [Tensor?]
/// A VJP rule that also receives, per input, the gradient already summed for it (`partials`, nil: none yet) and
/// returns each input's cotangent with that partial added: the kernel that makes a new term adds the sum so far
/// in the same pass, where a separate sum would read both and write again. A rule that returns nil for an input
/// leaves its partial as it was.
public typealias AccumulatingVJPRule = (_ inputs: [Tensor], _ outputs: [Tensor], _ cotangents: [Tensor?],
                                        _ partials: [Tensor?]) -> [Tensor?]

/// How a node turns output cotangents into input cotangents.
enum BackwardRule {
    case plain(VJPRule)
    case accumulating(AccumulatingVJPRule)
}
/// Tangents of the inputs to tangents of the outputs (nil: zero). Written with differentiable ops.
public typealias JVPRule = (_ inputs: [Tensor], _ outputs: [Tensor], _ tangents: [Tensor?]) -> [Tensor?]

final class Node {
    let name: String
    /// The inputs as the VJP rule sees them: values it reads, shape-only stand-ins for the rest. Both carry
    /// the input's gradient source, which is what links the graph.
    private(set) var inputs: [Tensor]
    /// Detached outputs (same storage) when the rule reads them, else shape-only stand-ins.
    private(set) var outputs: [Tensor]
    let outputCount: Int
    let vjp: BackwardRule
    init(name: String, inputs: [Tensor], outputs: [Tensor], vjp: BackwardRule) {
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.outputCount = outputs.count
        self.vjp = vjp
    }

    /// Drops what the node saved once its rule has run, so backward frees activations as it goes.
    func release() {
        inputs = []
        outputs = []
    }
}

/// Storage that has a size but no memory: stands in for tensors a rule does not read (their values can be
/// freed as soon as nothing else needs them). A kernel given one fails loudly.
final class ShapeOnlyStorage: Storage {}

extension Tensor {
    /// The same shape, dtype, device and gradient source, without the values.
    func shapeOnly() -> Tensor {
        if storage is ShapeOnlyStorage { return self }
        let t = Tensor(storage: ShapeOnlyStorage(count: count, dtype: dtype, backend: backend), shape: shape)
        t.gradSource = gradSource
        return t
    }

    /// What a node keeps of an input whose values its rule reads: the tensor itself, or, where its values can be
    /// remade (`recompute`), a shape-only stand-in that carries the recipe.
    func savedForBackward() -> Tensor {
        guard let recompute, !(storage is ShapeOnlyStorage) else { return self }
        let t = shapeOnly()
        t.recompute = recompute
        return t
    }

    /// What a node keeps of an input its rule reads only as a matrix product's operand. Where the values could be
    /// remade (no other node keeps them) and the backend's products read a narrower copy of float32 operands
    /// (`ProductOperandBackend`: the GPU's bf16 products), just that copy: the product in backward reads what it
    /// would have read anyway, nothing is remade, and the float32 values go with the forward pass. Otherwise as
    /// `savedForBackward`.
    func savedAsProductOperand() -> Tensor {
        guard recompute != nil, !(storage is ShapeOnlyStorage), let products = backend as? any ProductOperandBackend,
              let copy = products.keepingOperandCopyOnly(storage) else { return savedForBackward() }
        let t = Tensor(storage: copy, shape: shape)
        t.gradSource = gradSource
        return t
    }

    /// A saved input as a rule reads it: a stand-in with a recipe gets its values made again.
    func remade() -> Tensor {
        guard let recompute, storage is ShapeOnlyStorage else { return self }
        let t = Tensor(storage: recompute(), shape: shape)
        t.gradSource = gradSource
        return t
    }
}

/// Whether ops record the tape. Off inside `withoutGrad`, and while running VJP rules.
public enum GradMode {
    nonisolated(unsafe) static var enabled = true

    public static var isEnabled: Bool { enabled }
}

/// Runs `body` without recording gradients (teacher passes, sampling, optimizer updates).
public func withoutGrad<R>(_ body: () throws -> R) rethrows -> R {
    let saved = GradMode.enabled
    GradMode.enabled = false
    defer { GradMode.enabled = saved }
    return try body()
}

enum ForwardMode {
    /// The JVP in progress (nil: none). Tangents of other sessions are stale and ignored.
    nonisolated(unsafe) static var session: UInt64?
    nonisolated(unsafe) static var lastSession: UInt64 = 0
}

extension Tensor {
    /// The tangent of this tensor in the JVP in progress, if any.
    var activeTangent: Tensor? {
        guard let s = ForwardMode.session, tangentSession == s else { return nil }
        return tangent
    }
}

/// Whether a primitive with these inputs is differentiated in either mode: `record` would put it on the tape
/// (gradients are being recorded and an input has a gradient source) or give its outputs tangents (an input
/// carries one in the JVP in progress). Where it is not, an op may take a fused path that has no rules.
func isDifferentiated(_ inputs: [Tensor]) -> Bool {
    recordsGradient(inputs) || inputs.contains { $0.activeTangent != nil }
}

private func recordsGradient(_ inputs: [Tensor]) -> Bool {
    GradMode.enabled && inputs.contains { $0.gradSource != nil }
}

/// Registers the outputs of a primitive with both modes. `outputs` are fresh tensors from kernels.
/// `saves` lists the inputs whose values the VJP rule reads (nil: all) and `savesOutputs` whether it reads the
/// outputs: everything else is kept as shape only, so memory is freed as soon as the forward pass moves on.
/// `productOperands` lists the saved inputs the rule reads only as matrix product operands
/// (`Tensor.savedAsProductOperand`).
@discardableResult
func record(_ name: String, inputs: [Tensor], outputs: [Tensor], saves: [Int]? = nil, savesOutputs: Bool = true,
            jvp: JVPRule?, vjp: @escaping VJPRule) -> [Tensor] {
    record(name, inputs: inputs, outputs: outputs, saves: saves, savesOutputs: savesOutputs, jvp: jvp, rule: .plain(vjp))
}

private func record(_ name: String, inputs: [Tensor], outputs: [Tensor], saves: [Int]?, productOperands: [Int] = [],
                    savesOutputs: Bool, jvp: JVPRule?, rule vjp: BackwardRule) -> [Tensor] {
    if recordsGradient(inputs) {
        let kept = inputs.enumerated().map { i, x in
            guard saves == nil || saves!.contains(i) else { return x.shapeOnly() }
            return productOperands.contains(i) ? x.savedAsProductOperand() : x.savedForBackward()
        }
        let node = Node(name: name, inputs: kept,
                        outputs: outputs.map { savesOutputs ? $0.detached() : $0.shapeOnly() }, vjp: vjp)
        for (i, o) in outputs.enumerated() { o.gradSource = .node(node, i) }
    }
    if let session = ForwardMode.session {
        let tangents = inputs.map { $0.activeTangent }
        if tangents.contains(where: { $0 != nil }) {
            guard let jvp else { fatalError("\(name) has no forward-mode rule") }
            ForwardMode.session = nil
            let out = jvp(inputs, outputs, tangents)
            ForwardMode.session = session
            for (o, t) in zip(outputs, out) {
                o.tangent = t
                o.tangentSession = session
            }
        }
    }
    return outputs
}

func record1(_ name: String, _ inputs: [Tensor], _ output: Tensor, saves: [Int]? = nil, productOperands: [Int] = [],
             savesOutputs: Bool = true, jvp: JVPRule?, vjp: @escaping VJPRule) -> Tensor {
    record(name, inputs: inputs, outputs: [output], saves: saves, productOperands: productOperands, savesOutputs: savesOutputs,
           jvp: jvp, rule: .plain(vjp))[0]
}

func record1(_ name: String, _ inputs: [Tensor], _ output: Tensor, saves: [Int]? = nil, productOperands: [Int] = [],
             savesOutputs: Bool = true, jvp: JVPRule?, accumulatingVJP vjp: @escaping AccumulatingVJPRule) -> Tensor {
    record(name, inputs: inputs, outputs: [output], saves: saves, productOperands: productOperands, savesOutputs: savesOutputs,
           jvp: jvp, rule: .accumulating(vjp))[0]
}

/// Registers a primitive whose kernel computed its `output` and that output's `tangent` in one pass, from `inputs`
/// and their `tangents` (one per input, zeros where an input has none) in the JVP in progress: one node of
/// inputs + tangents with the two outputs, whose VJP takes the cotangents of both (so gradients flow back through
/// the tangent), and `output` carries `tangent` in the JVP. Forward mode over the tangent (nested) is not supported.
func recordWithTangent(_ name: String, inputs: [Tensor], tangents: [Tensor], output: Tensor, tangent: Tensor,
                       vjp: @escaping VJPRule) -> Tensor {
    guard let session = ForwardMode.session else { preconditionFailure("\(name): no JVP in progress") }
    precondition(inputs.count == tangents.count, "\(name): one tangent per input")
    // Recorded outside the session: the tangent is already computed, so no forward-mode rule runs.
    ForwardMode.session = nil
    defer { ForwardMode.session = session }
    let outputs = record(name, inputs: inputs + tangents, outputs: [output, tangent], saves: nil, savesOutputs: false,
                         jvp: nil, rule: .plain(vjp))
    outputs[0].tangent = outputs[1]
    outputs[0].tangentSession = session
    return outputs[0]
}

// MARK: - Transforms

/// Forward mode: the outputs of `f` at `primals` and their directional derivatives along `tangents`.
/// The returned tangents are ordinary differentiable tensors (gradients flow through them).
public func jvp(_ f: ([Tensor]) -> [Tensor], primals: [Tensor], tangents: [Tensor]) -> (outputs: [Tensor], tangents: [Tensor]) {
    precondition(ForwardMode.session == nil, "nested jvp is not supported")
    precondition(primals.count == tangents.count, "jvp needs one tangent per primal")
    ForwardMode.lastSession += 1
    let session = ForwardMode.lastSession
    let inputs = zip(primals, tangents).map { p, t -> Tensor in
        precondition(p.shape == t.shape, "tangent shape \(t.shape) differs from primal shape \(p.shape)")
        let alias = Tensor(storage: p.storage, shape: p.shape)
        alias.gradSource = p.gradSource
        alias.tangent = t
        alias.tangentSession = session
        return alias
    }
    ForwardMode.session = session
    let outputs = f(inputs)
    ForwardMode.session = nil
    let outTangents = outputs.map { o in o.tangentSession == session ? (o.tangent ?? o.zerosLike()) : o.zerosLike() }
    return (outputs, outTangents)
}

/// Reverse mode: gradients of `output` (seeded with `seed`, default ones) with respect to each of `wrt`.
/// A tensor that `output` does not depend on gets zeros. The graph is consumed (its saved tensors freed as
/// backward proceeds) unless `retainGraph`.
///
/// `ready(i, g)` is called once for each `wrt[i]` as soon as its gradient `g` is final (the same tensor that is
/// returned), which for a leaf is right after the last node that uses it: data-parallel training starts
/// averaging the last layers' gradients across processes while backward is still computing the first ones'.
/// `g` may be shared with cotangents still flowing elsewhere in the graph, so `ready` must not write into it.
///
/// `initial` (one per `wrt` entry, each a leaf) are gradients already computed elsewhere, added to these: a loss
/// whose terms are differentiated one after another (each graph freed before the next is built) gets its total
/// gradient from the last pass, and `ready` sees totals.
public func gradients(of output: Tensor, wrt: [Tensor], seed: Tensor? = nil, retainGraph: Bool = false,
                      initial: [Tensor]? = nil, ready: ((Int, Tensor) -> Void)? = nil) -> [Tensor] {
    let seed = seed ?? Tensor.ones(output.shape, dtype: output.dtype, on: output.device)
    var leafGrads: [ObjectIdentifier: Tensor] = [:]
    if let initial {
        precondition(initial.count == wrt.count, "gradients: \(initial.count) initial gradients for \(wrt.count) tensors")
        for (t, g) in zip(wrt, initial) {
            guard case .leaf(let id)? = t.gradSource else { preconditionFailure("gradients: initial gradients need leaves") }
            precondition(g.shape == t.shape, "gradients: initial gradient shape \(g.shape) differs from \(t.shape)")
            precondition(leafGrads.updateValue(g, forKey: ObjectIdentifier(id)) == nil, "gradients: a leaf listed twice")
        }
    }
    var slotGrads: [ObjectIdentifier: [Tensor?]] = [:]
    // Gradients asked for at intermediate tensors are read when their node is reached.
    var wanted: [ObjectIdentifier: [(Int, Int)]] = [:]
    var results = [Tensor?](repeating: nil, count: wrt.count)
    for (w, t) in wrt.enumerated() {
        if case .node(let n, let i)? = t.gradSource { wanted[ObjectIdentifier(n), default: []].append((i, w)) }
    }

    /// Adds g to the gradient of `source`, or (`replacing`: g already includes it) puts g in its place.
    func accumulate(_ source: GradSource?, _ g: Tensor, replacing: Bool = false) {
        switch source {
        case nil: return
        case .leaf(let id)?:
            let key = ObjectIdentifier(id)
            leafGrads[key] = replacing ? g : leafGrads[key].map { $0 + g } ?? g
        case .node(let n, let i)?:
            let key = ObjectIdentifier(n)
            var slots = slotGrads[key] ?? [Tensor?](repeating: nil, count: n.outputCount)
            slots[i] = replacing ? g : slots[i].map { $0 + g } ?? g
            slotGrads[key] = slots
        }
    }

    /// The gradients summed so far for a node's inputs, each at the first input with its source (an input listed
    /// twice gets its partial once, or it would be added twice).
    func partials(of inputs: [Tensor]) -> [Tensor?] {
        var given: [ObjectIdentifier: Set<Int>] = [:]
        return inputs.map { input in
            switch input.gradSource {
            case nil: return nil
            case .leaf(let id)?:
                let key = ObjectIdentifier(id)
                guard given[key] == nil else { return nil }
                given[key] = []
                return leafGrads[key]
            case .node(let n, let i)?:
                let key = ObjectIdentifier(n)
                guard given[key]?.contains(i) != true else { return nil }
                given[key, default: []].insert(i)
                return slotGrads[key]?[i] ?? nil
            }
        }
    }

    func final(_ w: Int) -> Tensor {
        if case .leaf(let id)? = wrt[w].gradSource, let g = leafGrads[ObjectIdentifier(id)] { return g }
        return results[w] ?? wrt[w].zerosLike()
    }
    let order = Array(topologicalOrder(from: output).reversed())
    // With `ready`: the leaves of `wrt` that become final after each node (position in `order`), the rest at the end.
    var readyAfter: [Int: [Int]] = [:]
    if ready != nil {
        var lastUse: [ObjectIdentifier: Int] = [:]
        for (n, node) in order.enumerated() {
            for input in node.inputs { if case .leaf(let id)? = input.gradSource { lastUse[ObjectIdentifier(id)] = n } }
        }
        for (w, t) in wrt.enumerated() {
            guard case .leaf(let id)? = t.gradSource, let n = lastUse[ObjectIdentifier(id)] else { continue }
            readyAfter[n, default: []].append(w)
        }
    }
    var finals = [Tensor?](repeating: nil, count: wrt.count)

    withoutGrad {
        let savedSession = ForwardMode.session
        ForwardMode.session = nil
        defer { ForwardMode.session = savedSession }
        accumulate(output.gradSource, seed)
        for (n, node) in order.enumerated() {
            defer {
                for w in readyAfter[n] ?? [] {
                    finals[w] = final(w)
                    ready?(w, finals[w]!)
                }
            }
            let key = ObjectIdentifier(node)
            guard let slots = slotGrads.removeValue(forKey: key) else { continue }
            for (i, w) in wanted[key] ?? [] { results[w] = slots[i] }
            precondition(!node.inputs.isEmpty, "\(node.name): this graph was already differentiated (use retainGraph)")
            let grads: [Tensor?], given: [Tensor?]
            let inputs = node.inputs.map { $0.remade() }
            switch node.vjp {
            case .plain(let rule):
                grads = rule(inputs, node.outputs, slots)
                given = []
            case .accumulating(let rule):
                given = partials(of: node.inputs)
                grads = rule(inputs, node.outputs, slots, given)
            }
            for (k, (input, g)) in zip(node.inputs, grads).enumerated() {
                guard let g else { continue }
                precondition(g.shape == input.shape,
                             "\(node.name): cotangent shape \(g.shape) differs from input shape \(input.shape)")
                accumulate(input.gradSource, g, replacing: k < given.count && given[k] != nil)
            }
            if !retainGraph { node.release() }
        }
    }
    return (0..<wrt.count).map { w in
        if let g = finals[w] { return g }
        let g = final(w)
        ready?(w, g)
        return g
    }
}

/// Nodes reachable from `output`, each after all nodes it depends on.
private func topologicalOrder(from output: Tensor) -> [Node] {
    guard case .node(let root, _)? = output.gradSource else { return [] }
    var order: [Node] = []
    var visited = Set<ObjectIdentifier>()
    var stack: [(Node, Int)] = [(root, 0)]
    visited.insert(ObjectIdentifier(root))
    while let (node, next) = stack.popLast() {
        if next < node.inputs.count {
            stack.append((node, next + 1))
            if case .node(let child, _)? = node.inputs[next].gradSource,
               visited.insert(ObjectIdentifier(child)).inserted {
                stack.append((child, 0))
            }
        } else {
            order.append(node)
        }
    }
    return order
}

/// The value of `f` at `xs` and its gradient with respect to each of `xs` (`f` must return a scalar).
public func valueAndGradient(_ xs: [Tensor], _ f: ([Tensor]) -> Tensor) -> (value: Tensor, gradients: [Tensor]) {
    let leaves = xs.map { $0.detached().requiringGrad() }
    let y = f(leaves)
    return (y, gradients(of: y, wrt: leaves))
}

extension Tensor {
    /// The same values, cut off from both modes of differentiation.
    public func stopGradient() -> Tensor { detached() }
}
