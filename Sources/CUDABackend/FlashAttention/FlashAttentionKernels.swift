import TensorCore

/// Operand precision of the flash kernels (their PREC): 3xTF32 (about float32, the default), TF32 (`allowTF32`),
/// bfloat16 (`bf16Products`) by mma.sync, or bfloat16 by Hopper's warpgroup products (wgmma; `bf16Products` on a
/// device whose kernels are sm_90a machine code, unless `flashWarpgroupProducts` is off).
enum FlashPrecision: Int, CaseIterable {
    case x3 = 0, tf32 = 1, bf16 = 2, wgmma = 3
    /// bfloat16 operands (tiles of 2-byte elements, two sets of inner tiles).
    var isBF16: Bool { self == .bf16 || self == .wgmma }
    /// Bytes of one shared-memory tile element.
    var elementBytes: Int { isBF16 ? 2 : 4 }
    /// A tile row's elements (the kernels' FlashPrec::ld): padded rows, or for wgmma's core matrices none.
    func pitch(_ dim: Int) -> Int {
        switch self {
        case .x3, .tf32: return dim + 4
        case .bf16: return (dim + 15) / 16 * 16 + 8
        case .wgmma: return (dim + 15) / 16 * 16
        }
    }
    /// Sets of the inner loop's tiles (the kernels' FlashPrec::STAGES): bf16 stages the next block while it
    /// multiplies the current one.
    var stages: Int { isBF16 ? 2 : 1 }
}

/// The three flash kernels of one attention call: the forward (also the backward's pre-pass), the query side and
/// the key side of the backward.
enum FlashKind: CaseIterable {
    case forward, dq, dkv

    /// Dynamic shared memory of a kernel of this kind with `rows` query (or key) rows per block, in bytes (the kernels'
    /// own SMEM formulas).
    func sharedBytes(tangent: Bool, dim: Int, precision: FlashPrecision, rows: Int, inner: Int) -> Int {
        let row = precision.pitch(dim) * precision.elementBytes, stages = precision.stages
        switch self {
        case .forward: return (rows * (tangent ? 2 : 1) + stages * inner * (tangent ? 4 : 2)) * row
        case .dq: return (rows + stages * inner) * (tangent ? 4 : 2) * row
        case .dkv: return (rows + stages * inner) * (tangent ? 4 : 2) * row + stages * inner * 16
        }
    }
}

/// What the three generated flash kernel types share: the axes of their instances in FlashAttention.cu.
protocol FlashInstance {
    var function: KernelFunction { get }
    var tangent: Bool { get }
    var dim: Int { get }
    var precision: FlashPrecision { get }
    var warps: Int { get }
    /// Row tiles of 16 per warp (the forward's axis; one in dq and dkv).
    var tiles: Int { get }
    var inner: Int { get }
}

extension FlashAttentionKernels.FlashFwd: FlashInstance {}
extension FlashAttentionKernels.FlashDq: FlashInstance {}
extension FlashAttentionKernels.FlashDkv: FlashInstance {}

extension FlashAttentionKernels.FlashDq { var tiles: Int { 1 } }
extension FlashAttentionKernels.FlashDkv { var tiles: Int { 1 } }

extension FlashAttentionKernels.FlashFwdPipelined {
    /// Its SMEM: 64 query rows and three sets of key and value tiles, in wgmma's core matrices.
    var sharedBytes: Int { (64 + 3 * 2 * inner) * FlashPrecision.wgmma.pitch(dim) * 2 }
}

extension FlashInstance {
    /// Query (or key) rows per block: 16 per row tile.
    var rows: Int { 16 * warps * tiles }
    var threads: Int { 32 * warps }
    /// Dynamic shared memory of this kernel as a `kind` kernel, in bytes.
    func sharedBytes(_ kind: FlashKind) -> Int {
        kind.sharedBytes(tangent: tangent, dim: dim, precision: precision, rows: rows, inner: inner)
    }
}

extension FlashAttentionKernels {
    /// Head dims with flash kernels (float32 only; others take the warp-per-row kernels).
    static let dims = Set(flashFwdAxes.map(\.dim))

    /// Every flash kernel's configuration with its kind, for the shared memory each needs.
    static var configurations: [(kind: FlashKind, tangent: Bool, dim: Int, precision: FlashPrecision, rows: Int, inner: Int)] {
        flashFwdAxes.map { (.forward, $0.tangent, $0.dim, $0.precision, 16 * $0.warps * $0.tiles, $0.inner) }
            + flashDqAxes.map { (.dq, $0.tangent, $0.dim, $0.precision, 16 * $0.warps, $0.inner) }
            + flashDkvAxes.map { (.dkv, $0.tangent, $0.dim, $0.precision, 16 * $0.warps, $0.inner) }
    }

    /// The most shared memory any flash kernel needs.
    static var maxSharedBytes: Int {
        configurations.map { $0.kind.sharedBytes(tangent: $0.tangent, dim: $0.dim, precision: $0.precision, rows: $0.rows,
                                                 inner: $0.inner) }.max()!
    }

    /// The instance of `kernels` for this call: the variant named ..._v<variant> where there is one
    /// (`CUDABackend.flashVariant`), else with `capped` the register-capped build where the configuration has one (its
    /// launch bounds name a block count), else the uncapped one.
    static func pick<K: FlashInstance>(_ kernels: [K], _ what: String, tangent: Bool, dim: Int, precision: FlashPrecision,
                                       capped: Bool, variant: String?) -> K {
        let all = kernels.filter { $0.tangent == tangent && $0.dim == dim && $0.precision == precision }
        if let variant, let k = all.first(where: { $0.function.name.hasSuffix("_v" + variant) }) { return k }
        let matching = all.filter { !$0.function.name.contains("_v") }
        guard let k = matching.first(where: { ($0.function.minBlocks != nil) == capped }) ?? matching.first else {
            preconditionFailure("FlashAttention.cu has no \(what) kernel for tangent \(tangent), head dim \(dim), \(precision)")
        }
        return k
    }

    /// Every kernel with its kind and instance.
    var all: [(kind: FlashKind, instance: any FlashInstance)] {
        flashFwd.map { (.forward, $0) } + flashDq.map { (.dq, $0) } + flashDkv.map { (.dkv, $0) }
    }

    /// The kernels use more than the default 48 KB of dynamic shared memory: each opts in to what it needs.
    func prepare(on backend: CUDABackend) throws {
        let functions = all.map { kind, k in (k.function, k.sharedBytes(kind)) } + flashFwdPipelined.map { ($0.function, $0.sharedBytes) }
        for (function, shared) in functions {
            try backend.driver.check(backend.driver.cuFuncSetAttribute(function.handle, Driver.funcAttrMaxDynamicSharedSize,
                                                                       Int32(shared)),
                                     "cuFuncSetAttribute(\(function.name), max dynamic shared memory \(shared) bytes)")
        }
    }
}

extension CUDABackend {
    /// Whether this GPU can run the flash kernels: tensor-core TF32 (compute capability 8.0 or newer) and
    /// enough shared memory per block for the largest of them.
    public var supportsFlashAttention: Bool {
        computeCapability.major >= 8 && maxSharedMemoryPerBlock >= FlashAttentionKernels.maxSharedBytes
    }

    /// Whether an attention call takes the flash kernels: float32, a head dim they are built for, a grid they
    /// can cover (batch * heads on the grid's y axis), every buffer 16-byte aligned (they load 16 bytes at a
    /// time; rows lie heads * dim floats apart, a multiple of 4 for the flash head dims). A buffer may hold only its
    /// bf16 copy (`lowPrecisionStorage`): the bf16 kernels read the copy (and write the output's) instead.
    func flashEligible(_ dtype: DType, _ g: AttentionGeometry, _ buffers: [Storage?]) -> Bool {
        guard useFlashAttention, dtype == .float32, FlashAttentionKernels.dims.contains(g.dim), g.batch * g.heads <= 65535,
              supportsFlashAttention else { return false }
        return buffers.allSatisfy { b in
            guard let b else { return true }
            let (f32, bf16) = float32OrBF16(b)
            return (bf16 == 0 || flashPrecision.isBF16) && (f32 | bf16) % 16 == 0
        }
    }

    /// A flash kernel's float32 operand: 0 for a storage that holds only its bf16 copy (read through `flashInputCopy`).
    private func flashFloat32(_ x: Storage?) -> DevicePointer { x.map { float32OrBF16($0).f32 } ?? 0 }

    /// The flash kernels' operand precision: bf16Products (by wgmma where it can), else allowTF32, else 3xTF32.
    var flashPrecision: FlashPrecision {
        bf16Products ? (flashWarpgroupProducts && warpgroupProducts ? .wgmma : .bf16) : allowTF32 ? .tf32 : .x3
    }

    /// Whether the kernels are machine code with Hopper's warpgroup products (sm_90a, a compute capability 9.0 device).
    var warpgroupProducts: Bool { target.cubin && target.option == NVRTC.machineCodeOption(90) }

    /// The bf16 copy of a flash kernel's input that the kernel may read instead of its float32 values (bf16 kernels
    /// only): the one the kernel that made the input wrote, or a product's, kept through this call; 0 where there is
    /// none. No copy is made here: a conversion pass costs more than the kernels' own rounding of float32 tiles,
    /// which gives the same bits.
    func flashInputCopy(_ x: Storage?) -> DevicePointer {
        guard flashPrecision.isBF16, let x, let copy = cuda(x).bf16Copy, copy.address % 16 == 0 else { return 0 }
        inCallCopies.append(ObjectIdentifier(x))
        return copy.address
    }

    /// The flash forward: o, lse and with a tangent `to` (tq, tk, tv then all given) and mu (if given), o and to with
    /// their bf16 copies.
    func flashForward(q: Storage, k: Storage, v: Storage, tangents: (q: Storage, k: Storage, v: Storage)?, o: Storage,
                      to: Storage?, lse: Storage, mu: Storage?, geometry g: AttentionGeometry) {
        let f = FlashAttentionKernels.pick(kernels(FlashAttentionKernels.self, .float32).flashFwd, "forward", tangent: to != nil,
                                           dim: g.dim, precision: flashPrecision, capped: flashRegisterCaps, variant: flashVariant)
        // The inputs' copies are claimed first, so that making the outputs' copies cannot evict them. The output and
        // its tangent feed the output projection: their bf16 copies are written here.
        beginBF16Call()
        let inputs16 = [q, k, v, tangents?.q, tangents?.k, tangents?.v].map(flashInputCopy)
        let (of, o16) = outputAndCopy(o), (tof, to16) = to.map(outputAndCopy) ?? (0, 0)
        // EXPERIMENT (to be removed once measured): the pipelined wgmma forward in place of the plain BF16 one.
        if to == nil, flashPrecision == .bf16, warpgroupProducts, flashVariant == "wgp",
           let p = kernels(FlashAttentionKernels.self, .float32).flashFwdPipelined.first(where: { $0.dim == g.dim }) {
            p.launch(on: self, grid: ((g.seq + 63) / 64, g.batch * g.heads), block: (128, 1), shared: p.sharedBytes,
                     q: flashFloat32(q), k: flashFloat32(k), v: flashFloat32(v), q16: inputs16[0], k16: inputs16[1],
                     v16: inputs16[2], o: of, lse: addr(lse), o16: o16, n: g.seq, heads: g.heads, scale: Float(g.scale))
            flashAttentionCalls += 1
            return
        }
        // go, gto, lseIn, stats: the backward's pre-pass only.
        f.launch(on: self, grid: ((g.seq + f.rows - 1) / f.rows, g.batch * g.heads), block: (f.threads, 1),
                 shared: f.sharedBytes(.forward),
                 q: flashFloat32(q), k: flashFloat32(k), v: flashFloat32(v), tq: flashFloat32(tangents?.q),
                 tk: flashFloat32(tangents?.k), tv: flashFloat32(tangents?.v),
                 q16: inputs16[0], k16: inputs16[1], v16: inputs16[2], tq16: inputs16[3], tk16: inputs16[4], tv16: inputs16[5],
                 o: of, to: tof, lse: addr(lse), mu: to == nil ? 0 : addr(mu), o16: o16, to16: to16, go: 0, gto: 0, lseIn: 0,
                 stats: 0,
                 n: g.seq, heads: g.heads, scale: Float(g.scale))
        flashAttentionCalls += 1
    }

    /// The flash backward: per-row float4 (lse, mu, rho, sum_j P dP) from the forward's saved outputs (`saved`: o, and
    /// with the tangent to and mu; a pass over rows) or else by a pre-pass that computes the forward again and stores
    /// nothing else, then the query side (dq, dtq) and the key side (dk, dv, dtk, dtv), P recomputed from lse. With
    /// `tangent`, the tangent inputs and their cotangent buffers are all given.
    func flashBackward(q: Storage, k: Storage, v: Storage, tq: Storage?, tk: Storage?, tv: Storage?, saved: AttentionForward?,
                       lse: Storage, go: Storage,
                       gto: Storage?, dq: Storage, dk: Storage, dv: Storage, dtq: Storage?, dtk: Storage?, dtv: Storage?,
                       tangent: Bool, geometry g: AttentionGeometry) {
        let set = kernels(FlashAttentionKernels.self, .float32), precision = flashPrecision, bh = g.batch * g.heads
        let rowStats = allocate(g.rows * 4, .float32)
        // q, k, v, tq, tk, tv, go, gto: their copies claimed for the call before dv's and dtv's are made.
        beginBF16Call()
        var c = [q, k, v, tq, tk, tv, go, gto].map(flashInputCopy)
        let f32 = [q, k, v, tq, tk, tv, go, gto].map(flashFloat32)
        // go and gto (the output projection's cotangents) come without copies: the statistics' pass, which reads their
        // float32 values, writes copies that dq and dkv then stage by cp.async instead of loading and rounding float32
        // tiles (dkv at every step of its loop, where those loads' latency was most of its stalls).
        let (go16, gto16) = (precision.isBF16 && c[6] == 0 ? bf16Twin(go) : 0,
                             precision.isBF16 && c[7] == 0 ? gto.map { bf16Twin($0) } ?? 0 : 0)
        if go16 != 0 { c[6] = go16 }
        if gto16 != 0 { c[7] = gto16 }
        func grid(_ rows: Int) -> (Int, Int) { ((g.seq + rows - 1) / rows, bh) }
        if let saved {
            // The outputs as float32 where they have it, else as their bf16 copies (DiT keeps them as copies alone).
            let (o, to) = (flashFloat32(saved.o), flashFloat32(saved.to))
            let (o16, to16) = (o == 0 ? flashInputCopy(saved.o) : 0, to == 0 ? flashInputCopy(saved.to) : 0)
            guard let r = set.flashRowStats.first(where: { $0.tangent == tangent && $0.dim == g.dim }) else {
                preconditionFailure("FlashAttention.cu has no flash_row_stats kernel for tangent \(tangent), head dim \(g.dim)")
            }
            r.launch(on: self, grid: ((g.rows * 4 + 255) / 256, 1), go: f32[6], gto: f32[7], o: o, to: to, o16: o16,
                     to16: to16, lse: addr(lse), mu: addr(saved.mu), stats: addr(rowStats), go16: go16, gto16: gto16,
                     n: g.seq, heads: g.heads, rows: g.rows)
        } else {
            let f = FlashAttentionKernels.pick(set.flashFwd, "forward", tangent: tangent, dim: g.dim, precision: precision,
                                               capped: flashRegisterCaps, variant: flashVariant)
            f.launch(on: self, grid: grid(f.rows), block: (f.threads, 1), shared: f.sharedBytes(.forward),
                     q: f32[0], k: f32[1], v: f32[2], tq: f32[3], tk: f32[4], tv: f32[5],
                     q16: c[0], k16: c[1], v16: c[2], tq16: c[3], tk16: c[4], tv16: c[5],
                     o: 0, to: 0, lse: 0, mu: 0, o16: go16, to16: gto16, go: f32[6], gto: f32[7], lseIn: addr(lse),
                     stats: addr(rowStats), n: g.seq, heads: g.heads, scale: Float(g.scale))
        }
        let fq = FlashAttentionKernels.pick(set.flashDq, "dq", tangent: tangent, dim: g.dim, precision: precision,
                                            capped: flashRegisterCaps, variant: flashVariant)
        fq.launch(on: self, grid: grid(fq.rows), block: (fq.threads, 1), shared: fq.sharedBytes(.dq),
                  q: f32[0], k: f32[1], v: f32[2], tq: f32[3], tk: f32[4], tv: f32[5], go: f32[6], gto: f32[7],
                  q16: c[0], k16: c[1], v16: c[2], tq16: c[3], tk16: c[4], tv16: c[5], go16: c[6], gto16: c[7],
                  stats: addr(rowStats), dq: addr(dq), dtq: addr(dtq), n: g.seq, heads: g.heads, scale: Float(g.scale))
        let fk = FlashAttentionKernels.pick(set.flashDkv, "dkv", tangent: tangent, dim: g.dim, precision: precision,
                                            capped: flashRegisterCaps, variant: flashVariant)
        // EXPERIMENT (to be removed once measured): dk, dtk and dv, dtv by two kernels (flash_bwd_dkv_impl's PART).
        let split = flashVariant == "split"
            ? set.flashDkv.filter { $0.tangent == tangent && $0.dim == g.dim && $0.precision == precision && $0.part != 0 } : []
        // dv and dtv are the v projection's output cotangents, read by its backward products.
        let (dv16, dtv16) = (bf16Twin(dv), dtv.map { bf16Twin($0) } ?? 0)
        for k in split.count == 2 ? split : [fk] {
            k.launch(on: self, grid: grid(k.rows), block: (k.threads, 1), shared: k.sharedBytes(.dkv),
                     q: f32[0], k: f32[1], v: f32[2], tq: f32[3], tk: f32[4], tv: f32[5], go: f32[6], gto: f32[7],
                     q16: c[0], k16: c[1], v16: c[2], tq16: c[3], tk16: c[4], tv16: c[5], go16: c[6], gto16: c[7],
                     stats: addr(rowStats), dk: addr(dk), dv: addr(dv), dtk: addr(dtk), dtv: addr(dtv), dv16: dv16, dtv16: dtv16,
                     n: g.seq, heads: g.heads, scale: Float(g.scale))
        }
        flashAttentionCalls += 1
    }

    /// The flash kernels' resources, one line each: registers and local (spilled) bytes per thread, dynamic
    /// shared memory per block, threads per block and blocks per multiprocessor (occupancy). Builds them.
    public func flashResourceReport() -> [String] {
        guard supportsFlashAttention else { return ["flash attention not supported on this GPU"] }
        return kernels(FlashAttentionKernels.self, .float32).all.map { kind, k in
            let shared = k.sharedBytes(kind)
            var regs: Int32 = 0, local: Int32 = 0, blocks: Int32 = -1
            _ = driver.cuFuncGetAttribute(&regs, Driver.funcAttrNumRegs, k.function.handle)
            _ = driver.cuFuncGetAttribute(&local, Driver.funcAttrLocalSizeBytes, k.function.handle)
            if let occ = driver.cuOccupancyMaxActiveBlocksPerMultiprocessor {
                _ = occ(&blocks, k.function.handle, Int32(k.threads), shared)
            }
            return "\(k.function.name): \(regs) registers, \(local) bytes local, \(shared) bytes shared, \(k.threads) threads, "
                + "\(blocks) blocks/SM (\(Int(blocks) * k.threads / 32) warps)"
        }.sorted()
    }
}
