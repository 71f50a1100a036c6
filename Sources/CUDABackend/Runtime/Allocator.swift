import TensorCore

/// Device memory of one tensor: a block of the caching allocator, returned to it when the storage dies.
public final class CUDAStorage: Storage {
    /// Device address of element 0 (0 for an empty storage).
    public let address: DevicePointer
    /// Bytes of the block (the request rounded up to its size class).
    let blockBytes: Int
    let allocator: BlockAllocator?
    /// Its bfloat16 copy, the operand of bf16 products (`CUDABackend.bf16Operand`): freed with the storage, or
    /// earlier when the storage changes in place or the backend drops copies to make room.
    var bf16Copy: (address: DevicePointer, blockBytes: Int)?
    /// For a view (`CUDABackend.views(of:offsets:counts:)`): the storage whose block it aliases, kept alive by it.
    let base: CUDAStorage?
    /// This storage's views, whose bf16 copies go stale when it changes in place.
    var views: [WeakStorage] = []
    /// Whether the bf16 copy is all it holds (`CUDABackend.keepingOperandCopyOnly`): its values, not a cache.
    let operandCopyOnly: Bool

    init(count: Int, dtype: DType, backend: CUDABackend, address: DevicePointer, blockBytes: Int, allocator: BlockAllocator?) {
        self.address = address
        self.blockBytes = blockBytes
        self.allocator = allocator
        base = nil
        operandCopyOnly = false
        super.init(count: count, dtype: dtype, backend: backend)
    }

    /// A float32 storage of `count` elements with no float32 block, holding only the bf16 copy `copy` (whose bytes
    /// the allocator counts as a tensor's, not as a cache's): products read it, other kernels refuse it.
    init(operandCopy copy: (address: DevicePointer, blockBytes: Int), count: Int, backend: CUDABackend, allocator: BlockAllocator) {
        address = 0
        blockBytes = 0
        self.allocator = allocator
        base = nil
        operandCopyOnly = true
        bf16Copy = copy
        super.init(count: count, dtype: .float32, backend: backend)
    }

    /// `count` elements of `base` from element `offset` on; its block stays the base's.
    init(viewOf base: CUDAStorage, offset: Int, count: Int) {
        precondition(offset >= 0 && offset + count <= base.count, "a view of \(count) from \(offset) outside \(base.count) elements")
        address = base.address + UInt64(offset * base.dtype.byteSize)
        blockBytes = 0
        allocator = base.allocator
        self.base = base
        operandCopyOnly = false
        super.init(count: count, dtype: base.dtype, backend: base.backend)
    }

    deinit {
        if base == nil { allocator?.release(address, blockBytes) }
        if let copy = bf16Copy { allocator?.release(copy.address, copy.blockBytes, bf16Copy: !operandCopyOnly) }
    }
}

/// A storage not kept alive by the backend's list of bf16 copy holders.
struct WeakStorage {
    weak var storage: CUDAStorage?
    init(_ storage: CUDAStorage) { self.storage = storage }
}

/// A caching allocator for the backend's single stream. Requests are rounded up to size classes (512 bytes,
/// then four classes per power of two); a freed block goes on its class's free list and the next request of
/// that class reuses it. All work runs on one stream in order, so a block freed while kernels that use it
/// are still queued can be handed out at once: whatever uses it next is queued after them. After warm-up a
/// training step makes no cuMemAlloc call. When the device is full, the cache is released and the
/// allocation tried again.
final class BlockAllocator {
    private let driver: Driver
    private let stream: Handle
    private let mutex = Mutex()
    private var free: [Int: [DevicePointer]] = [:]
    private(set) var currentBytes = 0
    private(set) var peakBytes = 0
    private(set) var reservedBytes = 0
    private(set) var driverAllocations = 0
    /// Of `currentBytes`, the bytes held by bf16 operand copies: a cache the backend drops under pressure.
    private(set) var bf16CopyBytes = 0
    /// Called once when the device is full, before the cached blocks go back to the driver: the owner frees
    /// what it can rebuild (the bf16 copies).
    var onMemoryPressure: (() -> Void)?

    init(driver: Driver, stream: Handle) {
        self.driver = driver
        self.stream = stream
    }

    static func sizeClass(_ bytes: Int) -> Int {
        if bytes <= 512 { return 512 }
        let high = 1 << (Int.bitWidth - 1 - (bytes - 1).leadingZeroBitCount)
        let step = Swift.max(512, high / 4)
        return (bytes + step - 1) / step * step
    }

    /// A block of at least `bytes` (the caller has made the context current).
    func allocate(_ bytes: Int, bf16Copy: Bool = false) -> (address: DevicePointer, blockBytes: Int) {
        let size = BlockAllocator.sizeClass(bytes)
        mutex.lock()
        if bf16Copy { bf16CopyBytes += size }
        if var list = free[size], let p = list.popLast() {
            free[size] = list
            currentBytes += size
            peakBytes = Swift.max(peakBytes, currentBytes)
            mutex.unlock()
            return (p, size)
        }
        mutex.unlock()
        var p: DevicePointer = 0
        var r = driver.cuMemAlloc(&p, size)
        if r == Driver.errorOutOfMemory {
            onMemoryPressure?()
            releaseCached()
            r = driver.cuMemAlloc(&p, size)
        }
        if r != 0 {
            var freeBytes = 0, total = 0
            _ = driver.cuMemGetInfo(&freeBytes, &total)
            fatalError("CUDA driver: cuMemAlloc_v2(\(size) bytes) failed: \(driver.describe(r)); "
                       + "in use by tensors \(currentBytes) bytes, reserved \(reservedBytes), device free \(freeBytes) of \(total)")
        }
        mutex.withLock {
            reservedBytes += size
            driverAllocations += 1
            currentBytes += size
            peakBytes = Swift.max(peakBytes, currentBytes)
        }
        return (p, size)
    }

    /// A bf16 copy's block becomes a tensor's values (`CUDAStorage.init(operandCopy:)`): no longer counted as cache.
    func adoptBF16Copy(_ size: Int) {
        mutex.withLock { bf16CopyBytes -= size }
    }

    /// Called from any thread (a storage's deinit): no driver call, only the free list.
    func release(_ address: DevicePointer, _ size: Int, bf16Copy: Bool = false) {
        guard size > 0 else { return }
        mutex.withLock {
            free[size, default: []].append(address)
            currentBytes -= size
            if bf16Copy { bf16CopyBytes -= size }
        }
    }

    /// Returns every cached block to the driver (waits for queued work first, since it may still use them).
    func releaseCached() {
        _ = driver.cuStreamSynchronize(stream)
        let blocks: [(Int, [DevicePointer])] = mutex.withLock {
            let all = free.map { ($0.key, $0.value) }
            free.removeAll()
            return all
        }
        for (size, list) in blocks {
            for p in list { _ = driver.cuMemFree(p) }
            mutex.withLock { reservedBytes -= size * list.count }
        }
    }

    func resetPeak() { mutex.withLock { peakBytes = currentBytes } }
}
