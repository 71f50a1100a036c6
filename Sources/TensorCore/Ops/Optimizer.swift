#if canImport(Glibc)
import Glibc
#endif

// Optimizer updates: in place on parameters and optimizer state, outside any recorded graph (the one place where
// tensors change after they are made).

/// Fused optimizer updates, one pass over a parameter and its state. Without them the updates are composed from
/// elementwise tensor operations and copied back into place.
public protocol OptimizerBackend: Backend {
    /// Fused AdamW step over one parameter tensor (in place on p, m, v).
    func adamw(p: Storage, g: Storage, m: Storage, v: Storage, lr: Double, beta1: Double, beta2: Double,
               eps: Double, weightDecay: Double, step: Int, gradScale: Double)
    /// p_ema = p + decay * (p_ema - p), in place on ema.
    func emaUpdate(ema: Storage, p: Storage, decay: Double)
    /// Storages aliasing the ranges of `buffer` that start at `offsets` and hold `counts` elements: each is a dense
    /// storage like any other to every kernel, and keeps `buffer` alive. An update of the whole buffer changes what
    /// its views hold (and drops whatever a backend keeps derived from them, such as bf16 operand copies).
    func views(of buffer: Storage, offsets: [Int], counts: [Int]) -> [Storage]
}

/// Where a list of tensors of one element type lies in one contiguous buffer, so that an update of all of them
/// (AdamW, an EMA, the gradient norm) is one pass over one buffer instead of one per tensor. Each range starts
/// on a 512-byte boundary, as every allocation does, so that views are as aligned as any storage (kernels load
/// 16-byte packs); the gaps hold zeros, which every update keeps zero.
public struct PackedLayout: Equatable {
    public let shapes: [[Int]]
    public let dtype: DType
    /// The first element of each tensor in the buffer.
    public let offsets: [Int]
    /// The buffer's length, gaps included.
    public let count: Int

    public init(shapes: [[Int]], dtype: DType) {
        let alignment = 512 / dtype.byteSize
        var offsets: [Int] = [], end = 0
        for shape in shapes {
            offsets.append(end)
            end += (Shape.count(shape) + alignment - 1) / alignment * alignment
        }
        self.shapes = shapes
        self.dtype = dtype
        self.offsets = offsets
        count = end
    }

    /// A fresh buffer in this layout holding the values of `tensors` (one per shape, on one device), zeros between.
    public func gather(_ tensors: [Tensor]) -> Tensor {
        precondition(tensors.count == shapes.count && !tensors.isEmpty, "gather: \(tensors.count) tensors for \(shapes.count) ranges")
        let backend = tensors[0].backend
        let buffer = Tensor.zeros([count], dtype: dtype, on: tensors[0].device)
        for (i, t) in tensors.enumerated() {
            precondition(t.shape == shapes[i] && t.dtype == dtype && t.backend === backend,
                         "gather: a \(t.dtype) tensor of shape \(t.shape) for a \(dtype) range of shape \(shapes[i])")
            backend.copy(t.storage, StridedView(strides: [1]), buffer.storage, StridedView(offset: offsets[i], strides: [1]),
                         shape: [t.count])
        }
        return buffer
    }

    /// The tensors this layout places in `buffer`, as views of it; nil where its backend cannot make views.
    public func views(of buffer: Tensor) -> [Tensor]? {
        precondition(buffer.count == count && buffer.dtype == dtype, "views: a buffer of \(buffer.count) \(buffer.dtype) for a layout of \(count) \(dtype)")
        guard let backend = buffer.backend as? any OptimizerBackend else { return nil }
        let storages = backend.views(of: buffer.storage, offsets: offsets, counts: shapes.map { Shape.count($0) })
        return zip(storages, shapes).map { Tensor(storage: $0, shape: $1) }
    }
}

extension Tensor {
    /// One AdamW step in place on this parameter and its first and second moments `m` and `v`, with the arithmetic
    /// of torch.optim.AdamW (decoupled weight decay, the bias corrections of step `step` folded as it does), for
    /// the gradient `gradient` times `gradScale` (what gradient clipping scales it by).
    public func adamwUpdate(gradient g: Tensor, m: Tensor, v: Tensor, lr: Double, beta1: Double, beta2: Double,
                            eps: Double, weightDecay: Double, step: Int, gradScale: Double = 1) {
        for state in [g, m, v] {
            checkSameDType(state, "adamwUpdate")
            precondition(state.shape == shape, "adamwUpdate: state of shape \(state.shape) for a parameter of shape \(shape)")
        }
        guard let fused = backend as? any OptimizerBackend else {
            withoutGrad {
                let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
                let scaled = g * gradScale
                let m1 = m * beta1 + scaled * (1 - beta1)
                let v1 = v * beta2 + scaled.square() * (1 - beta2)
                let p1 = self * (1 - lr * weightDecay) - m1 * (lr / bc1) / (v1.sqrt() / bc2.squareRoot() + eps)
                m.overwrite(with: m1)
                v.overwrite(with: v1)
                overwrite(with: p1)
            }
            return
        }
        fused.adamw(p: storage, g: g.storage, m: m.storage, v: v.storage, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
                    weightDecay: weightDecay, step: step, gradScale: gradScale)
    }

    /// self = p + decay (self - p) in place: one step of an exponential moving average of `p` (EMA weights).
    public func emaUpdate(toward p: Tensor, decay: Double) {
        checkSameDType(p, "emaUpdate")
        precondition(p.shape == shape, "emaUpdate: \(p.shape) toward \(shape)")
        guard let fused = backend as? any OptimizerBackend else {
            withoutGrad { overwrite(with: p + (self - p) * decay) }
            return
        }
        fused.emaUpdate(ema: storage, p: p.storage, decay: decay)
    }

    /// Copies `values` (of the same shape) into this tensor's storage.
    public func overwrite(with values: Tensor) {
        precondition(values.shape == shape && values.dtype == dtype, "overwrite: \(values.dtype) \(values.shape) into \(dtype) \(shape)")
        let dense = StridedView(strides: [1])
        backend.copy(values.storage, dense, storage, dense, shape: [count])
    }
}
