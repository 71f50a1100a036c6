import TensorCore

/// CUDA C++ source of the inference kernels behind `ConvolutionBackend` (im2col, pooling, bilinear resize,
/// bias + ReLU): the "convolution" kernel family, compiled by NVRTC for each element type on first use.
/// One thread per output element in grid-stride loops; they move memory, while the convolutions' arithmetic
/// goes to cuBLAS through `matmul`.
enum ConvolutionKernelSource {
    static let kernels = #"""
    /// Geometry of a sliding window, passed by value (the CPU backend's Window2D plus the output size).
    struct Win { int kh, kw, sy, sx, py, px, oh, ow; };

    template<typename T> __device__ __forceinline__ void im2col_impl(const T* x, T* cols, i64 planes, int h, int w, Win g) {
        const i64 total = planes * g.kh * g.kw * (i64)g.oh * g.ow;
        for (i64 i = gtid(); i < total; i += gstride()) {
            const int ox = (int)(i % g.ow);
            i64 r = i / g.ow;
            const int oy = (int)(r % g.oh); r /= g.oh;
            const int j = (int)(r % g.kw); r /= g.kw;
            const int ki = (int)(r % g.kh);
            const i64 p = r / g.kh;
            const int iy = oy * g.sy - g.py + ki, ix = ox * g.sx - g.px + j;
            cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[(p * h + iy) * w + ix] : T(0);
        }
    }

    /// KIND 0: max (NaN wins and stays); 1: mean over the window's elements inside the input;
    /// 2: sum over the window divided by its full size (padding counted as zeros).
    template<typename T, int KIND> __device__ __forceinline__ void pool_impl(const T* x, T* y, i64 planes, int h, int w, Win g) {
        const i64 total = planes * (i64)g.oh * g.ow;
        for (i64 i = gtid(); i < total; i += gstride()) {
            const int ox = (int)(i % g.ow);
            const i64 r = i / g.ow;
            const int oy = (int)(r % g.oh);
            const i64 p = r / g.oh;
            const int y0 = oy * g.sy - g.py, x0 = ox * g.sx - g.px;
            const int ys = max(y0, 0), ye = min(y0 + g.kh, h), xs = max(x0, 0), xe = min(x0 + g.kw, w);
            const T* src = x + p * h * w;
            T acc = KIND == 0 ? -inf_<T>() : T(0);
            for (int iy = ys; iy < ye; ++iy) {
                for (int ix = xs; ix < xe; ++ix) {
                    const T v = src[iy * w + ix];
                    if (KIND == 0) { if (is_nan(v) || v > acc) acc = v; } else { acc += v; }
                }
            }
            if (KIND == 1) acc /= T((ye - ys) * (xe - xs));
            if (KIND == 2) acc /= T(g.kh * g.kw);
            y[i] = acc;
        }
    }

    /// TensorFlow 1 resize_bilinear sampling; the source coordinate is the CPU backend's double expression
    /// (__dmul_rn keeps it from being fused), so both backends read the same pixels with the same weights.
    template<typename T> __device__ __forceinline__ void resize_impl(const T* x, T* y, i64 planes, int h, int w, int oh, int ow) {
        const double scaleY = (double)h / (double)oh, scaleX = (double)w / (double)ow;
        const i64 total = planes * (i64)oh * ow;
        for (i64 i = gtid(); i < total; i += gstride()) {
            const int ox = (int)(i % ow);
            const i64 r = i / ow;
            const int oy = (int)(r % oh);
            const i64 p = r / oh;
            const double sy = __dmul_rn((double)oy, scaleY), sx = __dmul_rn((double)ox, scaleX);
            const int r0 = (int)floor(sy), c0 = (int)floor(sx);
            const int r1 = min(r0 + 1, h - 1), c1 = min(c0 + 1, w - 1);
            const T wy = T(sy - (double)r0), wx = T(sx - (double)c0);
            const T* src = x + p * h * w;
            const T upper = (T(1) - wx) * src[r0 * w + c0] + wx * src[r0 * w + c1];
            const T lower = (T(1) - wx) * src[r1 * w + c0] + wx * src[r1 * w + c1];
            y[i] = (T(1) - wy) * upper + wy * lower;
        }
    }

    /// In place: y = max(y + b[channel], 0), NaN kept (as PyTorch's relu).
    template<typename T> __device__ __forceinline__ void bias_relu_impl(T* y, const T* b, i64 rows, int channels, i64 plane) {
        const i64 total = rows * plane;
        for (i64 i = gtid(); i < total; i += gstride()) {
            const T v = y[i] + b[(i / plane) % channels];
            y[i] = v < T(0) ? T(0) : v;
        }
    }
    """#

    static let poolNames = ["pool_max", "pool_avg_excl", "pool_avg_incl"]

    static func entryPoints(_ dtype: DType) -> String {
        let T = KernelSource.ctype(dtype), s = KernelSource.suffix(dtype)
        var out = """
        extern "C" __global__ void __launch_bounds__(256) im2col_\(s)(const \(T)* x, \(T)* cols, i64 planes, int h, int w, Win g) { im2col_impl<\(T)>(x, cols, planes, h, w, g); }
        extern "C" __global__ void __launch_bounds__(256) resize_bilinear_\(s)(const \(T)* x, \(T)* y, i64 planes, int h, int w, int oh, int ow) { resize_impl<\(T)>(x, y, planes, h, w, oh, ow); }
        extern "C" __global__ void __launch_bounds__(256) bias_relu_\(s)(\(T)* y, const \(T)* b, i64 rows, int channels, i64 plane) { bias_relu_impl<\(T)>(y, b, rows, channels, plane); }

        """
        for (kind, name) in poolNames.enumerated() {
            out += "extern \"C\" __global__ void __launch_bounds__(256) \(name)_\(s)(const \(T)* x, \(T)* y, i64 planes, int h, int w, Win g) "
                + "{ pool_impl<\(T), \(kind)>(x, y, planes, h, w, g); }\n"
        }
        return out
    }
}

final class ConvolutionKernelSet {
    let im2col: Handle, resize: Handle, biasReLU: Handle
    /// Indexed like `ConvolutionKernelSource.poolNames`.
    let pool: [Handle]

    init(_ f: [String: Handle], _ dtype: DType) throws {
        let s = KernelSource.suffix(dtype)
        func get(_ name: String) throws -> Handle {
            guard let h = f[name] else { throw CUDAError("CUDA kernels: \(name) missing from the compiled module") }
            return h
        }
        im2col = try get("im2col_\(s)")
        resize = try get("resize_bilinear_\(s)")
        biasReLU = try get("bias_relu_\(s)")
        pool = try ConvolutionKernelSource.poolNames.map { try get("\($0)_\(s)") }
    }
}

extension CUDABackend: ConvolutionBackend {
    private func convolutionSet(_ dtype: DType) -> ConvolutionKernelSet {
        do {
            return try moduleMutex.withLock {
                if let k = convolutionKernels[dtype] { return k }
                let (_, f) = try loadModule(.convolution, dtype)
                let k = try ConvolutionKernelSet(f, dtype)
                convolutionKernels[dtype] = k
                return k
            }
        } catch { fatalError("\(error)") }
    }

    /// The kernels' `Win` struct (eight int32 fields, one parameter).
    private func addWindow(_ a: inout Args, _ w: Window2D, _ oh: Int, _ ow: Int) {
        a.add((Int32(w.kernelHeight), Int32(w.kernelWidth), Int32(w.strideY), Int32(w.strideX),
               Int32(w.padY), Int32(w.padX), Int32(oh), Int32(ow)))
    }

    public func im2col(_ x: Storage, _ cols: Storage, images: Int, channels: Int, height: Int, width: Int, window: Window2D) {
        guard cols.count > 0 else { return }
        let (oh, ow) = window.outputSize(height: height, width: width)!
        launch(convolutionSet(x.dtype).im2col, grid: (blocks(cols.count), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(cols)); a.i64(images * channels); a.i32(height); a.i32(width)
            addWindow(&a, window, oh, ow)
        }
    }

    public func pool2d(_ kind: PoolKind, _ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, window: Window2D) {
        guard y.count > 0 else { return }
        let (oh, ow) = window.outputSize(height: height, width: width)!
        let index: Int
        switch kind {
        case .max: index = 0
        case .averageExcludingPadding: index = 1
        case .averageIncludingPadding: index = 2
        }
        launch(convolutionSet(x.dtype).pool[index], grid: (blocks(y.count), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(y)); a.i64(planes); a.i32(height); a.i32(width)
            addWindow(&a, window, oh, ow)
        }
    }

    public func resizeBilinear(_ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, outHeight: Int, outWidth: Int) {
        guard y.count > 0 else { return }
        launch(convolutionSet(x.dtype).resize, grid: (blocks(y.count), 1)) { a in
            a.ptr(addr(x)); a.ptr(addr(y)); a.i64(planes); a.i32(height); a.i32(width); a.i32(outHeight); a.i32(outWidth)
        }
    }

    public func addBiasReLU(_ y: Storage, bias: Storage, images: Int, channels: Int, plane: Int) {
        guard y.count > 0 else { return }
        launch(convolutionSet(y.dtype).biasReLU, grid: (blocks(y.count), 1)) { a in
            a.ptr(addr(y)); a.ptr(addr(bias)); a.i64(images * channels); a.i32(channels); a.i64(plane)
        }
    }
}
