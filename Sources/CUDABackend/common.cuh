// Helpers shared by every kernel family of the CUDA backend, and the macros that declare kernels.
//
// Each family's .cu file is one translation unit. NVRTC compiles it at run time (CUDABackend's KernelModules),
// once per element type for families of TVM_KERNEL kernels (-DTVM_FLOAT64 for float64) and once for families
// of TVM_KERNEL_F32 kernels. At build time CUDAKernelTool reads the declarations below from the .cu files and
// writes the Swift that launches each kernel with typed, named arguments (see KernelDeclarations/Declarations.swift):
//
//   TVM_KERNEL(name, (threads[, minBlocks]), (parameters)) { body }
//       one kernel per element type, exported as name_f32 / name_f64, scalar_t its element type;
//   TVM_KERNEL_F32(name, (threads[, minBlocks]), (parameters)) { body }
//       one float32 kernel exported as name;
//   //! kernel name(axis: SwiftType, ...)   then   #define MACRO(axis, ...) TVM_KERNEL(...) { ... }
//       a kernel template: every call MACRO(values) below it exports one instance, and the Swift side gets
//       the instances with their axis values (Int, Bool or a Swift enum's case).
//
// The launch bounds are __launch_bounds__'s arguments. Kernel parameters may be pointers, i64, int, u64, float,
// scalar_t, View2 and Win (the Swift side packs nothing else).

#if defined(TVM_FLOAT64)
typedef double scalar_t;
#define TVM_EXPORT_NAME(name) name##_f64
#else
typedef float scalar_t;
#define TVM_EXPORT_NAME(name) name##_f32
#endif
#define TVM_KERNEL(name, bounds, params) extern "C" __global__ void __launch_bounds__ bounds TVM_EXPORT_NAME(name) params
#define TVM_KERNEL_F32(name, bounds, params) extern "C" __global__ void __launch_bounds__ bounds name params

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
/// The float32 value of bfloat16 bits (exact).
__device__ __forceinline__ float bf16_value(unsigned short b) { return __uint_as_float((u32)b << 16); }
/// Two values as bfloat16 in one word, lo in the lower half (the order of consecutive elements in memory), and the
/// float32 values of such a word's lower and upper halves.
__device__ __forceinline__ u32 bf16_pack2(float lo, float hi) { return (u32)bf16_bits(lo) | ((u32)bf16_bits(hi) << 16); }
__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
// The bfloat16 copy of an output that feeds bf16 products, written by the kernel that makes the output
// (y16 null: none; never for double).
template<typename T> __device__ __forceinline__ void store_bf16(unsigned short* y16, i64 i, const Pack<T>& r) {
    if constexpr (sizeof(T) == 4) {
        if (y16) {
            uint2 o;
            o.x = bf16_pack2(r.v[0], r.v[1]);
            o.y = bf16_pack2(r.v[2], r.v[3]);
            reinterpret_cast<uint2*>(y16)[i] = o;
        }
    }
}
/// Pack i of x, or where x is null of its bf16 values x16 (a tensor kept as its bf16 copy alone; never for double).
template<typename T> __device__ __forceinline__ Pack<T> load_pack(const T* x, const unsigned short* x16, i64 i) {
    if constexpr (sizeof(T) == 4) {
        if (x == nullptr) {
            const uint2 w = reinterpret_cast<const uint2*>(x16)[i];
            Pack<T> r;
            r.v[0] = bf16_lo(w.x); r.v[1] = bf16_hi(w.x); r.v[2] = bf16_lo(w.y); r.v[3] = bf16_hi(w.y);
            return r;
        }
    }
    return reinterpret_cast<const Pack<T>*>(x)[i];
}
template<typename T> __device__ __forceinline__ T load_one(const T* x, const unsigned short* x16, i64 i) {
    if constexpr (sizeof(T) == 4) { if (x == nullptr) return bf16_value(x16[i]); }
    return x[i];
}
template<typename T> __device__ __forceinline__ void store_bf16_one(unsigned short* y16, i64 i, T v) {
    if constexpr (sizeof(T) == 4) { if (y16) y16[i] = bf16_bits(v); }
}
__device__ __forceinline__ void store_bf16_pair(unsigned short* y16, i64 i, float a, float b) {
    if (y16) *reinterpret_cast<u32*>(y16 + i) = bf16_pack2(a, b);
}

__device__ __forceinline__ i64 gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
/// Attention operands are token-major [batch, n, heads, d] (TensorCore's AttentionGeometry): the first row of
/// head bh = b * heads + h lies here, and its rows are heads * d apart.
__device__ __forceinline__ i64 attn_head_offset(i64 bh, int n, int heads, int d) {
    return ((bh / heads) * n * heads + bh % heads) * d;
}
__device__ __forceinline__ i64 gstride() { return (i64)gridDim.x * blockDim.x; }

/// The sum over each aligned group of LANES lanes (a whole warp by default), in every lane of the group.
template<int LANES = 32, typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template<typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/// The last step of the packed column-sum kernels (blocks of 32 x 8 threads, each lane's 16 / sizeof(T) columns held as
/// the packs acc[k], one per output): the 8 rows of threads add theirs through shared memory in a fixed order
/// (deterministic) into outs[k][offset + column] for the block's columns below cols; null outputs are skipped.
template<typename T, int K> __device__ __forceinline__ void add_packed_column_sums(const Pack<T> (&acc)[K], T* const (&outs)[K],
                                                                                   i64 cols, i64 offset) {
    constexpr int P = 16 / sizeof(T), W = 32 * P;
    __shared__ T part[K][8][W];
#pragma unroll
    for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int e = 0; e < P; ++e) part[k][threadIdx.y][threadIdx.x * P + e] = acc[k].v[e];
    }
    __syncthreads();
    for (int i = threadIdx.y * 32 + threadIdx.x; i < K * W; i += 256) {
        const int k = i / W, c = i % W;
        const i64 col = (i64)blockIdx.x * W + c;
        if (!outs[k] || col >= cols) continue;
        T v = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) v += part[k][j][c];
        outs[k][offset + col] = v;
    }
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
