import TensorCore

/// The CUDA C++ source of every kernel, templated on the element type. Swift generates the `extern "C"`
/// entry points for one element type at a time (so names need no C++ mangling), and NVRTC compiles each
/// family (core, attention) for each element type once per process, on first use.
enum KernelSource {
    static func suffix(_ dtype: DType) -> String { dtype == .float32 ? "f32" : "f64" }
    static func ctype(_ dtype: DType) -> String { dtype == .float32 ? "float" : "double" }

    // MARK: - Shared helpers

    static let common = #"""
    typedef long long i64;
    typedef unsigned long long u64;
    typedef unsigned int u32;

    __device__ __forceinline__ float f_inf(float) { return __int_as_float(0x7f800000); }
    __device__ __forceinline__ double f_inf(double) { return __longlong_as_double(0x7ff0000000000000LL); }
    __device__ __forceinline__ float f_nan(float) { return __int_as_float(0x7fffffff); }
    __device__ __forceinline__ double f_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
    template<typename T> __device__ __forceinline__ T inf_() { return f_inf(T(0)); }
    template<typename T> __device__ __forceinline__ T nan_() { return f_nan(T(0)); }

    // Accurate libm forms (no fast-math intrinsics): the CPU backend uses libm too.
    __device__ __forceinline__ float m_exp(float x) { return expf(x); }
    __device__ __forceinline__ double m_exp(double x) { return exp(x); }
    __device__ __forceinline__ float m_log(float x) { return logf(x); }
    __device__ __forceinline__ double m_log(double x) { return log(x); }
    __device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
    __device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
    __device__ __forceinline__ float m_sin(float x) { return sinf(x); }
    __device__ __forceinline__ double m_sin(double x) { return sin(x); }
    __device__ __forceinline__ float m_cos(float x) { return cosf(x); }
    __device__ __forceinline__ double m_cos(double x) { return cos(x); }
    __device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
    __device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
    __device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
    __device__ __forceinline__ double m_abs(double x) { return fabs(x); }

    template<typename T> __device__ __forceinline__ bool is_nan(T x) { return x != x; }
    /// NaN propagates, as in the CPU backend (and PyTorch's maximum / amax).
    template<typename T> __device__ __forceinline__ T max_nan(T a, T b) {
        return (is_nan(a) || is_nan(b)) ? nan_<T>() : (a > b ? a : b);
    }
    template<typename T> __device__ __forceinline__ T min_nan(T a, T b) {
        return (is_nan(a) || is_nan(b)) ? nan_<T>() : (a < b ? a : b);
    }

    /// 16 bytes of elements: one vector load or store.
    template<typename T> struct __align__(16) Pack { T v[16 / sizeof(T)]; };

    /// float32 to bfloat16 bits, rounded to nearest even; NaN stays NaN (quiet). No cuda_bf16.h: NVRTC
    /// needs no include path.
    __device__ __forceinline__ unsigned short bf16_bits(float f) {
        const u32 b = __float_as_uint(f);
        if ((b & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((b >> 16) | 0x40u);
        return (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
    // The bfloat16 copy of an output that feeds bf16 products, written by the kernel that makes the output
    // (y16 null: none; never for double).
    template<typename T> __device__ __forceinline__ void store_bf16(unsigned short* y16, i64 i, const Pack<T>& r) {
        if constexpr (sizeof(T) == 4) {
            if (y16) {
                uint2 o;
                o.x = (u32)bf16_bits(r.v[0]) | ((u32)bf16_bits(r.v[1]) << 16);
                o.y = (u32)bf16_bits(r.v[2]) | ((u32)bf16_bits(r.v[3]) << 16);
                reinterpret_cast<uint2*>(y16)[i] = o;
            }
        }
    }
    template<typename T> __device__ __forceinline__ void store_bf16_one(unsigned short* y16, i64 i, T v) {
        if constexpr (sizeof(T) == 4) { if (y16) y16[i] = bf16_bits(v); }
    }
    __device__ __forceinline__ void store_bf16_pair(unsigned short* y16, i64 i, float a, float b) {
        if (y16) *reinterpret_cast<u32*>(y16 + i) = (u32)bf16_bits(a) | ((u32)bf16_bits(b) << 16);
    }

    __device__ __forceinline__ i64 gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
    /// Attention operands are token-major [batch, n, heads, d] (TensorCore's AttentionGeometry): the first row of
    /// head bh = b * heads + h lies here, and its rows are heads * d apart.
    __device__ __forceinline__ i64 attn_head_offset(i64 bh, int n, int heads, int d) {
        return ((bh / heads) * n * heads + bh % heads) * d;
    }
    __device__ __forceinline__ i64 gstride() { return (i64)gridDim.x * blockDim.x; }

    template<typename T> __device__ __forceinline__ T warp_sum(T v) {
    #pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
    template<typename T> __device__ __forceinline__ T warp_max(T v) {
    #pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }
    /// Sum or max over the block (every thread gets the result); `sm` holds 32 values.
    template<typename T, bool MAX> __device__ __forceinline__ T block_reduce(T v, T* sm) {
        v = MAX ? warp_max(v) : warp_sum(v);
        const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
        __syncthreads();
        if (lane == 0) sm[w] = v;
        __syncthreads();
        v = lane < nw ? sm[lane] : (MAX ? -inf_<T>() : T(0));
        return MAX ? warp_max(v) : warp_sum(v);
    }

    /// Shape and strides of up to 8 collapsed axes (row-major), for two strided views.
    struct View2 { i64 shape[8]; i64 s0[8]; i64 s1[8]; int ndim; };

    /// Offsets of linear index i in both views.
    template<typename I> __device__ __forceinline__ void view_offsets(const View2& v, I i, I& o0, I& o1) {
        I rem = i; o0 = 0; o1 = 0;
    #pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int d = 7 - k;
            if (d < v.ndim) {
                const I s = (I)v.shape[d];
                const I q = rem / s, idx = rem - q * s;
                rem = q;
                o0 += idx * (I)v.s0[d];
                o1 += idx * (I)v.s1[d];
            }
        }
    }
    """#

    // MARK: - Core kernels (elementwise, strided, reductions, rows, gather/scatter, random, optimizer)

    static let core = #"""
    #define GELU_C 0.7978845608028654
    #define GELU_K 0.044715
    template<typename T> __device__ __forceinline__ T sigm(T x) { return T(1) / (T(1) + m_exp(-x)); }

    template<typename T, typename F> __device__ __forceinline__ void unary_impl(const T* x, T* y, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        const Pack<T>* xp = (const Pack<T>*)x;
        Pack<T>* yp = (Pack<T>*)y;
        // Four packs per thread per iteration, all loaded before any is used: more bytes in flight.
        for (i64 i = t; i < np; i += 4 * st) {
            Pack<T> a[4];
    #pragma unroll
            for (int u = 0; u < 4; ++u) if (i + u * st < np) a[u] = xp[i + u * st];
    #pragma unroll
            for (int u = 0; u < 4; ++u) {
                if (i + u * st < np) {
                    Pack<T> r;
    #pragma unroll
                    for (int k = 0; k < P; ++k) r.v[k] = F::template f<T>(a[u].v[k]);
                    yp[i + u * st] = r;
                }
            }
        }
        for (i64 i = np * P + t; i < n; i += st) y[i] = F::template f<T>(x[i]);
    }

    // SiLU / GELU with their derivatives in one pass each (F the activation, D1 / D2 its derivatives): the value
    // and tangent under a JVP, and the backward of that pair, which composed from one-op kernels took seven passes.

    // Their outputs feed matrix products (an MLP's second layer, or the first one's backward): each may also be
    // written in bfloat16 (y16, ty16, gx16, gt16; null: not).

    /// y = f(x), ty = f'(x) t.
    template<typename T, typename F, typename D1> __device__ __forceinline__ void act_tangent_impl(
            const T* x, const T* t, T* y, T* ty, unsigned short* y16, unsigned short* ty16, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, s = gtid(), st = gstride();
        for (i64 i = s; i < np; i += st) {
            const Pack<T> a = ((const Pack<T>*)x)[i], b = ((const Pack<T>*)t)[i];
            Pack<T> r, q;
    #pragma unroll
            for (int k = 0; k < P; ++k) { r.v[k] = F::template f<T>(a.v[k]); q.v[k] = D1::template f<T>(a.v[k]) * b.v[k]; }
            ((Pack<T>*)y)[i] = r;
            ((Pack<T>*)ty)[i] = q;
            store_bf16(y16, i, r);
            store_bf16(ty16, i, q);
        }
        for (i64 i = np * P + s; i < n; i += st) {
            y[i] = F::template f<T>(x[i]);
            ty[i] = D1::template f<T>(x[i]) * t[i];
            store_bf16_one(y16, i, y[i]);
            store_bf16_one(ty16, i, ty[i]);
        }
    }

    /// gx = gy f'(x) + gty f''(x) t and gt = gty f'(x); a null gy or gty counts as zero.
    template<typename T, typename D1, typename D2> __device__ __forceinline__ void act_tangent_bwd_one(
            T x, T t, T gy, T gty, bool hasGy, bool hasGty, T& gx, T& gt) {
        const T d1 = D1::template f<T>(x);
        gx = hasGy ? gy * d1 : T(0);
        gt = hasGty ? gty * d1 : T(0);
        if (hasGty) gx = gx + D2::template f<T>(x) * t * gty;
    }
    template<typename T, typename D1, typename D2> __device__ __forceinline__ void act_tangent_bwd_impl(
            const T* x, const T* t, const T* gy, const T* gty, T* gx, T* gt, unsigned short* gx16, unsigned short* gt16, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const bool hy = gy != nullptr, ht = gty != nullptr;
        const i64 np = n / P, s = gtid(), st = gstride();
        const Pack<T> zero = {};
        for (i64 i = s; i < np; i += st) {
            const Pack<T> a = ((const Pack<T>*)x)[i], b = ((const Pack<T>*)t)[i];
            const Pack<T> c = hy ? ((const Pack<T>*)gy)[i] : zero, d = ht ? ((const Pack<T>*)gty)[i] : zero;
            Pack<T> r, q;
    #pragma unroll
            for (int k = 0; k < P; ++k) act_tangent_bwd_one<T, D1, D2>(a.v[k], b.v[k], c.v[k], d.v[k], hy, ht, r.v[k], q.v[k]);
            ((Pack<T>*)gx)[i] = r;
            ((Pack<T>*)gt)[i] = q;
            store_bf16(gx16, i, r);
            store_bf16(gt16, i, q);
        }
        for (i64 i = np * P + s; i < n; i += st) {
            act_tangent_bwd_one<T, D1, D2>(x[i], t[i], hy ? gy[i] : T(0), ht ? gty[i] : T(0), hy, ht, gx[i], gt[i]);
            store_bf16_one(gx16, i, gx[i]);
            store_bf16_one(gt16, i, gt[i]);
        }
    }

    /// gx = g f'(x).
    template<typename T, typename D1> __device__ __forceinline__ void act_bwd_impl(const T* x, const T* g, T* gx,
                                                                                  unsigned short* gx16, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, s = gtid(), st = gstride();
        for (i64 i = s; i < np; i += st) {
            const Pack<T> a = ((const Pack<T>*)x)[i], b = ((const Pack<T>*)g)[i];
            Pack<T> r;
    #pragma unroll
            for (int k = 0; k < P; ++k) r.v[k] = b.v[k] * D1::template f<T>(a.v[k]);
            ((Pack<T>*)gx)[i] = r;
            store_bf16(gx16, i, r);
        }
        for (i64 i = np * P + s; i < n; i += st) {
            gx[i] = g[i] * D1::template f<T>(x[i]);
            store_bf16_one(gx16, i, gx[i]);
        }
    }

    template<typename T> __device__ __forceinline__ void affine_impl(const T* x, T* y, i64 n, T a, T b) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        for (i64 i = t; i < np; i += st) {
            Pack<T> v = ((const Pack<T>*)x)[i], r;
    #pragma unroll
            for (int k = 0; k < P; ++k) r.v[k] = a * v.v[k] + b;
            ((Pack<T>*)y)[i] = r;
        }
        for (i64 i = np * P + t; i < n; i += st) y[i] = a * x[i] + b;
    }

    template<typename T> __device__ __forceinline__ void fill_impl(T* y, i64 n, T value) {
        for (i64 i = gtid(); i < n; i += gstride()) y[i] = value;
    }

    /// MODE 0: a and b dense; 1: a is one value; 2: b is one value. All pointers 16-byte aligned.
    template<typename T, typename F, int MODE>
    __device__ __forceinline__ void binary_dense_impl(const T* a, const T* b, T* y, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        const T as = MODE == 1 ? a[0] : T(0), bs = MODE == 2 ? b[0] : T(0);
        for (i64 i = t; i < np; i += 2 * st) {
            Pack<T> pa[2], pb[2];
    #pragma unroll
            for (int u = 0; u < 2; ++u) {
                if (i + u * st < np) {
                    if (MODE != 1) pa[u] = ((const Pack<T>*)a)[i + u * st];
                    if (MODE != 2) pb[u] = ((const Pack<T>*)b)[i + u * st];
                }
            }
    #pragma unroll
            for (int u = 0; u < 2; ++u) {
                if (i + u * st < np) {
                    Pack<T> r;
    #pragma unroll
                    for (int k = 0; k < P; ++k) r.v[k] = F::template f<T>(MODE == 1 ? as : pa[u].v[k], MODE == 2 ? bs : pb[u].v[k]);
                    ((Pack<T>*)y)[i + u * st] = r;
                }
            }
        }
        for (i64 i = np * P + t; i < n; i += st) y[i] = F::template f<T>(MODE == 1 ? as : a[i], MODE == 2 ? bs : b[i]);
    }

    template<typename T, typename F, typename I>
    __device__ __forceinline__ void binary_strided_impl(View2 v, const T* a, const T* b, T* y, i64 n) {
        for (I i = (I)gtid(); i < (I)n; i += (I)gstride()) {
            I oa, ob;
            view_offsets<I>(v, i, oa, ob);
            y[i] = F::template f<T>(a[oa], b[ob]);
        }
    }

    template<typename T, typename I>
    __device__ __forceinline__ void copy_strided_impl(View2 v, const T* x, T* y, i64 n) {
        for (I i = (I)gtid(); i < (I)n; i += (I)gstride()) {
            I ox, oy;
            view_offsets<I>(v, i, ox, oy);
            y[oy] = x[ox];
        }
    }

    /// Rows of a collapsed iteration [rows, inner] whose inner axis is contiguous (stride 1) or broadcast (0) in
    /// every view: a warp per row (block 32 x 8), the row's offsets computed once, lanes along the row. Long rows
    /// are cut into chunks of `chunk` columns along grid.y, so that a few rows still fill the GPU.
    template<typename T, typename F>
    __device__ __forceinline__ void binary_rows_impl(View2 v, const T* a, const T* b, T* y, i64 rows, i64 inner, i64 chunk,
                                                     int ia, int ib) {
        const i64 c0 = (i64)blockIdx.y * chunk, c1 = min(inner, c0 + chunk);
        for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
            i64 oa, ob;
            view_offsets<i64>(v, r, oa, ob);
            const T* pa = a + oa;
            const T* pb = b + ob;
            T* py = y + r * inner;
            for (i64 c = c0 + threadIdx.x; c < c1; c += 32) py[c] = F::template f<T>(pa[c * ia], pb[c * ib]);
        }
    }

    template<typename T>
    __device__ __forceinline__ void copy_rows_impl(View2 v, const T* x, T* y, i64 rows, i64 inner, i64 chunk, int ix) {
        const i64 c0 = (i64)blockIdx.y * chunk, c1 = min(inner, c0 + chunk);
        for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
            i64 ox, oy;
            view_offsets<i64>(v, r, ox, oy);
            const T* px = x + ox;
            T* py = y + oy;
            for (i64 c = c0 + threadIdx.x; c < c1; c += 32) py[c] = px[c * ix];
        }
    }

    template<typename T> __device__ __forceinline__ void select_impl(const T* c, const T* a, const T* b, T* y, i64 n) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        for (i64 i = t; i < np; i += st) {
            Pack<T> pc = ((const Pack<T>*)c)[i], pa = ((const Pack<T>*)a)[i], pb = ((const Pack<T>*)b)[i], r;
    #pragma unroll
            for (int k = 0; k < P; ++k) r.v[k] = pc.v[k] != T(0) ? pa.v[k] : pb.v[k];
            ((Pack<T>*)y)[i] = r;
        }
        for (i64 i = np * P + t; i < n; i += st) y[i] = c[i] != T(0) ? a[i] : b[i];
    }

    // ---- Reductions over the middle axis of [outer, n, inner] (float32 accumulates in float32) ----

    template<typename T, bool MAX> __device__ __forceinline__ T r_comb(T a, T b) { return MAX ? max_nan(a, b) : a + b; }
    template<typename T, bool MAX> __device__ __forceinline__ T r_id() { return MAX ? -inf_<T>() : T(0); }

    /// inner == 1, long rows: block (o, s) reduces x[o, s*chunk ..< (s+1)*chunk] into y[o * splits + s].
    template<typename T, bool MAX>
    __device__ __forceinline__ void reduce_rows_block_impl(const T* x, T* y, i64 n, i64 chunk) {
        __shared__ T sm[32];
        const i64 o = blockIdx.x;
        const i64 s = blockIdx.y, splits = gridDim.y;
        const i64 start = s * chunk, end = min(n, start + chunk);
        const T* row = x + o * n;
        T a0 = r_id<T, MAX>(), a1 = a0, a2 = a0, a3 = a0;
        const i64 bd = blockDim.x;
        i64 j = start + threadIdx.x;
        for (; j + 3 * bd < end; j += 4 * bd) {
            a0 = r_comb<T, MAX>(a0, row[j]);
            a1 = r_comb<T, MAX>(a1, row[j + bd]);
            a2 = r_comb<T, MAX>(a2, row[j + 2 * bd]);
            a3 = r_comb<T, MAX>(a3, row[j + 3 * bd]);
        }
        for (; j < end; j += bd) a0 = r_comb<T, MAX>(a0, row[j]);
        T acc = r_comb<T, MAX>(r_comb<T, MAX>(a0, a1), r_comb<T, MAX>(a2, a3));
        acc = block_reduce<T, MAX>(acc, sm);
        if (threadIdx.x == 0) y[o * splits + s] = acc;
    }

    /// inner == 1, short rows: one warp per row.
    template<typename T, bool MAX>
    __device__ __forceinline__ void reduce_rows_warp_impl(const T* x, T* y, i64 outer, i64 n) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 o = gtid() >> 5; o < outer; o += nw) {
            const T* row = x + o * n;
            T acc = r_id<T, MAX>();
            for (i64 j = lane; j < n; j += 32) acc = r_comb<T, MAX>(acc, row[j]);
            acc = MAX ? warp_max(acc) : warp_sum(acc);
            if (lane == 0) y[o] = acc;
        }
    }

    /// inner > 1: block (32 x 8) covers 32 columns of one outer index and reduces rows
    /// [s*chunk, (s+1)*chunk) of the middle axis into y[(o * splits + s) * inner + i].
    template<typename T, bool MAX>
    __device__ __forceinline__ void reduce_cols_impl(const T* x, T* y, i64 n, i64 inner, i64 chunk) {
        __shared__ T sm[8][33];
        const i64 tiles = (inner + 31) / 32;
        const i64 o = blockIdx.x / tiles, tile = blockIdx.x - o * tiles;
        const i64 i = tile * 32 + threadIdx.x;
        const i64 s = blockIdx.y, splits = gridDim.y;
        const i64 start = s * chunk, end = min(n, start + chunk);
        T acc = r_id<T, MAX>();
        if (i < inner) {
            const T* base = x + o * n * inner + i;
            for (i64 j = start + threadIdx.y; j < end; j += 8) acc = r_comb<T, MAX>(acc, base[j * inner]);
        }
        sm[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && i < inner) {
    #pragma unroll
            for (int k = 1; k < 8; ++k) acc = r_comb<T, MAX>(acc, sm[k][threadIdx.x]);
            y[(o * splits + s) * inner + i] = acc;
        }
    }

    // ---- Row kernels: softmax and RMS normalisation over the last axis ----

    /// A warp per row, the row held in registers (VPL values per lane, cols <= 32 * VPL): one read, one write.
    template<typename T, int VPL> __device__ __forceinline__ void softmax_warp_impl(const T* x, T* y, i64 rows, i64 cols) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < rows; r += nw) {
            const T* px = x + r * cols;
            T* py = y + r * cols;
            T v[VPL];
            T m = -inf_<T>();
    #pragma unroll
            for (int c = 0; c < VPL; ++c) {
                const int i = lane + 32 * c;
                v[c] = i < cols ? px[i] : -inf_<T>();
                m = max_nan(m, v[c]);
            }
            m = warp_max(m);
            T s = 0;
    #pragma unroll
            for (int c = 0; c < VPL; ++c) {
                const int i = lane + 32 * c;
                v[c] = i < cols ? m_exp(v[c] - m) : T(0);
                s += v[c];
            }
            s = warp_sum(s);
            const T inv = T(1) / s;
    #pragma unroll
            for (int c = 0; c < VPL; ++c) {
                const int i = lane + 32 * c;
                if (i < cols) py[i] = v[c] * inv;
            }
        }
    }

    template<typename T> __device__ __forceinline__ void softmax_block_impl(const T* x, T* y, i64 rows, i64 cols) {
        __shared__ T sm[32];
        for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
            const T* px = x + r * cols;
            T* py = y + r * cols;
            T m = -inf_<T>();
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = max_nan(m, px[c]);
            m = block_reduce<T, true>(m, sm);
            T s = 0;
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) { const T e = m_exp(px[c] - m); py[c] = e; s += e; }
            s = block_reduce<T, false>(s, sm);
            const T inv = T(1) / s;
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) py[c] = py[c] * inv;
        }
    }

    // y = x r s + t, r = 1 / sqrt(mean(x^2) + eps), over [batch, rows, cols] (nrows = batch * rows) with s and t
    // per (batch entry, column); s null: plain RMS normalisation, t null: no shift; y16 (null: none) y's bf16 copy.
    // A warp per row, the row in registers; the normalised row is never stored.
    template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_warp_impl(const T* x, const T* s, const T* t, T* y,
                                                                                           unsigned short* y16, i64 nrows, i64 rows,
                                                                                           i64 cols, T eps) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < nrows; r += nw) {
            const T* px = x + r * cols;
            const i64 so = (r / rows) * cols;
            T* py = y + r * cols;
            T v[VPL];
            T ss = 0;
    #pragma unroll
            for (int c = 0; c < VPL; ++c) {
                const int i = lane + 32 * c;
                v[c] = i < cols ? px[i] : T(0);
                ss += v[c] * v[c];
            }
            ss = warp_sum(ss);
            const T inv = T(1) / m_sqrt(ss / T(cols) + eps);
    #pragma unroll
            for (int c = 0; c < VPL; ++c) {
                const int i = lane + 32 * c;
                if (i < cols) {
                    T o = v[c] * inv;
                    if (s) o *= s[so + i];
                    if (t) o += t[so + i];
                    py[i] = o;
                    store_bf16_one(y16, r * cols + i, o);
                }
            }
        }
    }

    // Rows too long for registers: a block per row, the row read twice (the second time mostly from cache).
    template<typename T> __device__ __forceinline__ void rmsnorm_scaled_block_impl(const T* x, const T* s, const T* t, T* y,
                                                                                   unsigned short* y16, i64 nrows, i64 rows,
                                                                                   i64 cols, T eps) {
        __shared__ T sm[32];
        for (i64 r = blockIdx.x; r < nrows; r += gridDim.x) {
            const T* px = x + r * cols;
            const i64 so = (r / rows) * cols;
            T* py = y + r * cols;
            T ss = 0;
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) ss += px[c] * px[c];
            ss = block_reduce<T, false>(ss, sm);
            const T inv = T(1) / m_sqrt(ss / T(cols) + eps);
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
                T o = px[c] * inv;
                if (s) o *= s[so + c];
                if (t) o += t[so + c];
                py[c] = o;
                store_bf16_one(y16, r * cols + c, o);
            }
        }
    }

    // A warp per row; the row is read twice (the second time from cache for rows of a few thousand values).
    // out = r (d - y mean(y d)) + c, r = 1 / sqrt(mean(x^2) + eps): RMSNorm's JVP and VJP (see Backend.swift); c
    // (null: none) is a gradient already summed for the same input.
    template<typename T> __device__ __forceinline__ void rmsnorm_linear_impl(const T* x, const T* y, const T* d, const T* c,
                                                                             T* out, i64 rows, i64 cols, T eps) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < rows; r += nw) {
            const i64 o = r * cols;
            T xx = 0, yd = 0;
            for (i64 i = lane; i < cols; i += 32) { const T xv = x[o + i]; xx += xv * xv; yd += y[o + i] * d[o + i]; }
            xx = warp_sum(xx); yd = warp_sum(yd);
            const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), m = yd / n;
            for (i64 i = lane; i < cols; i += 32) {
                const T v = inv * (d[o + i] - y[o + i] * m);
                out[o + i] = c ? c[o + i] + v : v;
            }
        }
    }

    // Cotangents of rmsnorm_linear for g: gd = r (g - y mean(y g)), gy = -r (m g + d mean(y g)), gx = -r^2 mean(g f) x,
    // each plus its entry of cx, cy, cd where given.
    template<typename T> __device__ __forceinline__ void rmsnorm_linear_bwd_impl(const T* x, const T* y, const T* d, const T* g,
                                                                                 T* gx, T* gy, T* gd, const T* cx, const T* cy,
                                                                                 const T* cd, i64 rows, i64 cols, T eps) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < rows; r += nw) {
            const i64 o = r * cols;
            T xx = 0, yd = 0, yg = 0, gdd = 0;
            for (i64 i = lane; i < cols; i += 32) {
                const T xv = x[o + i], yv = y[o + i], dv = d[o + i], gv = g[o + i];
                xx += xv * xv; yd += yv * dv; yg += yv * gv; gdd += gv * dv;
            }
            xx = warp_sum(xx); yd = warp_sum(yd); yg = warp_sum(yg); gdd = warp_sum(gdd);
            const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), m = yd / n, myg = yg / n;
            const T sx = -inv * inv * inv * (gdd / n - m * myg);
            for (i64 i = lane; i < cols; i += 32) {
                const T yv = y[o + i], gv = g[o + i];
                const T vd = inv * (gv - yv * myg), vy = -inv * (m * gv + d[o + i] * myg), vx = sx * x[o + i];
                gd[o + i] = cd ? cd[o + i] + vd : vd;
                gy[o + i] = cy ? cy[o + i] + vy : vy;
                gx[o + i] = cx ? cx[o + i] + vx : vx;
            }
        }
    }

    // rmsnorm_scaled's tangent: out = s (r dx - r^3 mu x) + ds r x + dt with mu = mean(x dx) (r dx - r^3 mu x is
    // rmsnorm_linear's r (dx - n mean(n dx)), n = r x); ds, dt, y16 may be null. A warp per row: VPL > 0 holds a
    // row of at most 32 VPL values in registers, VPL = 0 reads it twice (the second time mostly from cache).
    template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_jvp_impl(const T* x, const T* dx, const T* s,
                                                                                          const T* ds, const T* dt, T* out,
                                                                                          unsigned short* y16, i64 nrows,
                                                                                          i64 rows, i64 cols, T eps) {
        constexpr int K = VPL > 0 ? VPL : 1;
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < nrows; r += nw) {
            const i64 o = r * cols, so = (r / rows) * cols;
            T xv[K], dv[K];
            T xx = 0, xd = 0;
            if constexpr (VPL > 0) {
    #pragma unroll
                for (int k = 0; k < VPL; ++k) {
                    const i64 i = lane + 32 * k;
                    xv[k] = i < cols ? x[o + i] : T(0);
                    dv[k] = i < cols ? dx[o + i] : T(0);
                }
    #pragma unroll
                for (int k = 0; k < VPL; ++k) { xx += xv[k] * xv[k]; xd += xv[k] * dv[k]; }
            } else {
                for (i64 i = lane; i < cols; i += 32) { const T v = x[o + i]; xx += v * v; xd += v * dx[o + i]; }
            }
            xx = warp_sum(xx); xd = warp_sum(xd);
            const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), q = inv * inv * inv * xd / n;
            auto put = [&](i64 i, T xi, T di) {
                T v = s[so + i] * (inv * di - q * xi);
                if (ds) v += ds[so + i] * (xi * inv);
                if (dt) v += dt[so + i];
                out[o + i] = v;
                store_bf16_one(y16, o + i, v);
            };
            if constexpr (VPL > 0) {
    #pragma unroll
                for (int k = 0; k < VPL; ++k) { const i64 i = lane + 32 * k; if (i < cols) put(i, xv[k], dv[k]); }
            } else {
                for (i64 i = lane; i < cols; i += 32) put(i, x[o + i], dx[o + i]);
            }
        }
    }

    // Cotangents for g of out = L(dx) sA + n sB + t (rmsnorm_scaled: dx, sA null; its tangent: sA = s, sB = ds or
    // null), L(dx) = r dx - r^3 mu x. With a = g sA, c = g sB and the row sums A = sum a dx, Xa = sum a x,
    // Xc = sum c x: gdx = r a - r^3 Xa x / D, gx = r c - r^3 mu a - r^3 Xa dx / D + x (3 r^5 mu Xa - r^3 A - r^3 Xc) / D,
    // each plus px / pdx where given. rowR, rowQ get r and r^3 mu per row for norm_col_sums.
    template<typename T> __device__ __forceinline__ void rmsnorm_scaled_bwd_impl(const T* x, const T* dx, const T* g, const T* sA,
                                                                                 const T* sB, T* gx, T* gdx, const T* px, const T* pdx,
                                                                                 T* rowR, T* rowQ, i64 nrows, i64 rows, i64 cols, T eps) {
        const int lane = threadIdx.x & 31;
        const i64 nw = gstride() >> 5;
        for (i64 r = gtid() >> 5; r < nrows; r += nw) {
            const i64 o = r * cols, so = (r / rows) * cols;
            T xx = 0, xd = 0, sa = 0, xa = 0, xc = 0;
            for (i64 i = lane; i < cols; i += 32) {
                const T xv = x[o + i], dv = dx ? dx[o + i] : T(0), gv = g[o + i];
                const T a = sA ? gv * sA[so + i] : T(0), c = sB ? gv * sB[so + i] : T(0);
                xx += xv * xv; xd += xv * dv; sa += a * dv; xa += a * xv; xc += c * xv;
            }
            xx = warp_sum(xx); xd = warp_sum(xd); sa = warp_sum(sa); xa = warp_sum(xa); xc = warp_sum(xc);
            const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), r3 = inv * inv * inv, mu = xd / n;
            const T ka = r3 * mu, kd = r3 * xa / n, kx = (T(3) * r3 * inv * inv * mu * xa - r3 * sa - r3 * xc) / n;
            for (i64 i = lane; i < cols; i += 32) {
                const T xv = x[o + i], dv = dx ? dx[o + i] : T(0), gv = g[o + i];
                const T a = sA ? gv * sA[so + i] : T(0), c = sB ? gv * sB[so + i] : T(0);
                const T vx = inv * c - ka * a - kd * dv + kx * xv;
                gx[o + i] = px ? px[o + i] + vx : vx;
                if (gdx) { const T vd = inv * a - kd * xv; gdx[o + i] = pdx ? pdx[o + i] + vd : vd; }
            }
            if (lane == 0) { rowR[r] = inv; rowQ[r] = ka; }
        }
    }

    // rmsnorm_scaled_bwd for rows of at most 32 VPL values, held in registers, with the column sums of
    // norm_col_sums in the same pass: a block of 8 warps takes rows [chunk * chunkRows, +chunkRows) of one batch
    // entry (blockIdx.y = chunk * batch + entry, as row_sums), each lane keeps its columns' sums over its warp's
    // rows, and the 8 warps add theirs through shared memory in a fixed order (deterministic). o0, o1, o2 (null:
    // not wanted) get the block's sums at (chunk * batch + entry) * cols.
    template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_bwd_rows_impl(
            const T* x, const T* dx, const T* g, const T* sA, const T* sB, T* gx, T* gdx, const T* px, const T* pdx,
            T* o0, T* o1, T* o2, i64 rows, i64 cols, i64 batch, i64 chunkRows, T eps) {
        __shared__ T part[8][32 * VPL];
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const i64 bi = blockIdx.y % batch, chunk = blockIdx.y / batch, so = bi * cols;
        const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
        T fa[VPL], fb[VPL], acc[3][VPL];
    #pragma unroll
        for (int k = 0; k < VPL; ++k) {
            const i64 i = lane + 32 * k;
            fa[k] = sA && i < cols ? sA[so + i] : T(0);
            fb[k] = sB && i < cols ? sB[so + i] : T(0);
            acc[0][k] = acc[1][k] = acc[2][k] = T(0);
        }
        for (i64 rr = first + warp; rr < end; rr += 8) {
            const i64 o = (bi * rows + rr) * cols;
            T xv[VPL], dv[VPL], gv[VPL];
    #pragma unroll
            for (int k = 0; k < VPL; ++k) {
                const i64 i = lane + 32 * k;
                const bool in = i < cols;
                xv[k] = in ? x[o + i] : T(0);
                dv[k] = in && dx ? dx[o + i] : T(0);
                gv[k] = in ? g[o + i] : T(0);
            }
            T xx = 0, xd = 0, sa = 0, xa = 0, xc = 0;
    #pragma unroll
            for (int k = 0; k < VPL; ++k) {
                const T a = gv[k] * fa[k], c = gv[k] * fb[k];
                xx += xv[k] * xv[k]; xd += xv[k] * dv[k]; sa += a * dv[k]; xa += a * xv[k]; xc += c * xv[k];
            }
            xx = warp_sum(xx); xd = warp_sum(xd); sa = warp_sum(sa); xa = warp_sum(xa); xc = warp_sum(xc);
            const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), r3 = inv * inv * inv, mu = xd / n;
            const T ka = r3 * mu, kd = r3 * xa / n, kx = (T(3) * r3 * inv * inv * mu * xa - r3 * sa - r3 * xc) / n;
    #pragma unroll
            for (int k = 0; k < VPL; ++k) {
                const i64 i = lane + 32 * k;
                if (i < cols) {
                    const T a = gv[k] * fa[k], c = gv[k] * fb[k];
                    const T vx = inv * c - ka * a - kd * dv[k] + kx * xv[k];
                    gx[o + i] = px ? px[o + i] + vx : vx;
                    if (gdx) { const T vd = inv * a - kd * xv[k]; gdx[o + i] = pdx ? pdx[o + i] + vd : vd; }
                }
                acc[0][k] += gv[k] * (xv[k] * inv);
                acc[1][k] += gv[k] * (inv * dv[k] - ka * xv[k]);
                acc[2][k] += gv[k];
            }
        }
        T* outs[3] = {o0, o1, o2};
    #pragma unroll
        for (int m = 0; m < 3; ++m) {
            if (!outs[m]) continue;
    #pragma unroll
            for (int k = 0; k < VPL; ++k) part[warp][lane + 32 * k] = acc[m][k];
            __syncthreads();
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
                T v = 0;
    #pragma unroll
                for (int w = 0; w < 8; ++w) v += part[w][c];
                outs[m][(chunk * batch + bi) * cols + c] = v;
            }
            __syncthreads();
        }
    }

    // Column sums after rmsnorm_scaled_bwd: o0 = sum g n (n = r x), o1 = sum g L(dx) (L(dx) = r dx - q x), o2 =
    // sum g over each batch entry's rows, with r and q per row from rowR, rowQ; null outputs are skipped. Grid,
    // block and chunks as row_sums.
    template<typename T> __device__ __forceinline__ void norm_col_sums_impl(const T* g, const T* x, const T* dx, const T* rowR,
                                                                            const T* rowQ, T* o0, T* o1, T* o2, i64 rows,
                                                                            i64 cols, i64 batch, i64 chunkRows) {
        __shared__ T part[3][8][33];
        const i64 col = (i64)blockIdx.x * 32 + threadIdx.x, bi = blockIdx.y % batch, chunk = blockIdx.y / batch;
        const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
        T acc[3] = {0, 0, 0};
        if (col < cols) {
            for (i64 r0 = first + threadIdx.y; r0 < end; r0 += 32) {
                T gv[4], xv[4], dv[4], rr[4], qq[4];
    #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const i64 r = r0 + 8 * j, row = bi * rows + r, o = row * cols + col;
                    const bool in = r < end;
                    gv[j] = in ? g[o] : T(0);
                    xv[j] = in && (o0 || o1) ? x[o] : T(0);
                    dv[j] = in && o1 ? dx[o] : T(0);
                    rr[j] = in ? rowR[row] : T(0);
                    qq[j] = in && o1 ? rowQ[row] : T(0);
                }
    #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[0] += gv[j] * (xv[j] * rr[j]);
                    acc[1] += gv[j] * (rr[j] * dv[j] - qq[j] * xv[j]);
                    acc[2] += gv[j];
                }
            }
        }
    #pragma unroll
        for (int k = 0; k < 3; ++k) part[k][threadIdx.y][threadIdx.x] = acc[k];
        __syncthreads();
        if (threadIdx.y == 0 && col < cols) {
            T* outs[3] = {o0, o1, o2};
            for (int k = 0; k < 3; ++k) {
                if (!outs[k]) continue;
                T v = 0;
    #pragma unroll
                for (int j = 0; j < 8; ++j) v += part[k][j][threadIdx.x];
                outs[k][(chunk * batch + bi) * cols + col] = v;
            }
        }
    }

    // y = a s + b t + c over [batch, rows, cols], s and t per (batch, column). Block (32, 8): a warp per row.
    template<typename T> __device__ __forceinline__ void scaled_sum_impl(const T* a, const T* s, const T* b, const T* t,
                                                                         const T* c, int cFull, T* y, i64 nrows, i64 rows, i64 cols) {
        for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < nrows; r += (i64)gridDim.x * blockDim.y) {
            const i64 o = r * cols, so = (r / rows) * cols, co = cFull ? o : so;
            for (i64 i = threadIdx.x; i < cols; i += 32) {
                T v = a[o + i] * s[so + i];
                if (b) v += b[o + i] * t[so + i];
                if (c) v += c[co + i];
                y[o + i] = v;
            }
        }
    }

    // out_k[b, c] = sum_r g[b, r, c] x_k[b, r, c] (x_k null: of g). Grid (column blocks of 32, batch), block
    // (32, 8): the 8 warps take every 8th row, then add up through shared memory (fixed order: deterministic).
    /// Block (32 x 8) per 32 columns of one batch entry and one chunk of its rows: blockIdx.y = chunk * batch + entry.
    /// Chunk c writes its partial sums at outputs (c * batch + entry) * cols; with one chunk, the sums themselves.
    template<typename T> __device__ __forceinline__ void row_sums_impl(const T* g, const T* x0, const T* x1, const T* x2,
                                                                       T* o0, T* o1, T* o2, int nout, i64 rows, i64 cols,
                                                                       i64 batch, i64 chunkRows) {
        __shared__ T part[3][8][33];
        const i64 col = (i64)blockIdx.x * 32 + threadIdx.x, bi = blockIdx.y % batch, chunk = blockIdx.y / batch;
        const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
        const T* xs[3] = {x0, x1, x2};
        T acc[3] = {0, 0, 0};
        if (col < cols) {
            // Four rows per iteration, all loads issued before any use: one row at a time left too few loads
            // in flight (about 1 TB/s in the training-step profile).
            for (i64 r0 = first + threadIdx.y; r0 < end; r0 += 32) {
                T gv[4], xv[3][4];
    #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const i64 r = r0 + 8 * j, o = (bi * rows + r) * cols + col;
                    const bool in = r < end;
                    gv[j] = in ? g[o] : T(0);
    #pragma unroll
                    for (int k = 0; k < 3; ++k) xv[k][j] = (k < nout && xs[k] && in) ? xs[k][o] : T(1);
                }
    #pragma unroll
                for (int j = 0; j < 4; ++j) {
    #pragma unroll
                    for (int k = 0; k < 3; ++k) if (k < nout) acc[k] += gv[j] * xv[k][j];
                }
            }
        }
    #pragma unroll
        for (int k = 0; k < 3; ++k) part[k][threadIdx.y][threadIdx.x] = acc[k];
        __syncthreads();
        if (threadIdx.y == 0 && col < cols) {
            T* outs[3] = {o0, o1, o2};
            for (int k = 0; k < nout; ++k) {
                T v = 0;
    #pragma unroll
                for (int j = 0; j < 8; ++j) v += part[k][j][threadIdx.x];
                outs[k][(chunk * batch + bi) * cols + col] = v;
            }
        }
    }

    // ---- Rows by index (indices are floats holding whole numbers) ----

    /// Block (32 x 8): each warp copies whole rows. A bad index sets *err and writes NaN.
    template<typename T> __device__ __forceinline__ void gather_impl(const T* table, const T* idx, T* y, i64 rows,
                                                                     i64 cols, i64 tableRows, int* err) {
        for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
            const T f = idx[r];
            const i64 t = (i64)f;
            const bool ok = !is_nan(f) && t >= 0 && t < tableRows;
            if (!ok && threadIdx.x == 0) atomicExch(err, 1);
            for (i64 c = threadIdx.x; c < cols; c += 32) y[r * cols + c] = ok ? table[t * cols + c] : nan_<T>();
        }
    }

    template<typename T> __device__ __forceinline__ void scatter_add_impl(const T* x, const T* idx, T* table, i64 rows,
                                                                          i64 cols, i64 tableRows, int* err) {
        for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
            const T f = idx[r];
            const i64 t = (i64)f;
            if (is_nan(f) || t < 0 || t >= tableRows) {
                if (threadIdx.x == 0) atomicExch(err, 2);
                continue;
            }
            for (i64 c = threadIdx.x; c < cols; c += 32) atomicAdd(table + t * cols + c, x[r * cols + c]);
        }
    }

    // ---- Philox4x32-10 and Box-Muller, exactly as TensorCore's Philox (Random.swift) ----

    struct U4 { u32 x, y, z, w; };
    __device__ __forceinline__ U4 philox(u64 seed, u64 counter) {
        u32 c0 = (u32)counter, c1 = (u32)(counter >> 32), c2 = 0, c3 = 0;
        u32 k0 = (u32)seed, k1 = (u32)(seed >> 32);
    #pragma unroll
        for (int r = 0; r < 10; ++r) {
            const u32 hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
            const u32 hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
            const u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
            c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
            k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
        }
        U4 r; r.x = c0; r.y = c1; r.z = c2; r.w = c3;
        return r;
    }
    __device__ __forceinline__ float unit_(u32 u) { return (float)(u >> 8) * (1.0f / 16777216.0f); }
    __device__ __forceinline__ float unit_open(u32 u) { return (float)((u >> 8) + 1u) * (1.0f / 16777216.0f); }
    __device__ __forceinline__ void box_muller(u32 a, u32 b, float& z0, float& z1) {
        const float r = sqrtf(-2.0f * logf(unit_open(a)));
        // Swift's Float.pi is pi rounded toward zero (0x40490FDA), and 2 * Float.pi is 0x40C90FDA.
        const float theta = __int_as_float(0x40C90FDA) * unit_(b);
        z0 = r * cosf(theta);
        z1 = r * sinf(theta);
    }

    template<typename T> __device__ __forceinline__ void random_impl(T* y, i64 n, u64 seed, u64 counter, int normal) {
        const i64 blocks = (n + 3) / 4;
        for (i64 b = gtid(); b < blocks; b += gstride()) {
            const U4 r = philox(seed, counter + (u64)b);
            float v0, v1, v2, v3;
            if (normal) { box_muller(r.x, r.y, v0, v1); box_muller(r.z, r.w, v2, v3); }
            else { v0 = unit_(r.x); v1 = unit_(r.y); v2 = unit_(r.z); v3 = unit_(r.w); }
            const i64 base = b * 4;
            y[base] = (T)v0;
            if (base + 1 < n) y[base + 1] = (T)v1;
            if (base + 2 < n) y[base + 2] = (T)v2;
            if (base + 3 < n) y[base + 3] = (T)v3;
        }
    }

    // ---- Optimizer ----

    template<typename T> __device__ __forceinline__ void adamw_one(T& p, T g, T& m, T& v, T stepSize, T sqrtBc2,
                                                                   T decay, T b1, T b2, T eps, T gs) {
        const T gi = g * gs;
        const T mi = b1 * m + (T(1) - b1) * gi;
        const T vi = b2 * v + (T(1) - b2) * gi * gi;
        m = mi;
        v = vi;
        p = p * decay - stepSize * mi / (m_sqrt(vi) / sqrtBc2 + eps);
    }

    template<typename T> __device__ __forceinline__ void adamw_impl(T* p, const T* g, T* m, T* v, i64 n, T stepSize,
                                                                    T sqrtBc2, T decay, T b1, T b2, T eps, T gs) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        for (i64 i = t; i < np; i += st) {
            Pack<T> pp = ((Pack<T>*)p)[i], pg = ((const Pack<T>*)g)[i], pm = ((Pack<T>*)m)[i], pv = ((Pack<T>*)v)[i];
    #pragma unroll
            for (int k = 0; k < P; ++k) adamw_one(pp.v[k], pg.v[k], pm.v[k], pv.v[k], stepSize, sqrtBc2, decay, b1, b2, eps, gs);
            ((Pack<T>*)p)[i] = pp; ((Pack<T>*)m)[i] = pm; ((Pack<T>*)v)[i] = pv;
        }
        for (i64 i = np * P + t; i < n; i += st) adamw_one(p[i], g[i], m[i], v[i], stepSize, sqrtBc2, decay, b1, b2, eps, gs);
    }

    template<typename T> __device__ __forceinline__ void ema_impl(T* e, const T* p, i64 n, T d) {
        constexpr int P = 16 / sizeof(T);
        const i64 np = n / P, t = gtid(), st = gstride();
        for (i64 i = t; i < np; i += st) {
            Pack<T> pe = ((Pack<T>*)e)[i], pp = ((const Pack<T>*)p)[i];
    #pragma unroll
            for (int k = 0; k < P; ++k) pe.v[k] = pp.v[k] + d * (pe.v[k] - pp.v[k]);
            ((Pack<T>*)e)[i] = pe;
        }
        for (i64 i = np * P + t; i < n; i += st) e[i] = p[i] + d * (e[i] - p[i]);
    }

    extern "C" __global__ void __launch_bounds__(256) convert_f32_f64(const float* x, double* y, i64 n) {
        for (i64 i = gtid(); i < n; i += gstride()) y[i] = (double)x[i];
    }
    extern "C" __global__ void __launch_bounds__(256) convert_f64_f32(const double* x, float* y, i64 n) {
        for (i64 i = gtid(); i < n; i += gstride()) y[i] = (float)x[i];
    }
    /// Four values per thread and step (16 bytes in, 8 out); storages start 16-byte aligned.
    extern "C" __global__ void __launch_bounds__(256) convert_f32_bf16(const float* x, unsigned short* y, i64 n) {
        const i64 packs = n / 4;
        for (i64 i = gtid(); i < packs; i += gstride()) {
            const float4 v = reinterpret_cast<const float4*>(x)[i];
            uint2 o;
            o.x = (u32)bf16_bits(v.x) | ((u32)bf16_bits(v.y) << 16);
            o.y = (u32)bf16_bits(v.z) | ((u32)bf16_bits(v.w) << 16);
            reinterpret_cast<uint2*>(y)[i] = o;
        }
        for (i64 i = packs * 4 + gtid(); i < n; i += gstride()) y[i] = bf16_bits(x[i]);
    }
    """#

    /// The CUDA body of each unary op: the same formulas as TensorCore's CPUFloat.swift (`x` in, a `T` out).
    /// Exhaustive, so a new UnaryOp case fails to build here until it has a kernel.
    static func unaryBody(_ op: UnaryOp) -> String {
        switch op {
        case .neg: return "return -x;"
        case .exp: return "return m_exp(x);"
        case .log: return "return m_log(x);"
        case .sqrt: return "return m_sqrt(x);"
        case .rsqrt: return "return T(1) / m_sqrt(x);"
        case .reciprocal: return "return T(1) / x;"
        case .square: return "return x * x;"
        case .sin: return "return m_sin(x);"
        case .cos: return "return m_cos(x);"
        case .tanh: return "return m_tanh(x);"
        case .sigmoid: return "return sigm(x);"
        case .silu: return "return x * sigm(x);"
        case .siluD1: return "const T s = sigm(x); return s * (T(1) + x * (T(1) - s));"
        case .siluD2: return "const T s = sigm(x); return s * (T(1) - s) * (T(2) + x * (T(1) - T(2) * s));"
        case .gelu: return "return x * sigm(T(2) * T(GELU_C) * (x + T(GELU_K) * x * x * x));"
        case .geluD1:
            return """
            const T x2 = x * x; const T u = T(GELU_C) * (x + T(GELU_K) * x2 * x);
            const T du = T(GELU_C) * (T(1) + T(3) * T(GELU_K) * x2); const T s = sigm(T(2) * u);
            return s + T(2) * x * s * (T(1) - s) * du;
            """
        case .geluD2:
            return """
            const T x2 = x * x; const T u = T(GELU_C) * (x + T(GELU_K) * x2 * x);
            const T du = T(GELU_C) * (T(1) + T(3) * T(GELU_K) * x2); const T s = sigm(T(2) * u);
            const T th = T(2) * s - T(1), d2u = T(6) * T(GELU_C) * T(GELU_K) * x;
            return T(4) * s * (T(1) - s) * (du + T(0.5) * x * (d2u - T(2) * th * du * du));
            """
        case .isFinite: return "return m_abs(x) < inf_<T>() ? T(1) : T(0);"
        }
    }

    static func binaryBody(_ op: BinaryOp) -> String {
        switch op {
        case .add: return "return a + b;"
        case .sub: return "return a - b;"
        case .mul: return "return a * b;"
        case .div: return "return a / b;"
        case .maximum: return "return max_nan(a, b);"
        case .minimum: return "return min_nan(a, b);"
        case .greater: return "return a > b ? T(1) : T(0);"
        case .greaterEqual: return "return a >= b ? T(1) : T(0);"
        case .equal: return "return a == b ? T(1) : T(0);"
        }
    }

    /// Values per lane of the warp-per-row softmax and RMS-norm kernels (rows of up to 32 * 64 values).
    static let rowWidths = [1, 2, 4, 8, 16, 32, 48, 64]
    /// Row widths (values per lane) of the register-row kernels of rmsNormScaled's tangent: rows of up to 512
    /// values (DiT-S and every head dimension); longer rows take the kernel that reads them twice.
    static let normRowWidths = [1, 2, 4, 8, 12, 16]
    /// Row widths of rmsNormScaled's backward with the column sums in the same pass: rows of up to 128 values (q/k
    /// norms over a head). Wider rows take a row pass and a column-sum pass: the per-lane sums need so many
    /// registers there that one block fits per SM (H100, DiT-S/2 rows of 384: 285 us against about 190 us per call).
    static let normBackwardRowWidths = [1, 2, 4]

    /// Activations with fused value-and-tangent and backward kernels (UnaryOp.derivatives).
    static let fusedActivations: [UnaryOp] = [.silu, .gelu]

    static let binaryOps: [BinaryOp] = [.add, .sub, .mul, .div, .maximum, .minimum, .greater, .greaterEqual, .equal]

    static func binaryIndex(_ op: BinaryOp) -> Int {
        switch op {
        case .add: return 0
        case .sub: return 1
        case .mul: return 2
        case .div: return 3
        case .maximum: return 4
        case .minimum: return 5
        case .greater: return 6
        case .greaterEqual: return 7
        case .equal: return 8
        }
    }

    /// Entry points of the core family for one element type.
    static func coreEntryPoints(_ dtype: DType) -> String {
        let T = ctype(dtype), s = suffix(dtype)
        var out = ""
        for op in UnaryOp.allCases {
            out += "struct UF_\(op) { template<typename T> __device__ static __forceinline__ T f(T x) { \(unaryBody(op)) } };\n"
            out += "extern \"C\" __global__ void __launch_bounds__(256) unary_\(op)_\(s)(const \(T)* x, \(T)* y, i64 n) "
                + "{ unary_impl<\(T), UF_\(op)>(x, y, n); }\n"
        }
        for op in fusedActivations {
            let (d1, d2) = op.derivatives!
            out += "extern \"C\" __global__ void __launch_bounds__(256) act_tangent_\(op)_\(s)(const \(T)* x, const \(T)* t, \(T)* y, \(T)* ty, unsigned short* y16, unsigned short* ty16, i64 n) "
                + "{ act_tangent_impl<\(T), UF_\(op), UF_\(d1)>(x, t, y, ty, y16, ty16, n); }\n"
            out += "extern \"C\" __global__ void __launch_bounds__(256) act_tangent_bwd_\(op)_\(s)(const \(T)* x, const \(T)* t, const \(T)* gy, const \(T)* gty, \(T)* gx, \(T)* gt, unsigned short* gx16, unsigned short* gt16, i64 n) "
                + "{ act_tangent_bwd_impl<\(T), UF_\(d1), UF_\(d2)>(x, t, gy, gty, gx, gt, gx16, gt16, n); }\n"
            out += "extern \"C\" __global__ void __launch_bounds__(256) act_bwd_\(op)_\(s)(const \(T)* x, const \(T)* g, \(T)* gx, unsigned short* gx16, i64 n) "
                + "{ act_bwd_impl<\(T), UF_\(d1)>(x, g, gx, gx16, n); }\n"
        }
        for op in binaryOps {
            out += "struct BF_\(op) { template<typename T> __device__ static __forceinline__ T f(T a, T b) { \(binaryBody(op)) } };\n"
            for mode in 0..<3 {
                out += "extern \"C\" __global__ void __launch_bounds__(256) binary_\(op)_d\(mode)_\(s)(const \(T)* a, const \(T)* b, \(T)* y, i64 n) "
                    + "{ binary_dense_impl<\(T), BF_\(op), \(mode)>(a, b, y, n); }\n"
            }
            out += "extern \"C\" __global__ void __launch_bounds__(256) binary_\(op)_rows_\(s)(View2 v, const \(T)* a, const \(T)* b, \(T)* y, i64 rows, i64 inner, i64 chunk, int ia, int ib) "
                + "{ binary_rows_impl<\(T), BF_\(op)>(v, a, b, y, rows, inner, chunk, ia, ib); }\n"
            for (tag, I) in [("32", "int"), ("64", "i64")] {
                out += "extern \"C\" __global__ void __launch_bounds__(256) binary_\(op)_s\(tag)_\(s)(View2 v, const \(T)* a, const \(T)* b, \(T)* y, i64 n) "
                    + "{ binary_strided_impl<\(T), BF_\(op), \(I)>(v, a, b, y, n); }\n"
            }
        }
        for w in rowWidths {
            out += "extern \"C\" __global__ void __launch_bounds__(256) softmax_warp\(w)_\(s)(const \(T)* x, \(T)* y, i64 rows, i64 cols) "
                + "{ softmax_warp_impl<\(T), \(w)>(x, y, rows, cols); }\n"
            out += "extern \"C\" __global__ void __launch_bounds__(256) rmsnorm_warp\(w)_\(s)(const \(T)* x, \(T)* y, i64 rows, i64 cols, \(T) eps) "
                + "{ rmsnorm_scaled_warp_impl<\(T), \(w)>(x, nullptr, nullptr, y, nullptr, rows, rows, cols, eps); }\n"
            out += "extern \"C\" __global__ void __launch_bounds__(256) rmsnorm_scaled_warp\(w)_\(s)(const \(T)* x, const \(T)* s, const \(T)* t, \(T)* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols, \(T) eps) "
                + "{ rmsnorm_scaled_warp_impl<\(T), \(w)>(x, s, t, y, y16, nrows, rows, cols, eps); }\n"
        }
        for w in normRowWidths {
            out += "extern \"C\" __global__ void __launch_bounds__(256) rmsnorm_scaled_jvp_w\(w)_\(s)(const \(T)* x, const \(T)* dx, const \(T)* s, const \(T)* ds, const \(T)* dt, \(T)* out, unsigned short* y16, i64 nrows, i64 rows, i64 cols, \(T) eps) "
                + "{ rmsnorm_scaled_jvp_impl<\(T), \(w)>(x, dx, s, ds, dt, out, y16, nrows, rows, cols, eps); }\n"
        }
        for w in normBackwardRowWidths {
            out += "extern \"C\" __global__ void __launch_bounds__(256) rmsnorm_scaled_bwd_w\(w)_\(s)(const \(T)* x, const \(T)* dx, const \(T)* g, const \(T)* sA, const \(T)* sB, \(T)* gx, \(T)* gdx, const \(T)* px, const \(T)* pdx, \(T)* o0, \(T)* o1, \(T)* o2, i64 rows, i64 cols, i64 batch, i64 chunkRows, \(T) eps) "
                + "{ rmsnorm_scaled_bwd_rows_impl<\(T), \(w)>(x, dx, g, sA, sB, gx, gdx, px, pdx, o0, o1, o2, rows, cols, batch, chunkRows, eps); }\n"
        }
        out += """
        extern "C" __global__ void __launch_bounds__(256) copy_rows_\(s)(View2 v, const \(T)* x, \(T)* y, i64 rows, i64 inner, i64 chunk, int ix) { copy_rows_impl<\(T)>(v, x, y, rows, inner, chunk, ix); }
        extern "C" __global__ void __launch_bounds__(256) copy_s32_\(s)(View2 v, const \(T)* x, \(T)* y, i64 n) { copy_strided_impl<\(T), int>(v, x, y, n); }
        extern "C" __global__ void __launch_bounds__(256) copy_s64_\(s)(View2 v, const \(T)* x, \(T)* y, i64 n) { copy_strided_impl<\(T), i64>(v, x, y, n); }
        extern "C" __global__ void __launch_bounds__(256) affine_\(s)(const \(T)* x, \(T)* y, i64 n, \(T) a, \(T) b) { affine_impl<\(T)>(x, y, n, a, b); }
        extern "C" __global__ void __launch_bounds__(256) fill_\(s)(\(T)* y, i64 n, \(T) v) { fill_impl<\(T)>(y, n, v); }
        extern "C" __global__ void __launch_bounds__(256) select_\(s)(const \(T)* c, const \(T)* a, const \(T)* b, \(T)* y, i64 n) { select_impl<\(T)>(c, a, b, y, n); }
        extern "C" __global__ void __launch_bounds__(256) reduce_rows_block_sum_\(s)(const \(T)* x, \(T)* y, i64 n, i64 chunk) { reduce_rows_block_impl<\(T), false>(x, y, n, chunk); }
        extern "C" __global__ void __launch_bounds__(256) reduce_rows_block_max_\(s)(const \(T)* x, \(T)* y, i64 n, i64 chunk) { reduce_rows_block_impl<\(T), true>(x, y, n, chunk); }
        extern "C" __global__ void __launch_bounds__(256) reduce_rows_warp_sum_\(s)(const \(T)* x, \(T)* y, i64 outer, i64 n) { reduce_rows_warp_impl<\(T), false>(x, y, outer, n); }
        extern "C" __global__ void __launch_bounds__(256) reduce_rows_warp_max_\(s)(const \(T)* x, \(T)* y, i64 outer, i64 n) { reduce_rows_warp_impl<\(T), true>(x, y, outer, n); }
        extern "C" __global__ void __launch_bounds__(256) reduce_cols_sum_\(s)(const \(T)* x, \(T)* y, i64 n, i64 inner, i64 chunk) { reduce_cols_impl<\(T), false>(x, y, n, inner, chunk); }
        extern "C" __global__ void __launch_bounds__(256) reduce_cols_max_\(s)(const \(T)* x, \(T)* y, i64 n, i64 inner, i64 chunk) { reduce_cols_impl<\(T), true>(x, y, n, inner, chunk); }
        extern "C" __global__ void __launch_bounds__(1024) softmax_block_\(s)(const \(T)* x, \(T)* y, i64 rows, i64 cols) { softmax_block_impl<\(T)>(x, y, rows, cols); }
        extern "C" __global__ void __launch_bounds__(1024) rmsnorm_block_\(s)(const \(T)* x, \(T)* y, i64 rows, i64 cols, \(T) eps) { rmsnorm_scaled_block_impl<\(T)>(x, nullptr, nullptr, y, nullptr, rows, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(1024) rmsnorm_scaled_block_\(s)(const \(T)* x, const \(T)* s, const \(T)* t, \(T)* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols, \(T) eps) { rmsnorm_scaled_block_impl<\(T)>(x, s, t, y, y16, nrows, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(256) rmsnorm_scaled_jvp_\(s)(const \(T)* x, const \(T)* dx, const \(T)* s, const \(T)* ds, const \(T)* dt, \(T)* out, unsigned short* y16, i64 nrows, i64 rows, i64 cols, \(T) eps) { rmsnorm_scaled_jvp_impl<\(T), 0>(x, dx, s, ds, dt, out, y16, nrows, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(256) rmsnorm_scaled_bwd_\(s)(const \(T)* x, const \(T)* dx, const \(T)* g, const \(T)* sA, const \(T)* sB, \(T)* gx, \(T)* gdx, const \(T)* px, const \(T)* pdx, \(T)* rowR, \(T)* rowQ, i64 nrows, i64 rows, i64 cols, \(T) eps) { rmsnorm_scaled_bwd_impl<\(T)>(x, dx, g, sA, sB, gx, gdx, px, pdx, rowR, rowQ, nrows, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(256) norm_col_sums_\(s)(const \(T)* g, const \(T)* x, const \(T)* dx, const \(T)* rowR, const \(T)* rowQ, \(T)* o0, \(T)* o1, \(T)* o2, i64 rows, i64 cols, i64 batch, i64 chunkRows) { norm_col_sums_impl<\(T)>(g, x, dx, rowR, rowQ, o0, o1, o2, rows, cols, batch, chunkRows); }
        extern "C" __global__ void __launch_bounds__(256) rmsnorm_linear_\(s)(const \(T)* x, const \(T)* y, const \(T)* d, const \(T)* c, \(T)* out, i64 rows, i64 cols, \(T) eps) { rmsnorm_linear_impl<\(T)>(x, y, d, c, out, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(256) rmsnorm_linear_bwd_\(s)(const \(T)* x, const \(T)* y, const \(T)* d, const \(T)* g, \(T)* gx, \(T)* gy, \(T)* gd, const \(T)* cx, const \(T)* cy, const \(T)* cd, i64 rows, i64 cols, \(T) eps) { rmsnorm_linear_bwd_impl<\(T)>(x, y, d, g, gx, gy, gd, cx, cy, cd, rows, cols, eps); }
        extern "C" __global__ void __launch_bounds__(256) scaled_sum_\(s)(const \(T)* a, const \(T)* s, const \(T)* b, const \(T)* t, const \(T)* c, int cFull, \(T)* y, i64 nrows, i64 rows, i64 cols) { scaled_sum_impl<\(T)>(a, s, b, t, c, cFull, y, nrows, rows, cols); }
        extern "C" __global__ void __launch_bounds__(256) row_sums_\(s)(const \(T)* g, const \(T)* x0, const \(T)* x1, const \(T)* x2, \(T)* o0, \(T)* o1, \(T)* o2, int nout, i64 rows, i64 cols, i64 batch, i64 chunkRows) { row_sums_impl<\(T)>(g, x0, x1, x2, o0, o1, o2, nout, rows, cols, batch, chunkRows); }
        extern "C" __global__ void __launch_bounds__(256) gather_\(s)(const \(T)* table, const \(T)* idx, \(T)* y, i64 rows, i64 cols, i64 tableRows, int* err) { gather_impl<\(T)>(table, idx, y, rows, cols, tableRows, err); }
        extern "C" __global__ void __launch_bounds__(256) scatter_add_\(s)(const \(T)* x, const \(T)* idx, \(T)* table, i64 rows, i64 cols, i64 tableRows, int* err) { scatter_add_impl<\(T)>(x, idx, table, rows, cols, tableRows, err); }
        extern "C" __global__ void __launch_bounds__(256) random_\(s)(\(T)* y, i64 n, u64 seed, u64 counter, int normal) { random_impl<\(T)>(y, n, seed, counter, normal); }
        extern "C" __global__ void __launch_bounds__(256) adamw_\(s)(\(T)* p, const \(T)* g, \(T)* m, \(T)* v, i64 n, \(T) stepSize, \(T) sqrtBc2, \(T) decay, \(T) b1, \(T) b2, \(T) eps, \(T) gs) { adamw_impl<\(T)>(p, g, m, v, n, stepSize, sqrtBc2, decay, b1, b2, eps, gs); }
        extern "C" __global__ void __launch_bounds__(256) ema_\(s)(\(T)* e, const \(T)* p, i64 n, \(T) d) { ema_impl<\(T)>(e, p, n, d); }

        """
        return out
    }

    // MARK: - Attention (a warp per query or key row; the fused flash kernels come later)

    static let attention = #"""
    /// Dot products of this lane's slice of a row with rows at `p` (DPL elements per lane, d of them valid).
    #define LANE_LOOP(c) for (int c = 0; c < DPL; ++c)

    template<typename T, int DPL> __device__ __forceinline__ void load_row(T (&r)[DPL], const T* p, int lane, int d) {
    #pragma unroll
        LANE_LOOP(c) { const int dd = lane + 32 * c; r[c] = dd < d ? p[dd] : T(0); }
    }
    template<typename T, int DPL> __device__ __forceinline__ T dot_row(const T (&r)[DPL], const T* p, int lane, int d) {
        T s = 0;
    #pragma unroll
        LANE_LOOP(c) { const int dd = lane + 32 * c; if (dd < d) s += r[c] * p[dd]; }
        return s;
    }
    template<typename T, int DPL> __device__ __forceinline__ T dot_reg(const T (&a)[DPL], const T (&b)[DPL]) {
        T s = 0;
    #pragma unroll
        LANE_LOOP(c) s += a[c] * b[c];
        return s;
    }

    /// One online-softmax step over KU keys starting at j: scores (and their tangents) for this warp's query row,
    /// then the running max m, sum l, tangent mean mu and the accumulators of O and of its tangent.
    template<typename T, int DPL, bool TAN, int KU>
    __device__ __forceinline__ void attn_fwd_step(int j, int lane, int d, i64 ld, T scale, const T* K, const T* V,
                                                  const T* TK, const T* TV, const T (&qr)[DPL], const T (&tqr)[DPL],
                                                  T (&acc)[DPL], T (&tacc)[DPL], T& m, T& l, T& mu) {
        T s[KU], ts[KU];
    #pragma unroll
        for (int u = 0; u < KU; ++u) {
            const i64 off = (j + u) * ld;
            T a = 0, b = 0;
    #pragma unroll
            LANE_LOOP(c) {
                const int dd = lane + 32 * c;
                if (dd < d) {
                    const T kv = K[off + dd];
                    a += qr[c] * kv;
                    if (TAN) b += tqr[c] * kv + qr[c] * TK[off + dd];
                }
            }
            s[u] = a; ts[u] = b;
        }
        T mn = m;
    #pragma unroll
        for (int u = 0; u < KU; ++u) {
            s[u] = warp_sum(s[u]) * scale;
            if (TAN) ts[u] = warp_sum(ts[u]) * scale;
            mn = s[u] > mn ? s[u] : mn;
        }
        const T alpha = m_exp(m - mn);
        T p[KU], psum = 0, pts = 0;
    #pragma unroll
        for (int u = 0; u < KU; ++u) { p[u] = m_exp(s[u] - mn); psum += p[u]; if (TAN) pts += p[u] * ts[u]; }
        l = l * alpha + psum;
        if (TAN) mu = mu * alpha + pts;
    #pragma unroll
        LANE_LOOP(c) {
            const int dd = lane + 32 * c;
            if (dd < d) {
                T a = acc[c] * alpha, b = TAN ? tacc[c] * alpha : T(0);
    #pragma unroll
                for (int u = 0; u < KU; ++u) {
                    const i64 off = (j + u) * ld + dd;
                    const T vv = V[off];
                    a += p[u] * vv;
                    if (TAN) b += p[u] * (ts[u] * vv + TV[off]);
                }
                acc[c] = a;
                if (TAN) tacc[c] = b;
            }
        }
        m = mn;
    }

    /// A warp per query row (rows = batch * heads * n, row = bh * n + i): o, lse, and with TAN the tangent
    /// to_i = sum_j P_ij tS_ij v_j - mu_i o_i + sum_j P_ij tv_j.
    template<typename T, int DPL, bool TAN>
    __device__ __forceinline__ void attn_fwd_impl(const T* q, const T* k, const T* v, const T* tq, const T* tk, const T* tv,
                                                  T* o, T* to, T* lse, i64 rows, int n, int heads, int d, T scale) {
        const int lane = threadIdx.x & 31;
        const i64 row = gtid() >> 5;
        if (row >= rows) return;
        const i64 head = row / n, hb = attn_head_offset(head, n, heads, d), ld = (i64)heads * d;
        const i64 ro = hb + (row - head * n) * ld;
        const T* K = k + hb; const T* V = v + hb;
        const T* TK = TAN ? tk + hb : nullptr; const T* TV = TAN ? tv + hb : nullptr;
        T qr[DPL], tqr[DPL], acc[DPL], tacc[DPL];
        load_row<T, DPL>(qr, q + ro, lane, d);
        if (TAN) load_row<T, DPL>(tqr, tq + ro, lane, d);
    #pragma unroll
        LANE_LOOP(c) { acc[c] = 0; tacc[c] = 0; }
        T m = -inf_<T>(), l = 0, mu = 0;
        int j = 0;
        for (; j + 4 <= n; j += 4) attn_fwd_step<T, DPL, TAN, 4>(j, lane, d, ld, scale, K, V, TK, TV, qr, tqr, acc, tacc, m, l, mu);
        for (; j < n; ++j) attn_fwd_step<T, DPL, TAN, 1>(j, lane, d, ld, scale, K, V, TK, TV, qr, tqr, acc, tacc, m, l, mu);
        const T inv = T(1) / l, muv = mu * inv;
    #pragma unroll
        LANE_LOOP(c) {
            const int dd = lane + 32 * c;
            if (dd < d) {
                const T ov = acc[c] * inv;
                o[ro + dd] = ov;
                if (TAN) to[ro + dd] = tacc[c] * inv - muv * ov;
            }
        }
        if (lane == 0) lse[row] = m + m_log(l);
    }

    /// The per-pair quantities of the backward pass for query row i and key row j (all lanes get them):
    /// s = q.k, ts = scale (tq.k + q.tk), gv = go.v, R = gto.v, gtv = gto.tv.
    template<typename T, bool TAN> struct Pair { T s, ts, gv, r, gtv; };

    /// dq, dtq and the row statistics (mu, rho, sum_j P dp) of each query row: a warp per query row,
    /// two passes over the keys (statistics, then the sums over j).
    template<typename T, int DPL, bool TAN>
    __device__ __forceinline__ void attn_bwd_rows_impl(const T* q, const T* k, const T* v, const T* tq, const T* tk,
                                                       const T* tv, const T* lse, const T* go, const T* gto,
                                                       T* dq, T* dtq, T* stats, i64 rows, int n, int heads, int d, T scale) {
        const int lane = threadIdx.x & 31;
        const i64 row = gtid() >> 5;
        if (row >= rows) return;
        const i64 head = row / n, hb = attn_head_offset(head, n, heads, d), ld = (i64)heads * d;
        const i64 ro = hb + (row - head * n) * ld;
        const T* K = k + hb; const T* V = v + hb;
        const T* TK = TAN ? tk + hb : nullptr; const T* TV = TAN ? tv + hb : nullptr;
        T qr[DPL], gor[DPL], tqr[DPL], gtor[DPL];
        load_row<T, DPL>(qr, q + ro, lane, d);
        load_row<T, DPL>(gor, go + ro, lane, d);
        if (TAN) { load_row<T, DPL>(tqr, tq + ro, lane, d); load_row<T, DPL>(gtor, gto + ro, lane, d); }
        const T L = lse[row];
        T mu = 0, rho = 0, A = 0, B = 0;
        for (int j = 0; j < n; ++j) {
            const i64 off = j * ld;
            T s = 0, ts = 0, gv = 0, r = 0, gtv = 0;
    #pragma unroll
            LANE_LOOP(c) {
                const int dd = lane + 32 * c;
                if (dd < d) {
                    const T kv = K[off + dd], vv = V[off + dd];
                    s += qr[c] * kv; gv += gor[c] * vv;
                    if (TAN) { ts += tqr[c] * kv + qr[c] * TK[off + dd]; r += gtor[c] * vv; gtv += gtor[c] * TV[off + dd]; }
                }
            }
            s = warp_sum(s); gv = warp_sum(gv);
            if (TAN) { ts = warp_sum(ts) * scale; r = warp_sum(r); gtv = warp_sum(gtv); }
            const T P = m_exp(scale * s - L);
            A += P * (gv + gtv);
            if (TAN) { mu += P * ts; rho += P * r; B += P * r * ts; }
        }
        const T dotPdP = TAN ? A + B - T(2) * mu * rho : A;
        T dqa[DPL], dtqa[DPL];
    #pragma unroll
        LANE_LOOP(c) { dqa[c] = 0; dtqa[c] = 0; }
        for (int j = 0; j < n; ++j) {
            const i64 off = j * ld;
            T s = 0, ts = 0, gv = 0, r = 0, gtv = 0;
    #pragma unroll
            LANE_LOOP(c) {
                const int dd = lane + 32 * c;
                if (dd < d) {
                    const T kv = K[off + dd], vv = V[off + dd];
                    s += qr[c] * kv; gv += gor[c] * vv;
                    if (TAN) { ts += tqr[c] * kv + qr[c] * TK[off + dd]; r += gtor[c] * vv; gtv += gtor[c] * TV[off + dd]; }
                }
            }
            s = warp_sum(s); gv = warp_sum(gv);
            if (TAN) { ts = warp_sum(ts) * scale; r = warp_sum(r); gtv = warp_sum(gtv); }
            const T P = m_exp(scale * s - L);
            const T dp = TAN ? gv + gtv + r * (ts - mu) - ts * rho : gv;
            const T dS = P * (dp - dotPdP);
            const T dtS = TAN ? P * (r - rho) : T(0);
    #pragma unroll
            LANE_LOOP(c) {
                const int dd = lane + 32 * c;
                if (dd < d) {
                    const T kv = K[off + dd];
                    dqa[c] += dS * kv;
                    if (TAN) { dqa[c] += dtS * TK[off + dd]; dtqa[c] += dtS * kv; }
                }
            }
        }
    #pragma unroll
        LANE_LOOP(c) {
            const int dd = lane + 32 * c;
            if (dd < d) {
                dq[ro + dd] = scale * dqa[c];
                if (TAN) dtq[ro + dd] = scale * dtqa[c];
            }
        }
        if (lane == 0) { stats[row * 3] = mu; stats[row * 3 + 1] = rho; stats[row * 3 + 2] = dotPdP; }
    }

    /// dk, dv, dtk, dtv: a warp per key row, one pass over the query rows of its head.
    template<typename T, int DPL, bool TAN>
    __device__ __forceinline__ void attn_bwd_cols_impl(const T* q, const T* k, const T* v, const T* tq, const T* tk,
                                                       const T* tv, const T* lse, const T* go, const T* gto,
                                                       const T* stats, T* dk, T* dv, T* dtk, T* dtv,
                                                       i64 rows, int n, int heads, int d, T scale) {
        const int lane = threadIdx.x & 31;
        const i64 row = gtid() >> 5;
        if (row >= rows) return;
        const i64 head = row / n, hb = attn_head_offset(head, n, heads, d), ld = (i64)heads * d, hr = head * n;
        const i64 ro = hb + (row - hr) * ld;
        const T* Q = q + hb; const T* GO = go + hb;
        const T* TQ = TAN ? tq + hb : nullptr; const T* GTO = TAN ? gto + hb : nullptr;
        T kr[DPL], vr[DPL], tkr[DPL], tvr[DPL];
        load_row<T, DPL>(kr, k + ro, lane, d);
        load_row<T, DPL>(vr, v + ro, lane, d);
        if (TAN) { load_row<T, DPL>(tkr, tk + ro, lane, d); load_row<T, DPL>(tvr, tv + ro, lane, d); }
        T dka[DPL], dva[DPL], dtka[DPL], dtva[DPL];
    #pragma unroll
        LANE_LOOP(c) { dka[c] = 0; dva[c] = 0; dtka[c] = 0; dtva[c] = 0; }
        for (int i = 0; i < n; ++i) {
            const i64 off = i * ld;
            T qi[DPL], goi[DPL], tqi[DPL], gtoi[DPL];
            load_row<T, DPL>(qi, Q + off, lane, d);
            load_row<T, DPL>(goi, GO + off, lane, d);
            if (TAN) { load_row<T, DPL>(tqi, TQ + off, lane, d); load_row<T, DPL>(gtoi, GTO + off, lane, d); }
            T s = dot_reg<T, DPL>(qi, kr), gv = dot_reg<T, DPL>(goi, vr), ts = 0, r = 0, gtv = 0;
            if (TAN) { ts = dot_reg<T, DPL>(tqi, kr) + dot_reg<T, DPL>(qi, tkr); r = dot_reg<T, DPL>(gtoi, vr); gtv = dot_reg<T, DPL>(gtoi, tvr); }
            s = warp_sum(s); gv = warp_sum(gv);
            if (TAN) { ts = warp_sum(ts) * scale; r = warp_sum(r); gtv = warp_sum(gtv); }
            const T P = m_exp(scale * s - lse[hr + i]);
            const T mu = TAN ? stats[(hr + i) * 3] : T(0), rho = TAN ? stats[(hr + i) * 3 + 1] : T(0);
            const T dotPdP = stats[(hr + i) * 3 + 2];
            const T dp = TAN ? gv + gtv + r * (ts - mu) - ts * rho : gv;
            const T dS = P * (dp - dotPdP);
            const T dtS = TAN ? P * (r - rho) : T(0);
            const T pt = TAN ? P * (ts - mu) : T(0);
    #pragma unroll
            LANE_LOOP(c) {
                dva[c] += P * goi[c];
                dka[c] += dS * qi[c];
                if (TAN) {
                    dva[c] += pt * gtoi[c];
                    dtva[c] += P * gtoi[c];
                    dka[c] += dtS * tqi[c];
                    dtka[c] += dtS * qi[c];
                }
            }
        }
    #pragma unroll
        LANE_LOOP(c) {
            const int dd = lane + 32 * c;
            if (dd < d) {
                dk[ro + dd] = scale * dka[c];
                dv[ro + dd] = dva[c];
                if (TAN) { dtk[ro + dd] = scale * dtka[c]; dtv[ro + dd] = dtva[c]; }
            }
        }
    }
    """#

    // MARK: - Flash attention (float32, head dims 64 and 72: tiled, tensor cores; see CUDA_NOTES.md)

    static let flash = #"""
    // Fused flash attention for float32 tensors and head dims 64 and 72 (KernelSource.flashDims): tiles of 16 query
    // (or key) rows per warp through tensor cores with float32 accumulators, in one of three operand precisions
    // (PREC, KernelSource.FlashPrecision). FP_X3 (the default float32 path) splits every operand x into
    // hi = tf32(x) and lo = tf32(x - hi) and sums lo*hi + hi*lo + hi*hi with mma.m16n8k8 TF32: three products for
    // about float32 accuracy (3xTF32). FP_TF32 (allowTF32) uses hi*hi alone. FP_BF16 (bf16Products) rounds q, k,
    // v, their tangents and the cotangents to bfloat16 when a tile is staged in shared memory, and the softmax
    // weights (and their tangents and gradients) when they become the left operand of the next product, as bf16
    // flash attention does, and multiplies with mma.m16n8k16 BF16: one instruction per 16 columns of k instead
    // of 2 (TF32) or 6 (3xTF32). Nothing of size seq x seq reaches memory: scores live in registers, one key (or
    // query) block at a time, with an online softmax in the forward pass and the saved row log-sum-exp in the
    // backward pass. Operands are token-major (attn_head_offset): grid.y runs over batch * heads, a head's rows
    // are heads * D floats apart, and lse and the row statistics are [batch * heads, n].
    //
    // Fragment layouts (g = lane / 4, t = lane % 4). mma.m16n8k8 TF32: A (16x8) a0 = A[g][t], a1 = A[g+8][t],
    // a2 = A[g][t+4], a3 = A[g+8][t+4]; B (8x8) b0 = B[t][g], b1 = B[t+4][g]. mma.m16n8k16 BF16 (two values per
    // register, the lower column in the lower half): A (16x16) a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1],
    // a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]; B (16x8) b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]. Both:
    // C (16x8) c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]. An accumulator tile becomes the A operand of
    // the next product without moving data between lanes: in TF32 as (c0, c2, c1, c3), its column 2t playing
    // k = t and 2t+1 playing k = t+4, the B operand read in the same order (rows 2t and 2t+1 of the tile); in
    // BF16 two adjacent tiles (columns 0-7 and 8-15) are exactly one A fragment of 16 columns. BF16 fragments come
    // from shared memory by ldmatrix (x4 for A, x2 for B, x2.trans for B = a row-major tile itself).
    #define FP_X3 0
    #define FP_TF32 1
    #define FP_BF16 2
    #ifndef TVM_EMULATE
    __device__ __forceinline__ u32 f2tf32(float x) { u32 r; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x)); return r; }
    __device__ __forceinline__ void mma_tf32(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    /// Two floats rounded to bfloat16 (to nearest even) in one register, lo in the lower half.
    __device__ __forceinline__ u32 bf16x2(float lo, float hi) { u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r; }
    __device__ __forceinline__ void ldsm_x4(u32 (&r)[4], const void* p) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((u32)__cvta_generic_to_shared(p)));
    }
    __device__ __forceinline__ void ldsm_x2(u32 (&r)[2], const void* p) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"((u32)__cvta_generic_to_shared(p)));
    }
    __device__ __forceinline__ void ldsm_x2_trans(u32 (&r)[2], const void* p) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"((u32)__cvta_generic_to_shared(p)));
    }
    __device__ __forceinline__ u32 dynamic_smem_bytes() { u32 r; asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r)); return r; }
    #endif

    /// Per precision: the shared-memory element (bf16 bits for FP_BF16), the columns of k one product step takes
    /// (in units of 8), whether operands are split (3xTF32), the columns of a tile (D, or D rounded up to 16 for
    /// BF16, the extra columns zero) and the tile pitch in elements (padded so that every fragment load, and every
    /// ldmatrix phase, touches 32 different banks: 68 / 76 floats, 72 / 88 bf16 values for D = 64 / 72).
    template<int PREC> struct FlashPrec {
        typedef float E;
        static constexpr int KS = 1;
        static constexpr bool SPLIT = PREC == FP_X3;
        template<int D> static constexpr int cols() { return D; }
        template<int D> static constexpr int ld() { return D + 4; }
    };
    template<> struct FlashPrec<FP_BF16> {
        typedef unsigned short E;
        static constexpr int KS = 2;
        static constexpr bool SPLIT = false;
        template<int D> static constexpr int cols() { return (D + 15) / 16 * 16; }
        template<int D> static constexpr int ld() { return cols<D>() + 8; }
    };

    /// A operand (TF32: 16x8, split into hi and lo parts for 3xTF32; BF16: 16x16 in h) and B operand (8x8; 16x8).
    template<int PREC> struct FragA { u32 h[4], l[4]; };
    template<int PREC> struct FragB { u32 h[2], l[2]; };

    template<int PREC> __device__ __forceinline__ void tf32_parts(float x, u32& h, u32& l) {
        h = f2tf32(x);
        l = FlashPrec<PREC>::SPLIT ? f2tf32(x - __uint_as_float(h)) : 0u;
    }
    template<int PREC> __device__ __forceinline__ FragA<PREC> frag_a(float x0, float x1, float x2, float x3) {
        FragA<PREC> f;
        tf32_parts<PREC>(x0, f.h[0], f.l[0]);
        tf32_parts<PREC>(x1, f.h[1], f.l[1]);
        tf32_parts<PREC>(x2, f.h[2], f.l[2]);
        tf32_parts<PREC>(x3, f.h[3], f.l[3]);
        return f;
    }
    template<int PREC> __device__ __forceinline__ FragB<PREC> frag_b(float x0, float x1) {
        FragB<PREC> f;
        tf32_parts<PREC>(x0, f.h[0], f.l[0]);
        tf32_parts<PREC>(x1, f.h[1], f.l[1]);
        return f;
    }
    /// c += a b (16x8x8 TF32, 16x8x16 BF16). With 3xTF32 the three products go into a zeroed accumulator, added
    /// to c with a rounded float add: the tensor cores' float32 accumulation truncates (rounds toward zero), a
    /// bias that grows with the number of products summed into one accumulator (measured 1.5e-5 relative at
    /// S = 1024 when a whole row's products went into one); this keeps it at three products' worth.
    template<int PREC> __device__ __forceinline__ void tc_mma(float (&c)[4], const FragA<PREC>& a, const FragB<PREC>& b) {
        if constexpr (PREC == FP_BF16) {
            mma_bf16(c, a.h, b.h[0], b.h[1]);
        } else if constexpr (PREC == FP_X3) {
            float d[4] = {0.f, 0.f, 0.f, 0.f};
            mma_tf32(d, a.l, b.h[0], b.h[1]);
            mma_tf32(d, a.h, b.l[0], b.l[1]);
            mma_tf32(d, a.h, b.h[0], b.h[1]);
    #pragma unroll
            for (int i = 0; i < 4; ++i) c[i] += d[i];
        } else {
            mma_tf32(c, a.h, b.h[0], b.h[1]);
        }
    }
    /// A operand from a row-major shared tile [rows][LD]: rows r0..r0+15, columns k0..k0+8*KS-1.
    template<int PREC, int LD> __device__ __forceinline__ FragA<PREC> lds_a(const typename FlashPrec<PREC>::E* s, int r0, int k0, int g, int t) {
        if constexpr (PREC == FP_BF16) {
            const int lane = 4 * g + t;
            FragA<PREC> f;
            ldsm_x4(f.h, s + (r0 + (lane & 15)) * LD + k0 + (lane >> 4) * 8);
            return f;
        } else {
            const float* p = s + (r0 + g) * LD + k0 + t;
            return frag_a<PREC>(p[0], p[8 * LD], p[4], p[8 * LD + 4]);
        }
    }
    /// B operand B[k][n] = Y[n0 + n][k0 + k] of a row-major shared tile Y [rows][LD] (a product with Y^T).
    template<int PREC, int LD> __device__ __forceinline__ FragB<PREC> lds_bt(const typename FlashPrec<PREC>::E* s, int n0, int k0, int g, int t) {
        if constexpr (PREC == FP_BF16) {
            const int lane = 4 * g + t;
            FragB<PREC> f;
            ldsm_x2(f.h, s + (n0 + (lane & 7)) * LD + k0 + ((lane >> 3) & 1) * 8);
            return f;
        } else {
            const float* p = s + (n0 + g) * LD + k0 + t;
            return frag_b<PREC>(p[0], p[4]);
        }
    }
    /// B operand B[k][n] = Y[k0 + k'][n0 + n] of a row-major shared tile Y: the right operand of a product with
    /// acc_a. TF32: k' in the accumulator order (k = t is row 2t, k = t+4 is row 2t+1); BF16: k' = k.
    template<int PREC, int LD> __device__ __forceinline__ FragB<PREC> lds_bn(const typename FlashPrec<PREC>::E* s, int k0, int n0, int g, int t) {
        if constexpr (PREC == FP_BF16) {
            const int lane = 4 * g + t;
            FragB<PREC> f;
            ldsm_x2_trans(f.h, s + (k0 + (lane & 15)) * LD + n0);
            return f;
        } else {
            const float* p = s + (k0 + 2 * t) * LD + n0 + g;
            return frag_b<PREC>(p[0], p[LD]);
        }
    }
    /// Accumulator tiles as the A operand of the next product (see above): TF32 takes c0 (columns 0-7 of k), BF16
    /// c0 and c1 (columns 0-15), rounded to bfloat16.
    template<int PREC> __device__ __forceinline__ FragA<PREC> acc_a(const float (&c0)[4], const float (&c1)[4]) {
        if constexpr (PREC == FP_BF16) {
            FragA<PREC> f;
            f.h[0] = bf16x2(c0[0], c0[1]);
            f.h[1] = bf16x2(c0[2], c0[3]);
            f.h[2] = bf16x2(c1[0], c1[1]);
            f.h[3] = bf16x2(c1[2], c1[3]);
            return f;
        } else {
            return frag_a<PREC>(c0[0], c0[2], c0[1], c0[3]);
        }
    }

    /// Rows row0..row0+ROWS-1 of a head (n rows of D floats, `ld` apart from `src`) into a shared tile
    /// [ROWS][LD] of FlashPrec<PREC>::cols<D>() columns (16-byte loads: src and ld are multiples of 4 floats;
    /// rows past n and columns past D are zeros), rounded to bfloat16 for FP_BF16.
    template<int D, int ROWS, int THREADS, int PREC>
    __device__ __forceinline__ void flash_load(typename FlashPrec<PREC>::E* s, const float* __restrict__ src, i64 ld, int row0, int n) {
        constexpr int V = D / 4, VP = FlashPrec<PREC>::template cols<D>() / 4, LD = FlashPrec<PREC>::template ld<D>();
    #pragma unroll 4
        for (int i = threadIdx.x; i < ROWS * VP; i += THREADS) {
            const int r = i / VP, c = i - r * VP;
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if ((VP == V || c < V) && row0 + r < n) x = reinterpret_cast<const float4*>(src + (row0 + r) * ld)[c];
            if constexpr (PREC == FP_BF16) {
                *reinterpret_cast<uint2*>(s + r * LD + 4 * c) = make_uint2(bf16x2(x.x, x.y), bf16x2(x.z, x.w));
            } else {
                *reinterpret_cast<float4*>(s + r * LD + 4 * c) = x;
            }
        }
    }
    /// Launch geometry the kernel was built for; a mismatch with the host's table stops the kernel.
    template<int THREADS, int SMEM> __device__ __forceinline__ void flash_check_launch() {
        if (threadIdx.x == 0 && (blockDim.x != THREADS || dynamic_smem_bytes() < (u32)SMEM)) __trap();
    }
    __device__ __forceinline__ float quad_sum(float x) {
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        return x + __shfl_xor_sync(0xffffffffu, x, 2);
    }
    __device__ __forceinline__ float quad_max(float x) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
        return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    }

    /// Forward (grid: query blocks of 16 * WARPS rows, heads): o, lse, and with TAN the tangent
    /// to_i = sum_j P_ij tS_ij v_j - mu_i o_i + sum_j P_ij tv_j (mu_i = sum_j P_ij tS_ij), accumulated in one pass
    /// over key blocks of BC: acc = sum p v, tacc = sum p (tS v + tv), rescaled with the running max.
    /// With `stats` (the backward's pre-pass) nothing is stored but, per row, float4 (lseIn, mu, rho, dotPdP):
    /// rho = gto.o, dotPdP = sum_j P_ij dP_ij = go.o + gto.to - mu rho (TAN) or go.o.
    template<int D, int WARPS, int BC, bool TAN, int PREC>
    __device__ __forceinline__ void flash_fwd_impl(const float* __restrict__ q, const float* __restrict__ k,
            const float* __restrict__ v, const float* __restrict__ tq, const float* __restrict__ tk,
            const float* __restrict__ tv, float* __restrict__ o, float* __restrict__ to, float* __restrict__ lse,
            unsigned short* __restrict__ o16, unsigned short* __restrict__ to16,
            const float* __restrict__ go, const float* __restrict__ gto, const float* __restrict__ lseIn,
            float* __restrict__ stats, int n, int heads, float scale) {
        typedef typename FlashPrec<PREC>::E E;
        // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
        constexpr int LD = FlashPrec<PREC>::template ld<D>(), KS = FlashPrec<PREC>::KS, KDP = FlashPrec<PREC>::template cols<D>() / 8;
        constexpr int BR = 16 * WARPS, KD = D / 8, NC = BC / 8, THREADS = 32 * WARPS;
        constexpr int NQ = TAN ? 2 : 1, NK = TAN ? 4 : 2;
        constexpr int SMEM = (BR * NQ + BC * NK) * LD * (int)sizeof(E);
        flash_check_launch<THREADS, SMEM>();
        extern __shared__ float4 flash_smem[];
        E* sQ = reinterpret_cast<E*>(flash_smem);
        E* sTQ = sQ + BR * LD;
        E* sK = sQ + NQ * BR * LD;
        E* sV = sK + BC * LD;
        E* sTK = sV + BC * LD;
        E* sTV = sTK + BC * LD;
        const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
        const int q0 = blockIdx.x * BR;
        const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D;
        flash_load<D, BR, THREADS, PREC>(sQ, q + hb, ld, q0, n);
        if (TAN) flash_load<D, BR, THREADS, PREC>(sTQ, tq + hb, ld, q0, n);
        float acc[KD][4], tacc[KD][4];
    #pragma unroll
        for (int i = 0; i < KD; ++i)
    #pragma unroll
            for (int e = 0; e < 4; ++e) { acc[i][e] = 0.f; tacc[i][e] = 0.f; }
        float m[2] = {-inf_<float>(), -inf_<float>()}, l[2] = {0.f, 0.f}, mu[2] = {0.f, 0.f};
        for (int j0 = 0; j0 < n; j0 += BC) {
            __syncthreads();
            flash_load<D, BC, THREADS, PREC>(sK, k + hb, ld, j0, n);
            flash_load<D, BC, THREADS, PREC>(sV, v + hb, ld, j0, n);
            if (TAN) {
                flash_load<D, BC, THREADS, PREC>(sTK, tk + hb, ld, j0, n);
                flash_load<D, BC, THREADS, PREC>(sTV, tv + hb, ld, j0, n);
            }
            __syncthreads();
            float s[NC][4], ts[NC][4];
    #pragma unroll
            for (int c = 0; c < NC; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) { s[c][e] = 0.f; ts[c][e] = 0.f; }
    #pragma unroll
            for (int kk = 0; kk < KDP; kk += KS) {
                const FragA<PREC> aq = lds_a<PREC, LD>(sQ, r0, kk * 8, g, t);
                FragA<PREC> atq;
                if (TAN) atq = lds_a<PREC, LD>(sTQ, r0, kk * 8, g, t);
    #pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const FragB<PREC> bk = lds_bt<PREC, LD>(sK, c * 8, kk * 8, g, t);
                    tc_mma<PREC>(s[c], aq, bk);
                    if (TAN) {
                        tc_mma<PREC>(ts[c], atq, bk);
                        tc_mma<PREC>(ts[c], aq, lds_bt<PREC, LD>(sTK, c * 8, kk * 8, g, t));
                    }
                }
            }
            // Online softmax. This lane holds rows g (e = 0, 1) and g + 8 (e = 2, 3) of its warp's 16.
            float mx[2] = {m[0], m[1]};
    #pragma unroll
            for (int c = 0; c < NC; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool valid = j0 + c * 8 + 2 * t + (e & 1) < n;
                    s[c][e] = valid ? s[c][e] * scale : -inf_<float>();
                    if (TAN) ts[c][e] *= scale;
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[c][e]);
                }
            float alpha[2];
    #pragma unroll
            for (int h = 0; h < 2; ++h) {
                mx[h] = quad_max(mx[h]);
                alpha[h] = m_exp(m[h] - mx[h]);
                m[h] = mx[h];
                l[h] *= alpha[h];
                mu[h] *= alpha[h];
            }
    #pragma unroll
            for (int i = 0; i < KD; ++i)
    #pragma unroll
                for (int e = 0; e < 4; ++e) { acc[i][e] *= alpha[e >> 1]; if (TAN) tacc[i][e] *= alpha[e >> 1]; }
    #pragma unroll
            for (int c = 0; c < NC; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float p = m_exp(s[c][e] - m[e >> 1]);
                    l[e >> 1] += p;
                    s[c][e] = p;
                    if (TAN) { ts[c][e] *= p; mu[e >> 1] += ts[c][e]; }
                }
            // acc += P V; tacc += (P o tS) V + P tV (k runs over this block's keys).
    #pragma unroll
            for (int c = 0; c < NC; c += KS) {
                const FragA<PREC> ap = acc_a<PREC>(s[c], s[c + KS - 1]);
                FragA<PREC> apt;
                if (TAN) apt = acc_a<PREC>(ts[c], ts[c + KS - 1]);
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    const FragB<PREC> bv = lds_bn<PREC, LD>(sV, c * 8, i * 8, g, t);
                    tc_mma<PREC>(acc[i], ap, bv);
                    if (TAN) {
                        tc_mma<PREC>(tacc[i], apt, bv);
                        tc_mma<PREC>(tacc[i], ap, lds_bn<PREC, LD>(sTV, c * 8, i * 8, g, t));
                    }
                }
            }
        }
    #pragma unroll
        for (int h = 0; h < 2; ++h) { l[h] = quad_sum(l[h]); if (TAN) mu[h] = quad_sum(mu[h]); }
        const i64 rowBase = (i64)blockIdx.y * n;
        if (stats == nullptr) {
    #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = q0 + r0 + g + 8 * h;
                if (row < n) {
                    const float inv = 1.f / l[h], muv = mu[h] * inv;
                    const i64 off = hb + row * ld + 2 * t;
    #pragma unroll
                    for (int i = 0; i < KD; ++i) {
                        const float o0 = acc[i][2 * h] * inv, o1 = acc[i][2 * h + 1] * inv;
                        *reinterpret_cast<float2*>(o + off + i * 8) = make_float2(o0, o1);
                        store_bf16_pair(o16, off + i * 8, o0, o1);
                        if (TAN) {
                            const float t0 = tacc[i][2 * h] * inv - muv * o0, t1 = tacc[i][2 * h + 1] * inv - muv * o1;
                            *reinterpret_cast<float2*>(to + off + i * 8) = make_float2(t0, t1);
                            store_bf16_pair(to16, off + i * 8, t0, t1);
                        }
                    }
                    if (t == 0) lse[rowBase + row] = m[h] + m_log(l[h]);
                }
            }
        } else {
    #pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = q0 + r0 + g + 8 * h;
                const float inv = 1.f / l[h], muv = TAN ? mu[h] * inv : 0.f;
                float gdo = 0.f, rho = 0.f, gtt = 0.f;
                if (row < n) {
                    const i64 off = hb + row * ld + 2 * t;
    #pragma unroll
                    for (int i = 0; i < KD; ++i) {
                        const float o0 = acc[i][2 * h] * inv, o1 = acc[i][2 * h + 1] * inv;
                        const float2 a = *reinterpret_cast<const float2*>(go + off + i * 8);
                        gdo += a.x * o0 + a.y * o1;
                        if (TAN) {
                            const float2 b = *reinterpret_cast<const float2*>(gto + off + i * 8);
                            rho += b.x * o0 + b.y * o1;
                            gtt += b.x * (tacc[i][2 * h] * inv - muv * o0) + b.y * (tacc[i][2 * h + 1] * inv - muv * o1);
                        }
                    }
                }
                gdo = quad_sum(gdo);
                if (TAN) { rho = quad_sum(rho); gtt = quad_sum(gtt); }
                if (row < n && t == 0)
                    *reinterpret_cast<float4*>(stats + (rowBase + row) * 4) =
                        make_float4(lseIn[rowBase + row], muv, rho, TAN ? gdo + gtt - muv * rho : gdo);
            }
        }
    }

    /// Backward, query side (grid: query blocks of 16 * WARPS rows, heads): dq = scale sum_j (dS k + dtS tk),
    /// dtq = scale sum_j dtS k, one pass over key blocks of BC, P recomputed from the saved lse. Per pair:
    /// ts = scale (tq.k + q.tk), G = go.v + gto.tv, R = gto.v, dp = G + R (ts - mu) - ts rho,
    /// dS = P (dp - dotPdP), dtS = P (R - rho) (AttentionKernels.swift's formulas).
    template<int D, int WARPS, int BC, bool TAN, int PREC>
    __device__ __forceinline__ void flash_bwd_dq_impl(const float* __restrict__ q, const float* __restrict__ k,
            const float* __restrict__ v, const float* __restrict__ tq, const float* __restrict__ tk,
            const float* __restrict__ tv, const float* __restrict__ go, const float* __restrict__ gto,
            const float* __restrict__ stats, float* __restrict__ dq, float* __restrict__ dtq, int n, int heads, float scale) {
        typedef typename FlashPrec<PREC>::E E;
        // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
        constexpr int LD = FlashPrec<PREC>::template ld<D>(), KS = FlashPrec<PREC>::KS, KDP = FlashPrec<PREC>::template cols<D>() / 8;
        constexpr int BR = 16 * WARPS, KD = D / 8, NC = BC / 8, THREADS = 32 * WARPS;
        constexpr int NS = TAN ? 4 : 2;
        constexpr int SMEM = (BR + BC) * NS * LD * (int)sizeof(E);
        flash_check_launch<THREADS, SMEM>();
        extern __shared__ float4 flash_smem[];
        E* sQ = reinterpret_cast<E*>(flash_smem);
        E* sGO = sQ + BR * LD;
        E* sTQ = sGO + BR * LD;
        E* sGTO = sTQ + BR * LD;
        E* sK = sQ + NS * BR * LD;
        E* sV = sK + BC * LD;
        E* sTK = sV + BC * LD;
        E* sTV = sTK + BC * LD;
        const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
        const int q0 = blockIdx.x * BR;
        const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D, rowBase = (i64)blockIdx.y * n;
        flash_load<D, BR, THREADS, PREC>(sQ, q + hb, ld, q0, n);
        flash_load<D, BR, THREADS, PREC>(sGO, go + hb, ld, q0, n);
        if (TAN) {
            flash_load<D, BR, THREADS, PREC>(sTQ, tq + hb, ld, q0, n);
            flash_load<D, BR, THREADS, PREC>(sGTO, gto + hb, ld, q0, n);
        }
        float L[2], MU[2], RHO[2], DPP[2];
    #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = q0 + r0 + g + 8 * h;
            float4 st = make_float4(0.f, 0.f, 0.f, 0.f);
            if (row < n) st = *reinterpret_cast<const float4*>(stats + (rowBase + row) * 4);
            L[h] = st.x; MU[h] = st.y; RHO[h] = st.z; DPP[h] = st.w;
        }
        float dqa[KD][4], dtqa[KD][4];
    #pragma unroll
        for (int i = 0; i < KD; ++i)
    #pragma unroll
            for (int e = 0; e < 4; ++e) { dqa[i][e] = 0.f; dtqa[i][e] = 0.f; }
        for (int j0 = 0; j0 < n; j0 += BC) {
            __syncthreads();
            flash_load<D, BC, THREADS, PREC>(sK, k + hb, ld, j0, n);
            flash_load<D, BC, THREADS, PREC>(sV, v + hb, ld, j0, n);
            if (TAN) {
                flash_load<D, BC, THREADS, PREC>(sTK, tk + hb, ld, j0, n);
                flash_load<D, BC, THREADS, PREC>(sTV, tv + hb, ld, j0, n);
            }
            __syncthreads();
            float s[NC][4], ts[NC][4], gg[NC][4], rr[NC][4];
    #pragma unroll
            for (int c = 0; c < NC; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) { s[c][e] = 0.f; ts[c][e] = 0.f; gg[c][e] = 0.f; rr[c][e] = 0.f; }
    #pragma unroll
            for (int kk = 0; kk < KDP; kk += KS) {
                const FragA<PREC> aq = lds_a<PREC, LD>(sQ, r0, kk * 8, g, t);
                FragA<PREC> atq;
                if (TAN) atq = lds_a<PREC, LD>(sTQ, r0, kk * 8, g, t);
    #pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const FragB<PREC> bk = lds_bt<PREC, LD>(sK, c * 8, kk * 8, g, t);
                    tc_mma<PREC>(s[c], aq, bk);
                    if (TAN) {
                        tc_mma<PREC>(ts[c], atq, bk);
                        tc_mma<PREC>(ts[c], aq, lds_bt<PREC, LD>(sTK, c * 8, kk * 8, g, t));
                    }
                }
            }
    #pragma unroll
            for (int kk = 0; kk < KDP; kk += KS) {
                const FragA<PREC> ago = lds_a<PREC, LD>(sGO, r0, kk * 8, g, t);
                FragA<PREC> agto;
                if (TAN) agto = lds_a<PREC, LD>(sGTO, r0, kk * 8, g, t);
    #pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const FragB<PREC> bv = lds_bt<PREC, LD>(sV, c * 8, kk * 8, g, t);
                    tc_mma<PREC>(gg[c], ago, bv);
                    if (TAN) {
                        tc_mma<PREC>(rr[c], agto, bv);
                        tc_mma<PREC>(gg[c], agto, lds_bt<PREC, LD>(sTV, c * 8, kk * 8, g, t));
                    }
                }
            }
            // s <- dS, ts <- dtS.
    #pragma unroll
            for (int c = 0; c < NC; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1;
                    const bool valid = j0 + c * 8 + 2 * t + (e & 1) < n;
                    const float P = valid ? m_exp(s[c][e] * scale - L[h]) : 0.f;
                    if (TAN) {
                        const float tsv = ts[c][e] * scale, r = rr[c][e];
                        const float dp = gg[c][e] + r * (tsv - MU[h]) - tsv * RHO[h];
                        s[c][e] = P * (dp - DPP[h]);
                        ts[c][e] = P * (r - RHO[h]);
                    } else {
                        s[c][e] = P * (gg[c][e] - DPP[h]);
                    }
                }
    #pragma unroll
            for (int c = 0; c < NC; c += KS) {
                const FragA<PREC> ads = acc_a<PREC>(s[c], s[c + KS - 1]);
                FragA<PREC> adts;
                if (TAN) adts = acc_a<PREC>(ts[c], ts[c + KS - 1]);
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    const FragB<PREC> bk = lds_bn<PREC, LD>(sK, c * 8, i * 8, g, t);
                    tc_mma<PREC>(dqa[i], ads, bk);
                    if (TAN) {
                        tc_mma<PREC>(dtqa[i], adts, bk);
                        tc_mma<PREC>(dqa[i], adts, lds_bn<PREC, LD>(sTK, c * 8, i * 8, g, t));
                    }
                }
            }
        }
    #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = q0 + r0 + g + 8 * h;
            if (row < n) {
                const i64 off = hb + row * ld + 2 * t;
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    *reinterpret_cast<float2*>(dq + off + i * 8) = make_float2(scale * dqa[i][2 * h], scale * dqa[i][2 * h + 1]);
                    if (TAN) *reinterpret_cast<float2*>(dtq + off + i * 8) =
                        make_float2(scale * dtqa[i][2 * h], scale * dtqa[i][2 * h + 1]);
                }
            }
        }
    }

    /// Backward, key side (grid: key blocks of 16 * WARPS rows, heads): one pass over query blocks of BQ,
    /// the score tiles transposed (keys as rows): dk = scale sum_i (dS q + dtS tq), dtk = scale sum_i dtS q,
    /// dv = sum_i (P go + P (ts - mu) gto), dtv = sum_i P gto.
    template<int D, int WARPS, int BQ, bool TAN, int PREC>
    __device__ __forceinline__ void flash_bwd_dkv_impl(const float* __restrict__ q, const float* __restrict__ k,
            const float* __restrict__ v, const float* __restrict__ tq, const float* __restrict__ tk,
            const float* __restrict__ tv, const float* __restrict__ go, const float* __restrict__ gto,
            const float* __restrict__ stats, float* __restrict__ dk, float* __restrict__ dv, float* __restrict__ dtk,
            float* __restrict__ dtv, unsigned short* __restrict__ dv16, unsigned short* __restrict__ dtv16,
            int n, int heads, float scale) {
        typedef typename FlashPrec<PREC>::E E;
        // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
        constexpr int LD = FlashPrec<PREC>::template ld<D>(), KS = FlashPrec<PREC>::KS, KDP = FlashPrec<PREC>::template cols<D>() / 8;
        constexpr int BK = 16 * WARPS, KD = D / 8, NQ = BQ / 8, THREADS = 32 * WARPS;
        constexpr int NS = TAN ? 4 : 2;
        constexpr int SMEM = (BK + BQ) * NS * LD * (int)sizeof(E) + BQ * 16;
        flash_check_launch<THREADS, SMEM>();
        extern __shared__ float4 flash_smem[];
        E* sK = reinterpret_cast<E*>(flash_smem);
        E* sV = sK + BK * LD;
        E* sTK = sV + BK * LD;
        E* sTV = sTK + BK * LD;
        E* sQ = sK + NS * BK * LD;
        E* sGO = sQ + BQ * LD;
        E* sTQ = sGO + BQ * LD;
        E* sGTO = sTQ + BQ * LD;
        float4* sSt = reinterpret_cast<float4*>(sQ + NS * BQ * LD);
        const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
        const int k0 = blockIdx.x * BK;
        const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D, rowBase = (i64)blockIdx.y * n;
        flash_load<D, BK, THREADS, PREC>(sK, k + hb, ld, k0, n);
        flash_load<D, BK, THREADS, PREC>(sV, v + hb, ld, k0, n);
        if (TAN) {
            flash_load<D, BK, THREADS, PREC>(sTK, tk + hb, ld, k0, n);
            flash_load<D, BK, THREADS, PREC>(sTV, tv + hb, ld, k0, n);
        }
        float dka[KD][4], dva[KD][4], dtka[KD][4], dtva[KD][4];
    #pragma unroll
        for (int i = 0; i < KD; ++i)
    #pragma unroll
            for (int e = 0; e < 4; ++e) { dka[i][e] = 0.f; dva[i][e] = 0.f; dtka[i][e] = 0.f; dtva[i][e] = 0.f; }
        for (int i0 = 0; i0 < n; i0 += BQ) {
            __syncthreads();
            flash_load<D, BQ, THREADS, PREC>(sQ, q + hb, ld, i0, n);
            flash_load<D, BQ, THREADS, PREC>(sGO, go + hb, ld, i0, n);
            if (TAN) {
                flash_load<D, BQ, THREADS, PREC>(sTQ, tq + hb, ld, i0, n);
                flash_load<D, BQ, THREADS, PREC>(sGTO, gto + hb, ld, i0, n);
            }
            for (int i = threadIdx.x; i < BQ; i += THREADS)
                sSt[i] = i0 + i < n ? *reinterpret_cast<const float4*>(stats + (rowBase + i0 + i) * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
            __syncthreads();
            // Transposed tiles: rows are this warp's 16 keys, columns the block's queries.
            float s[NQ][4], ts[NQ][4], gg[NQ][4], rr[NQ][4];
    #pragma unroll
            for (int c = 0; c < NQ; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) { s[c][e] = 0.f; ts[c][e] = 0.f; gg[c][e] = 0.f; rr[c][e] = 0.f; }
    #pragma unroll 1
            for (int kk = 0; kk < KDP; kk += KS) {
                const FragA<PREC> ak = lds_a<PREC, LD>(sK, r0, kk * 8, g, t);
                FragA<PREC> atk;
                if (TAN) atk = lds_a<PREC, LD>(sTK, r0, kk * 8, g, t);
    #pragma unroll
                for (int c = 0; c < NQ; ++c) {
                    const FragB<PREC> bq = lds_bt<PREC, LD>(sQ, c * 8, kk * 8, g, t);
                    tc_mma<PREC>(s[c], ak, bq);
                    if (TAN) {
                        tc_mma<PREC>(ts[c], atk, bq);
                        tc_mma<PREC>(ts[c], ak, lds_bt<PREC, LD>(sTQ, c * 8, kk * 8, g, t));
                    }
                }
            }
    #pragma unroll 1
            for (int kk = 0; kk < KDP; kk += KS) {
                const FragA<PREC> av = lds_a<PREC, LD>(sV, r0, kk * 8, g, t);
                FragA<PREC> atv;
                if (TAN) atv = lds_a<PREC, LD>(sTV, r0, kk * 8, g, t);
    #pragma unroll
                for (int c = 0; c < NQ; ++c) {
                    const FragB<PREC> bgo = lds_bt<PREC, LD>(sGO, c * 8, kk * 8, g, t);
                    tc_mma<PREC>(gg[c], av, bgo);
                    if (TAN) {
                        const FragB<PREC> bgto = lds_bt<PREC, LD>(sGTO, c * 8, kk * 8, g, t);
                        tc_mma<PREC>(rr[c], av, bgto);
                        tc_mma<PREC>(gg[c], atv, bgto);
                    }
                }
            }
            // s <- P, gg <- dS, and with TAN ts <- P (ts - mu), rr <- dtS. Columns are queries.
    #pragma unroll
            for (int c = 0; c < NQ; ++c)
    #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = c * 8 + 2 * t + (e & 1);
                    const float4 st = sSt[col];
                    const float P = i0 + col < n ? m_exp(s[c][e] * scale - st.x) : 0.f;
                    s[c][e] = P;
                    if (TAN) {
                        const float tsv = ts[c][e] * scale, r = rr[c][e];
                        const float dp = gg[c][e] + r * (tsv - st.y) - tsv * st.z;
                        gg[c][e] = P * (dp - st.w);
                        rr[c][e] = P * (r - st.z);
                        ts[c][e] = P * (tsv - st.y);
                    } else {
                        gg[c][e] = P * (gg[c][e] - st.w);
                    }
                }
            // dv, dtv (A: P and P (ts - mu)), then dk, dtk (A: dS and dtS): two passes hold half the fragments.
    #pragma unroll
            for (int c = 0; c < NQ; c += KS) {
                const FragA<PREC> ap = acc_a<PREC>(s[c], s[c + KS - 1]);
                FragA<PREC> apt;
                if (TAN) apt = acc_a<PREC>(ts[c], ts[c + KS - 1]);
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    tc_mma<PREC>(dva[i], ap, lds_bn<PREC, LD>(sGO, c * 8, i * 8, g, t));
                    if (TAN) {
                        const FragB<PREC> bgto = lds_bn<PREC, LD>(sGTO, c * 8, i * 8, g, t);
                        tc_mma<PREC>(dva[i], apt, bgto);
                        tc_mma<PREC>(dtva[i], ap, bgto);
                    }
                }
            }
    #pragma unroll
            for (int c = 0; c < NQ; c += KS) {
                const FragA<PREC> ads = acc_a<PREC>(gg[c], gg[c + KS - 1]);
                FragA<PREC> adts;
                if (TAN) adts = acc_a<PREC>(rr[c], rr[c + KS - 1]);
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    const FragB<PREC> bq = lds_bn<PREC, LD>(sQ, c * 8, i * 8, g, t);
                    tc_mma<PREC>(dka[i], ads, bq);
                    if (TAN) {
                        tc_mma<PREC>(dka[i], adts, lds_bn<PREC, LD>(sTQ, c * 8, i * 8, g, t));
                        tc_mma<PREC>(dtka[i], adts, bq);
                    }
                }
            }
        }
    #pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = k0 + r0 + g + 8 * h;
            if (row < n) {
                const i64 off = hb + row * ld + 2 * t;
    #pragma unroll
                for (int i = 0; i < KD; ++i) {
                    *reinterpret_cast<float2*>(dk + off + i * 8) = make_float2(scale * dka[i][2 * h], scale * dka[i][2 * h + 1]);
                    *reinterpret_cast<float2*>(dv + off + i * 8) = make_float2(dva[i][2 * h], dva[i][2 * h + 1]);
                    store_bf16_pair(dv16, off + i * 8, dva[i][2 * h], dva[i][2 * h + 1]);
                    if (TAN) {
                        *reinterpret_cast<float2*>(dtk + off + i * 8) = make_float2(scale * dtka[i][2 * h], scale * dtka[i][2 * h + 1]);
                        *reinterpret_cast<float2*>(dtv + off + i * 8) = make_float2(dtva[i][2 * h], dtva[i][2 * h + 1]);
                        store_bf16_pair(dtv16, off + i * 8, dtva[i][2 * h], dtva[i][2 * h + 1]);
                    }
                }
            }
        }
    }
    """#

    /// Head dims with fused flash-attention kernels (float32 only; others take the warp-per-row kernels).
    static let flashDims = [64, 72]

    enum FlashKind: CaseIterable { case forward, dq, dkv }

    /// Operand precision of the flash kernels (the kernels' PREC): 3xTF32 (about float32, the default), TF32
    /// (`allowTF32`), bfloat16 (`bf16Products`).
    enum FlashPrecision: Int, CaseIterable {
        case x3 = 0, tf32 = 1, bf16 = 2
        var tag: String { ["x3", "tf32", "bf16"][rawValue] }
        /// Bytes of one shared-memory tile element.
        var elementBytes: Int { self == .bf16 ? 2 : 4 }
        /// A tile row's pitch in elements (the kernels' FlashPrec::ld).
        func pitch(_ dim: Int) -> Int { self == .bf16 ? (dim + 15) / 16 * 16 + 8 : dim + 4 }
    }

    /// Launch shape of a flash kernel: warps per block (16 rows each), the inner block (keys per step for the
    /// forward and dq kernels, queries per step for dkv) and the blocks per multiprocessor asked of the compiler
    /// (`__launch_bounds__`, 0: none). These kernels load a tile, wait, then compute, so they rely on several
    /// blocks per multiprocessor to overlap the two: 3 blocks of 4 warps ran the tangent forward 1.35x faster than
    /// 2 (2026-11-25), and halving the inner blocks to fit 3 blocks was slower still (CUDA_NOTES.md). The
    /// 3xTF32 kernels that need more than 168 registers and whose shared memory allows 3 blocks get a register
    /// cap for 3 (a few spilled values: tangent forward 1.05 against 1.15 ms, D = 72 plain backward 2.31 against
    /// 2.51 ms); `flashRegisterCaps = false` takes builds without it. The kernels check blockDim and shared memory.
    static func flashShape(_ kind: FlashKind, tangent: Bool, dim: Int, precision: FlashPrecision) -> (warps: Int, inner: Int, minBlocks: Int) {
        let x3 = precision == .x3
        switch (kind, tangent) {
        case (.forward, false): return (4, 64, 0)
        case (.forward, true): return (4, 32, x3 && dim == 64 ? 3 : 0)
        case (.dq, false): return (4, 64, 0)
        case (.dq, true): return (8, 32, 0)
        case (.dkv, false): return (4, 32, x3 && dim == 72 ? 3 : 0)
        case (.dkv, true): return (4, 16, 0)
        }
    }

    /// Dynamic shared memory of a flash kernel, in bytes (the kernels' own SMEM formulas).
    static func flashSharedBytes(_ kind: FlashKind, tangent: Bool, dim: Int, precision: FlashPrecision) -> Int {
        let (w, inner, _) = flashShape(kind, tangent: tangent, dim: dim, precision: precision), rows = 16 * w
        let row = precision.pitch(dim) * precision.elementBytes
        switch kind {
        case .forward: return (rows * (tangent ? 2 : 1) + inner * (tangent ? 4 : 2)) * row
        case .dq: return (rows + inner) * (tangent ? 4 : 2) * row
        case .dkv: return (rows + inner) * (tangent ? 4 : 2) * row + inner * 16
        }
    }

    /// Every flash kernel's configuration: kind, tangent, head dim, precision.
    static var flashConfigurations: [(kind: FlashKind, tangent: Bool, dim: Int, precision: FlashPrecision)] {
        flashDims.flatMap { dim in
            [false, true].flatMap { tangent in
                FlashPrecision.allCases.flatMap { precision in
                    FlashKind.allCases.map { (kind: $0, tangent: tangent, dim: dim, precision: precision) }
                }
            }
        }
    }

    /// The most shared memory any flash kernel needs.
    static var flashMaxSharedBytes: Int {
        flashConfigurations.map { flashSharedBytes($0.kind, tangent: $0.tangent, dim: $0.dim, precision: $0.precision) }.max()!
    }

    /// `uncapped`: the build without the register cap of `flashShape`'s minBlocks (only where it has one).
    static func flashName(_ kind: FlashKind, tangent: Bool, dim: Int, precision: FlashPrecision, uncapped: Bool = false) -> String {
        let stem = kind == .forward ? "flash_fwd" : kind == .dq ? "flash_dq" : "flash_dkv"
        return "\(stem)_\(tangent ? "t" : "p")\(dim)_\(precision.tag)\(uncapped ? "_nocap" : "")"
    }

    static func flashEntryPoints() -> String {
        var out = ""
        let ins = "const float* q, const float* k, const float* v, const float* tq, const float* tk, const float* tv"
        let args = "q, k, v, tq, tk, tv"
        for (kind, tangent, dim, precision) in flashConfigurations {
            let (w, inner, minBlocks) = flashShape(kind, tangent: tangent, dim: dim, precision: precision)
            let tmpl = "<\(dim), \(w), \(inner), \(tangent), \(precision.rawValue)>"
            let (signature, call): (String, String)
            switch kind {
            case .forward:
                signature = "\(ins), float* o, float* to, float* lse, unsigned short* o16, unsigned short* to16, const float* go, const float* gto, const float* lseIn, float* stats, int n, int heads, float scale"
                call = "flash_fwd_impl\(tmpl)(\(args), o, to, lse, o16, to16, go, gto, lseIn, stats, n, heads, scale)"
            case .dq:
                signature = "\(ins), const float* go, const float* gto, const float* stats, float* dq, float* dtq, int n, int heads, float scale"
                call = "flash_bwd_dq_impl\(tmpl)(\(args), go, gto, stats, dq, dtq, n, heads, scale)"
            case .dkv:
                signature = "\(ins), const float* go, const float* gto, const float* stats, float* dk, float* dv, float* dtk, float* dtv, unsigned short* dv16, unsigned short* dtv16, int n, int heads, float scale"
                call = "flash_bwd_dkv_impl\(tmpl)(\(args), go, gto, stats, dk, dv, dtk, dtv, dv16, dtv16, n, heads, scale)"
            }
            for uncapped in minBlocks > 0 ? [false, true] : [false] {
                let bounds = minBlocks > 0 && !uncapped ? "\(32 * w), \(minBlocks)" : "\(32 * w)"
                let name = flashName(kind, tangent: tangent, dim: dim, precision: precision, uncapped: uncapped)
                out += "extern \"C\" __global__ void __launch_bounds__(\(bounds)) \(name)(\(signature)) { \(call); }\n"
            }
        }
        return out
    }

    /// Values per lane the warp-per-row attention kernels are built for (head dim <= 32 * the largest).
    static let attentionLaneWidths = [1, 2, 3, 4, 8, 16]

    static func attentionEntryPoints(_ dtype: DType) -> String {
        let T = ctype(dtype), s = suffix(dtype)
        var out = ""
        for dpl in attentionLaneWidths {
            for tan in [false, true] {
                let t = tan ? "t" : "p", flag = tan ? "true" : "false"
                out += """
                extern "C" __global__ void __launch_bounds__(256) attn_fwd_\(t)\(dpl)_\(s)(const \(T)* q, const \(T)* k, const \(T)* v, const \(T)* tq, const \(T)* tk, const \(T)* tv, \(T)* o, \(T)* to, \(T)* lse, i64 rows, int n, int heads, int d, \(T) scale) { attn_fwd_impl<\(T), \(dpl), \(flag)>(q, k, v, tq, tk, tv, o, to, lse, rows, n, heads, d, scale); }
                extern "C" __global__ void __launch_bounds__(256) attn_bwd_rows_\(t)\(dpl)_\(s)(const \(T)* q, const \(T)* k, const \(T)* v, const \(T)* tq, const \(T)* tk, const \(T)* tv, const \(T)* lse, const \(T)* go, const \(T)* gto, \(T)* dq, \(T)* dtq, \(T)* stats, i64 rows, int n, int heads, int d, \(T) scale) { attn_bwd_rows_impl<\(T), \(dpl), \(flag)>(q, k, v, tq, tk, tv, lse, go, gto, dq, dtq, stats, rows, n, heads, d, scale); }
                extern "C" __global__ void __launch_bounds__(256) attn_bwd_cols_\(t)\(dpl)_\(s)(const \(T)* q, const \(T)* k, const \(T)* v, const \(T)* tq, const \(T)* tk, const \(T)* tv, const \(T)* lse, const \(T)* go, const \(T)* gto, const \(T)* stats, \(T)* dk, \(T)* dv, \(T)* dtk, \(T)* dtv, i64 rows, int n, int heads, int d, \(T) scale) { attn_bwd_cols_impl<\(T), \(dpl), \(flag)>(q, k, v, tq, tk, tv, lse, go, gto, stats, dk, dv, dtk, dtv, rows, n, heads, d, scale); }

                """
            }
        }
        return out
    }

    enum Family: String, CaseIterable { case core, attention, flash, convolution }

    /// The whole translation unit of one family for one element type.
    static func source(_ family: Family, _ dtype: DType) -> String {
        switch family {
        case .core: return [common, core, coreEntryPoints(dtype)].joined(separator: "\n")
        case .attention: return [common, attention, attentionEntryPoints(dtype)].joined(separator: "\n")
        case .convolution: return [common, ConvolutionKernelSource.kernels, ConvolutionKernelSource.entryPoints(dtype)].joined(separator: "\n")
        case .flash:
            precondition(dtype == .float32, "the flash-attention kernels are float32 only")
            return [common, flash, flashEntryPoints()].joined(separator: "\n")
        }
    }
}
