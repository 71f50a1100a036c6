// Elementwise kernels: the unary ops (the formulas of TensorCore's CPUFloat.swift), the fused SiLU / GELU value,
// tangent and backward kernels, affine, fill, select and the binary ops over dense, row-broadcast and strided
// operands. Launchers: ElementwiseKernels.swift.
#include "../common.cuh"

#define GELU_C 0.7978845608028654
#define GELU_K 0.044715
template<typename T> __device__ __forceinline__ T sigm(T x) { return T(1) / (T(1) + m_exp(-x)); }

// The unary ops, one functor each (x in, a T out).
struct UF_neg { template<typename T> __device__ static __forceinline__ T f(T x) { return -x; } };
struct UF_exp { template<typename T> __device__ static __forceinline__ T f(T x) { return m_exp(x); } };
struct UF_log { template<typename T> __device__ static __forceinline__ T f(T x) { return m_log(x); } };
struct UF_sqrt { template<typename T> __device__ static __forceinline__ T f(T x) { return m_sqrt(x); } };
struct UF_rsqrt { template<typename T> __device__ static __forceinline__ T f(T x) { return T(1) / m_sqrt(x); } };
struct UF_reciprocal { template<typename T> __device__ static __forceinline__ T f(T x) { return T(1) / x; } };
struct UF_square { template<typename T> __device__ static __forceinline__ T f(T x) { return x * x; } };
struct UF_sin { template<typename T> __device__ static __forceinline__ T f(T x) { return m_sin(x); } };
struct UF_cos { template<typename T> __device__ static __forceinline__ T f(T x) { return m_cos(x); } };
struct UF_tanh { template<typename T> __device__ static __forceinline__ T f(T x) { return m_tanh(x); } };
struct UF_sigmoid { template<typename T> __device__ static __forceinline__ T f(T x) { return sigm(x); } };
struct UF_silu { template<typename T> __device__ static __forceinline__ T f(T x) { return x * sigm(x); } };
struct UF_siluD1 { template<typename T> __device__ static __forceinline__ T f(T x) { const T s = sigm(x); return s * (T(1) + x * (T(1) - s)); } };
struct UF_siluD2 { template<typename T> __device__ static __forceinline__ T f(T x) { const T s = sigm(x); return s * (T(1) - s) * (T(2) + x * (T(1) - T(2) * s)); } };
struct UF_gelu { template<typename T> __device__ static __forceinline__ T f(T x) { return x * sigm(T(2) * T(GELU_C) * (x + T(GELU_K) * x * x * x)); } };
struct UF_geluD1 {
    template<typename T> __device__ static __forceinline__ T f(T x) {
        const T x2 = x * x; const T u = T(GELU_C) * (x + T(GELU_K) * x2 * x);
        const T du = T(GELU_C) * (T(1) + T(3) * T(GELU_K) * x2); const T s = sigm(T(2) * u);
        return s + T(2) * x * s * (T(1) - s) * du;
    }
};
struct UF_geluD2 {
    template<typename T> __device__ static __forceinline__ T f(T x) {
        const T x2 = x * x; const T u = T(GELU_C) * (x + T(GELU_K) * x2 * x);
        const T du = T(GELU_C) * (T(1) + T(3) * T(GELU_K) * x2); const T s = sigm(T(2) * u);
        const T th = T(2) * s - T(1), d2u = T(6) * T(GELU_C) * T(GELU_K) * x;
        return T(4) * s * (T(1) - s) * (du + T(0.5) * x * (d2u - T(2) * th * du * du));
    }
};
struct UF_isFinite { template<typename T> __device__ static __forceinline__ T f(T x) { return m_abs(x) < inf_<T>() ? T(1) : T(0); } };

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


//! kernel unary(op: UnaryOp)
#define UNARY(op) TVM_KERNEL(unary_##op, (256), (const scalar_t* x, scalar_t* y, i64 n)) { unary_impl<scalar_t, UF_##op>(x, y, n); }
UNARY(neg) UNARY(exp) UNARY(log) UNARY(sqrt) UNARY(rsqrt) UNARY(reciprocal) UNARY(square) UNARY(sin) UNARY(cos) UNARY(tanh)
UNARY(sigmoid) UNARY(silu) UNARY(siluD1) UNARY(siluD2) UNARY(gelu) UNARY(geluD1) UNARY(geluD2) UNARY(isFinite)

// y = f(x) and, where t is given, ty = f'(x) t. A null x or t: read from its bf16 copy x16, t16 instead (an input
// kept as its bf16 values alone); a null y or ty: that output is written as its bf16 copy alone (an output read by
// nothing but matrix products). With neither t nor t16, only y (and y16) are written.
template<typename T, typename F, typename D1> __device__ __forceinline__ void act_tangent_impl(
        const T* x, const T* t, const unsigned short* x16, const unsigned short* t16, T* y, T* ty, unsigned short* y16,
        unsigned short* ty16, i64 n) {
    constexpr int P = 16 / sizeof(T);
    const bool tangent = t != nullptr || t16 != nullptr;
    const i64 np = n / P, s = gtid(), st = gstride();
    for (i64 i = s; i < np; i += st) {
        const Pack<T> a = load_pack(x, x16, i);
        Pack<T> r;
#pragma unroll
        for (int k = 0; k < P; ++k) r.v[k] = F::template f<T>(a.v[k]);
        if (y) ((Pack<T>*)y)[i] = r;
        store_bf16(y16, i, r);
        if (tangent) {
            const Pack<T> b = load_pack(t, t16, i);
            Pack<T> q;
#pragma unroll
            for (int k = 0; k < P; ++k) q.v[k] = D1::template f<T>(a.v[k]) * b.v[k];
            if (ty) ((Pack<T>*)ty)[i] = q;
            store_bf16(ty16, i, q);
        }
    }
    for (i64 i = np * P + s; i < n; i += st) {
        const T xi = load_one(x, x16, i), r = F::template f<T>(xi);
        if (y) y[i] = r;
        store_bf16_one(y16, i, r);
        if (tangent) {
            const T q = D1::template f<T>(xi) * load_one(t, t16, i);
            if (ty) ty[i] = q;
            store_bf16_one(ty16, i, q);
        }
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
// x, t as act_tangent's (null: their bf16 copies); gx, gt null: written as their bf16 copies alone (cotangents read
// by nothing but the products of the linear layer that made x).
template<typename T, typename D1, typename D2> __device__ __forceinline__ void act_tangent_bwd_impl(
        const T* x, const T* t, const unsigned short* x16, const unsigned short* t16, const T* gy, const T* gty, T* gx,
        T* gt, unsigned short* gx16, unsigned short* gt16, i64 n) {
    constexpr int P = 16 / sizeof(T);
    const bool hy = gy != nullptr, ht = gty != nullptr;
    const i64 np = n / P, s = gtid(), st = gstride();
    const Pack<T> zero = {};
    for (i64 i = s; i < np; i += st) {
        const Pack<T> a = load_pack(x, x16, i), b = load_pack(t, t16, i);
        const Pack<T> c = hy ? ((const Pack<T>*)gy)[i] : zero, d = ht ? ((const Pack<T>*)gty)[i] : zero;
        Pack<T> r, q;
#pragma unroll
        for (int k = 0; k < P; ++k) act_tangent_bwd_one<T, D1, D2>(a.v[k], b.v[k], c.v[k], d.v[k], hy, ht, r.v[k], q.v[k]);
        if (gx) ((Pack<T>*)gx)[i] = r;
        if (gt) ((Pack<T>*)gt)[i] = q;
        store_bf16(gx16, i, r);
        store_bf16(gt16, i, q);
    }
    for (i64 i = np * P + s; i < n; i += st) {
        T r, q;
        act_tangent_bwd_one<T, D1, D2>(load_one(x, x16, i), load_one(t, t16, i), hy ? gy[i] : T(0), ht ? gty[i] : T(0), hy,
                                       ht, r, q);
        if (gx) gx[i] = r;
        if (gt) gt[i] = q;
        store_bf16_one(gx16, i, r);
        store_bf16_one(gt16, i, q);
    }
}

/// gx = g f'(x); x and gx as in act_tangent_bwd.
template<typename T, typename D1> __device__ __forceinline__ void act_bwd_impl(const T* x, const unsigned short* x16,
                                                                              const T* g, T* gx, unsigned short* gx16, i64 n) {
    constexpr int P = 16 / sizeof(T);
    const i64 np = n / P, s = gtid(), st = gstride();
    for (i64 i = s; i < np; i += st) {
        const Pack<T> a = load_pack(x, x16, i), b = ((const Pack<T>*)g)[i];
        Pack<T> r;
#pragma unroll
        for (int k = 0; k < P; ++k) r.v[k] = b.v[k] * D1::template f<T>(a.v[k]);
        if (gx) ((Pack<T>*)gx)[i] = r;
        store_bf16(gx16, i, r);
    }
    for (i64 i = np * P + s; i < n; i += st) {
        const T r = g[i] * D1::template f<T>(load_one(x, x16, i));
        if (gx) gx[i] = r;
        store_bf16_one(gx16, i, r);
    }
}

// The fused activations (UnaryOp.derivatives): op, its first derivative D1 and second derivative D2.
//! kernel act_tangent(op: UnaryOp)
#define ACT_TANGENT(op, D1) TVM_KERNEL(act_tangent_##op, (256), (const scalar_t* x, const scalar_t* t, \
        const unsigned short* x16, const unsigned short* t16, scalar_t* y, scalar_t* ty, unsigned short* y16, \
        unsigned short* ty16, i64 n)) { act_tangent_impl<scalar_t, UF_##op, UF_##D1>(x, t, x16, t16, y, ty, y16, ty16, n); }
ACT_TANGENT(silu, siluD1) ACT_TANGENT(gelu, geluD1)

//! kernel act_tangent_bwd(op: UnaryOp)
#define ACT_TANGENT_BWD(op, D1, D2) TVM_KERNEL(act_tangent_bwd_##op, (256), (const scalar_t* x, const scalar_t* t, \
        const unsigned short* x16, const unsigned short* t16, const scalar_t* gy, const scalar_t* gty, scalar_t* gx, \
        scalar_t* gt, unsigned short* gx16, unsigned short* gt16, i64 n)) { \
    act_tangent_bwd_impl<scalar_t, UF_##D1, UF_##D2>(x, t, x16, t16, gy, gty, gx, gt, gx16, gt16, n); }
ACT_TANGENT_BWD(silu, siluD1, siluD2) ACT_TANGENT_BWD(gelu, geluD1, geluD2)

//! kernel act_bwd(op: UnaryOp)
#define ACT_BWD(op, D1) TVM_KERNEL(act_bwd_##op, (256), (const scalar_t* x, const unsigned short* x16, const scalar_t* g, \
        scalar_t* gx, unsigned short* gx16, i64 n)) { act_bwd_impl<scalar_t, UF_##D1>(x, x16, g, gx, gx16, n); }
ACT_BWD(silu, siluD1) ACT_BWD(gelu, geluD1)

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
TVM_KERNEL(affine, (256), (const scalar_t* x, scalar_t* y, i64 n, scalar_t a, scalar_t b)) { affine_impl<scalar_t>(x, y, n, a, b); }

template<typename T> __device__ __forceinline__ void fill_impl(T* y, i64 n, T value) {
    for (i64 i = gtid(); i < n; i += gstride()) y[i] = value;
}
TVM_KERNEL(fill, (256), (scalar_t* y, i64 n, scalar_t v)) { fill_impl<scalar_t>(y, n, v); }

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
TVM_KERNEL(select, (256), (const scalar_t* c, const scalar_t* a, const scalar_t* b, scalar_t* y, i64 n)) {
    select_impl<scalar_t>(c, a, b, y, n);
}

// The binary ops, one functor each.
struct BF_add { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a + b; } };
struct BF_sub { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a - b; } };
struct BF_mul { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a * b; } };
struct BF_div { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a / b; } };
struct BF_maximum { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return max_nan(a, b); } };
struct BF_minimum { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return min_nan(a, b); } };
struct BF_greater { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a > b ? T(1) : T(0); } };
struct BF_greaterEqual { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a >= b ? T(1) : T(0); } };
struct BF_equal { template<typename T> __device__ static __forceinline__ T f(T a, T b) { return a == b ? T(1) : T(0); } };

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

// Per binary op: dense (MODE 0), a one value (1) or b one value (2); rows; strided with 32- or 64-bit indices.
//! kernel binary_dense(op: BinaryOp, mode: Int)
#define BINARY_DENSE(op, mode) TVM_KERNEL(binary_##op##_d##mode, (256), (const scalar_t* a, const scalar_t* b, scalar_t* y, \
        i64 n)) { binary_dense_impl<scalar_t, BF_##op, mode>(a, b, y, n); }
//! kernel binary_rows(op: BinaryOp)
#define BINARY_ROWS(op) TVM_KERNEL(binary_##op##_rows, (256), (View2 v, const scalar_t* a, const scalar_t* b, scalar_t* y, \
        i64 rows, i64 inner, i64 chunk, int ia, int ib)) { binary_rows_impl<scalar_t, BF_##op>(v, a, b, y, rows, inner, chunk, ia, ib); }
//! kernel binary_strided(op: BinaryOp, indexBits: Int)
#define BINARY_STRIDED(op, indexBits, I) TVM_KERNEL(binary_##op##_s##indexBits, (256), (View2 v, const scalar_t* a, \
        const scalar_t* b, scalar_t* y, i64 n)) { binary_strided_impl<scalar_t, BF_##op, I>(v, a, b, y, n); }
BINARY_DENSE(add, 0) BINARY_DENSE(add, 1) BINARY_DENSE(add, 2) BINARY_ROWS(add) BINARY_STRIDED(add, 32, int) BINARY_STRIDED(add, 64, i64)
BINARY_DENSE(sub, 0) BINARY_DENSE(sub, 1) BINARY_DENSE(sub, 2) BINARY_ROWS(sub) BINARY_STRIDED(sub, 32, int) BINARY_STRIDED(sub, 64, i64)
BINARY_DENSE(mul, 0) BINARY_DENSE(mul, 1) BINARY_DENSE(mul, 2) BINARY_ROWS(mul) BINARY_STRIDED(mul, 32, int) BINARY_STRIDED(mul, 64, i64)
BINARY_DENSE(div, 0) BINARY_DENSE(div, 1) BINARY_DENSE(div, 2) BINARY_ROWS(div) BINARY_STRIDED(div, 32, int) BINARY_STRIDED(div, 64, i64)
BINARY_DENSE(maximum, 0) BINARY_DENSE(maximum, 1) BINARY_DENSE(maximum, 2) BINARY_ROWS(maximum) BINARY_STRIDED(maximum, 32, int) BINARY_STRIDED(maximum, 64, i64)
BINARY_DENSE(minimum, 0) BINARY_DENSE(minimum, 1) BINARY_DENSE(minimum, 2) BINARY_ROWS(minimum) BINARY_STRIDED(minimum, 32, int) BINARY_STRIDED(minimum, 64, i64)
BINARY_DENSE(greater, 0) BINARY_DENSE(greater, 1) BINARY_DENSE(greater, 2) BINARY_ROWS(greater) BINARY_STRIDED(greater, 32, int) BINARY_STRIDED(greater, 64, i64)
BINARY_DENSE(greaterEqual, 0) BINARY_DENSE(greaterEqual, 1) BINARY_DENSE(greaterEqual, 2) BINARY_ROWS(greaterEqual) BINARY_STRIDED(greaterEqual, 32, int) BINARY_STRIDED(greaterEqual, 64, i64)
BINARY_DENSE(equal, 0) BINARY_DENSE(equal, 1) BINARY_DENSE(equal, 2) BINARY_ROWS(equal) BINARY_STRIDED(equal, 32, int) BINARY_STRIDED(equal, 64, i64)
