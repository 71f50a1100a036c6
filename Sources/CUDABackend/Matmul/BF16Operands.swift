#if canImport(Glibc)
import Glibc
#endif
import TensorCore

// The bfloat16 operand copies of bf16 products (`bf16Products`): made on first use or written by the kernel that
// makes a product's operand, kept with their storage within a budget, forgotten when the storage changes in place.
// The state lives in CUDABackend.swift (stored properties cannot be in an extension).
extension CUDABackend {
    /// Bytes held by bf16 operand copies now (part of `currentBytes`).
    public var bf16CopyBytes: Int { allocator.bf16CopyBytes }

    func beginBF16Call() { inCallCopies.removeAll(keepingCapacity: true) }

    /// The bfloat16 copy of a float32 storage, made on its first use as a product operand and kept while the
    /// storage lives: an activation feeds its forward products and, in the backward pass, the weight gradients'
    /// products; a weight feeds its forward, tangent and backward products. Storage is written once, when made;
    /// the in-place updates (AdamW, EMA, scatter-add, fill, accumulating products) forget the copy of what they
    /// change. Beyond the budget the oldest copies go first.
    func bf16Operand(_ x: Storage) -> DevicePointer {
        precondition(x.dtype == .float32, "bf16 products take float32 operands")
        if let copy = cuda(x).bf16Copy {
            inCallCopies.append(ObjectIdentifier(x))
            return copy.address
        }
        let p = attachBF16Copy(x)
        writeBF16(of: x, to: p)
        return p
    }

    /// x's float32 values rounded to bfloat16 (to nearest even) into the block at `y` (x.count values).
    func writeBF16(of x: Storage, to y: DevicePointer) {
        guard x.count > 0 else { return }
        if profiler?.byGrid == true { profileTag = "n=\(x.count)" }
        kernels(ConversionKernels.self, .float32).convertF32Bf16.launch(on: self, grid: (blocks((x.count + 3) / 4), 1),
                                                                        x: addr(x), y: y, n: x.count)
    }

    /// Under bf16 products, a bf16 copy for a float32 output that the kernel about to make it also writes (2 bytes
    /// more per element there, instead of a 6-byte conversion pass when a product reads it); 0 otherwise. For
    /// kernels whose outputs feed products.
    func bf16Twin(_ y: Storage) -> DevicePointer {
        guard bf16Products, y.dtype == .float32, y.count > 0 else { return 0 }
        forgetBF16Copy(of: y)
        return attachBF16Copy(y)
    }

    /// A fresh block for the bf16 copy of `x`, attached to it (its contents are the caller's to write). Beyond the
    /// budget or the ceiling the oldest copies are freed, an eighth of the budget more than needed (evictions come
    /// in batches).
    func attachBF16Copy(_ x: Storage) -> DevicePointer {
        let s = cuda(x)
        inCallCopies.append(ObjectIdentifier(s))
        let (p, size) = allocator.allocate(Swift.max(2 * x.count, 2), bf16Copy: true)
        s.bf16Copy = (p, size)
        bf16Holders.append(WeakStorage(s))
        if !trimBF16Copies(slack: bf16CopyBudget / 8) && bf16Holders.count > 4096 {
            bf16Holders.removeAll { $0.storage?.bf16Copy == nil }
        }
        return p
    }

    /// Frees the oldest copies while they exceed the budget or all tensors the ceiling, `slack` bytes further;
    /// whether any had to go.
    @discardableResult
    func trimBF16Copies(slack: Int = 0) -> Bool {
        let excess = Swift.max(allocator.bf16CopyBytes - bf16CopyBudget, allocator.currentBytes - bf16CopyCeiling)
        guard excess > 0 else { return false }
        evictBF16Copies(downTo: allocator.bf16CopyBytes - excess - slack)
        return true
    }

    /// Frees the oldest copies until they hold at most `bytes`, sparing the newest few and those the current call
    /// has handed out.
    func evictBF16Copies(downTo bytes: Int) {
        for held in bf16Holders.dropLast(bf16NewestKept) where allocator.bf16CopyBytes > bytes {
            if let s = held.storage, !inCallCopies.contains(ObjectIdentifier(s)) { forgetBF16Copy(of: s) }
        }
        bf16Holders.removeAll { $0.storage?.bf16Copy == nil }
    }

    /// Frees the bf16 copy of a storage about to change in place (or evicted). Queued products that read the copy
    /// run first: its block is handed out again only to later work on the one stream.
    func forgetBF16Copy(of x: Storage) {
        let s = cuda(x)
        precondition(!s.operandCopyOnly, "a tensor kept only as its bf16 product operand cannot change in place")
        for view in s.views { if let v = view.storage { forgetBF16Copy(of: v) } }
        guard let copy = s.bf16Copy else { return }
        allocator.release(copy.address, copy.blockBytes, bf16Copy: true)
        s.bf16Copy = nil
    }

    /// The device is full: the copies go (but the current call's), and the budget halves so that steady work
    /// stays below the limit.
    func dropBF16Copies() {
        bf16CopyBudget = Swift.min(bf16CopyBudget, allocator.bf16CopyBytes) / 2
        evictBF16Copies(downTo: 0)
    }
}

// Tensors that hold only their bf16 values (`CUDAStorage.operandCopyOnly`): the VAE's activations under bf16 products
// (ChannelsLastImageBackend's low-precision storages), read by the products and the channels-last image kernels.
extension CUDABackend {
    /// Under bf16 products (and `bf16Activations`), `bf16OnlyStorage(count:)`; nil otherwise.
    public func lowPrecisionStorage(count: Int, dtype: DType) -> Storage? {
        guard bf16Products, bf16Activations, dtype == .float32, count > 0 else { return nil }
        return bf16OnlyStorage(count: count)
    }

    /// A float32 storage of `count` (at least 1) elements holding only a bf16 block (2 bytes an element, counted as
    /// a tensor's), for the kernel about to make it to write.
    func bf16OnlyStorage(count: Int) -> Storage {
        CUDAStorage(operandCopy: allocateBlock(2 * count), count: count, backend: self, allocator: allocator)
    }

    /// The float32 values of a storage that holds only its bf16 copy, in a new storage; nil for any other.
    public func fullPrecision(_ x: Storage) -> Storage? {
        let s = cuda(x)
        guard s.operandCopyOnly, let copy = s.bf16Copy else { return nil }
        let y = allocate(x.count, .float32)
        kernels(ConversionKernels.self, .float32).convertBf16F32.launch(on: self, grid: (blocks((x.count + 1) / 2), 1), x: copy.address,
                                                                        y: addr(y), n: x.count)
        return y
    }

    /// For a kernel that writes an output and, under bf16 products, its bf16 copy: the float32 address and a fresh
    /// copy's (`bf16Twin`), or 0 and the bf16 block of a storage that holds only that (`lowPrecisionStorage`).
    func outputAndCopy(_ y: Storage) -> (f32: DevicePointer, bf16: DevicePointer) {
        let (f32, bf16) = float32OrBF16(y)
        return bf16 != 0 ? (0, bf16) : (f32, bf16Twin(y))
    }

    /// The float32 values of `x` for a kernel that reads float32 alone: `x` itself, or where `x` holds only its bf16
    /// copy, a widened one (`fullPrecision`).
    func widened(_ x: Storage) -> Storage { fullPrecision(x) ?? x }

    /// Runs `write` (a kernel that writes float32 alone) on a float32 storage for `y`: `y` itself, or where `y` holds
    /// only its bf16 copy a new one, whose values then become that copy. nil stays nil.
    func writingFloat32(_ y: Storage?, _ write: (Storage?) -> Void) {
        guard let y, case let y16 = float32OrBF16(y).bf16, y16 != 0 else { write(y); return }
        let wide = allocate(y.count, .float32)
        write(wide)
        writeBF16(of: wide, to: y16)
    }

    /// What a kernel that reads (or writes) float32 or bfloat16 alone is given for `s`: its float32 address and 0, or
    /// 0 and its bf16 values' address where it holds only those.
    func float32OrBF16(_ s: Storage) -> (f32: DevicePointer, bf16: DevicePointer) {
        let c = cuda(s)
        if c.operandCopyOnly, let copy = c.bf16Copy { return (0, copy.address) }
        return (addr(s), 0)
    }
}

extension CUDABackend: ProductOperandBackend {
    /// Under bf16 products, the bf16 copy of `x` moved into a storage of its own (made first if `x` has none): the
    /// weight gradient's product in backward reads that copy and nothing else, so the float32 values need not be
    /// kept or remade for it. nil without bf16 products, and for views and storages with views (which share a
    /// block with others).
    public func keepingOperandCopyOnly(_ x: Storage) -> Storage? {
        guard bf16Products, x.dtype == .float32, x.count > 0 else { return nil }
        let s = cuda(x)
        if s.operandCopyOnly { return x }
        guard s.base == nil, s.views.isEmpty else { return nil }
        beginBF16Call()
        _ = bf16Operand(x)
        guard let copy = s.bf16Copy else { return nil }
        s.bf16Copy = nil
        allocator.adoptBF16Copy(copy.blockBytes)
        return CUDAStorage(operandCopy: copy, count: x.count, backend: self, allocator: allocator)
    }
}
