// RMS normalisation over the last axis: plain, scaled and shifted (adaLN, norm weights), its tangent, and the plain
// norm's derivative map (rmsnorm_linear) with its backward; the scaled norm's backward passes are RMSNormBackward.cu.
// Launchers: RMSNormKernels.swift; the formulas are TensorCore's NormBackend documentation of rmsNormScaled and friends.
#include "../common.cuh"

// y = x r s + t, r = 1 / sqrt(mean(x^2) + eps), over [batch, rows, cols] (nrows = batch * rows) with s and t
// per (batch entry, column); s null: plain RMS normalisation, t null: no shift; y16 (null: none) y's bf16 copy; y null:
// the copy alone (an output read only by matrix products). x null: x16 holds x's bf16 values alone (q and k before
// their norms).
// A warp per row, the row in registers; the normalised row is never stored.
template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_warp_impl(const T* x, const unsigned short* x16,
                                                                                       const T* s, const T* t, T* y,
                                                                                       unsigned short* y16, i64 nrows, i64 rows,
                                                                                       i64 cols, T eps) {
    const int lane = threadIdx.x & 31;
    const i64 nw = gstride() >> 5;
    for (i64 r = gtid() >> 5; r < nrows; r += nw) {
        const i64 so = (r / rows) * cols;
        T v[VPL];
        T ss = 0;
#pragma unroll
        for (int c = 0; c < VPL; ++c) {
            const int i = lane + 32 * c;
            v[c] = i < cols ? load_one(x, x16, r * cols + i) : T(0);
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
                if (y) y[r * cols + i] = o;
                store_bf16_one(y16, r * cols + i, o);
            }
        }
    }
}

// rmsnorm_scaled_warp_impl for rows of exactly LANES * PACKS 16-byte packs (every address aligned to its pack): LANES
// lanes a row (32 / LANES rows a warp: a head dim of 64 is 8 lanes of two packs, four rows a warp), each holding
// PACKS packs. Vector loads and stores, the factors' loads free to move ahead of the stores (the pointers do not
// alias), and log2(LANES) shuffles a row. The scalar kernel ran the DiT's modulated norms at 1.1 TB/s (54 registers, half the
// warps) and its q/k norms at 1.4 TB/s with five shuffles for every 64 values (ncu, H100, sixteenth session).
template<typename T, int LANES, int PACKS> __device__ __forceinline__ void rmsnorm_scaled_packs_impl(
        const T* __restrict__ x, const unsigned short* __restrict__ x16, const T* __restrict__ s, const T* __restrict__ t,
        T* __restrict__ y, unsigned short* __restrict__ y16, i64 nrows, i64 rows, i64 cols, T eps) {
    constexpr int RPW = 32 / LANES, P = 16 / sizeof(T);
    const int lane = threadIdx.x & 31, sub = lane / LANES, l = lane % LANES;
    const i64 nw = gstride() >> 5, width = LANES * PACKS;
    const Pack<T>* ps = reinterpret_cast<const Pack<T>*>(s);
    const Pack<T>* pt = reinterpret_cast<const Pack<T>*>(t);
    for (i64 r0 = (gtid() >> 5) * RPW; r0 < nrows; r0 += nw * RPW) {
        const i64 r = r0 + sub, o = r * width, so = (r / rows) * width;
        const bool live = r < nrows;
        Pack<T> v[PACKS];
        T ss = 0;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            v[k] = live ? load_pack(x, x16, o + l + LANES * k) : Pack<T>{};
#pragma unroll
            for (int e = 0; e < P; ++e) ss += v[k].v[e] * v[k].v[e];
        }
        ss = warp_sum<LANES>(ss);
        if (!live) continue;
        const T inv = T(1) / m_sqrt(ss / T(cols) + eps);
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = l + LANES * k;
            Pack<T> out, sv, tv;
            if (s) sv = ps[so + i];
            if (t) tv = pt[so + i];
#pragma unroll
            for (int e = 0; e < P; ++e) {
                T q = v[k].v[e] * inv;
                if (s) q *= sv.v[e];
                if (t) q += tv.v[e];
                out.v[e] = q;
            }
            if (y) reinterpret_cast<Pack<T>*>(y)[o + i] = out;
            store_bf16(y16, o + i, out);
        }
    }
}

// Rows too long for registers: a block per row, the row read twice (the second time mostly from cache).
template<typename T> __device__ __forceinline__ void rmsnorm_scaled_block_impl(const T* x, const unsigned short* x16, const T* s,
                                                                               const T* t, T* y, unsigned short* y16,
                                                                               i64 nrows, i64 rows, i64 cols, T eps) {
    __shared__ T sm[32];
    for (i64 r = blockIdx.x; r < nrows; r += gridDim.x) {
        const i64 so = (r / rows) * cols;
        T ss = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) { const T v = load_one(x, x16, r * cols + c); ss += v * v; }
        ss = block_reduce<T, false>(ss, sm);
        const T inv = T(1) / m_sqrt(ss / T(cols) + eps);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            T o = load_one(x, x16, r * cols + c) * inv;
            if (s) o *= s[so + c];
            if (t) o += t[so + c];
            if (y) y[r * cols + c] = o;
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
// rmsnorm_linear's r (dx - n mean(n dx)), n = r x); ds, dt, y16 may be null, and out too (y16 alone). A warp per row:
// VPL > 0 holds a row of at most 32 VPL values in registers, VPL = 0 reads it twice (the second time mostly from cache).
// x and dx null: x16 and dx16 hold their bf16 values alone.
template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_jvp_impl(const T* x, const unsigned short* x16,
                                                                                      const T* dx, const unsigned short* dx16,
                                                                                      const T* s, const T* ds, const T* dt,
                                                                                      T* out, unsigned short* y16, i64 nrows,
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
                xv[k] = i < cols ? load_one(x, x16, o + i) : T(0);
                dv[k] = i < cols ? load_one(dx, dx16, o + i) : T(0);
            }
#pragma unroll
            for (int k = 0; k < VPL; ++k) { xx += xv[k] * xv[k]; xd += xv[k] * dv[k]; }
        } else {
            for (i64 i = lane; i < cols; i += 32) {
                const T v = load_one(x, x16, o + i);
                xx += v * v; xd += v * load_one(dx, dx16, o + i);
            }
        }
        xx = warp_sum(xx); xd = warp_sum(xd);
        const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), q = inv * inv * inv * xd / n;
        auto put = [&](i64 i, T xi, T di) {
            T v = s[so + i] * (inv * di - q * xi);
            if (ds) v += ds[so + i] * (xi * inv);
            if (dt) v += dt[so + i];
            if (out) out[o + i] = v;
            store_bf16_one(y16, o + i, v);
        };
        if constexpr (VPL > 0) {
#pragma unroll
            for (int k = 0; k < VPL; ++k) { const i64 i = lane + 32 * k; if (i < cols) put(i, xv[k], dv[k]); }
        } else {
            for (i64 i = lane; i < cols; i += 32) put(i, load_one(x, x16, o + i), load_one(dx, dx16, o + i));
        }
    }
}

// rmsnorm_scaled_jvp_impl for rows of exactly LANES * PACKS 16-byte packs, laid out as rmsnorm_scaled_packs_impl (x's
// and dx's packs in registers; s given, ds, dt, out and y16 may be null; x and dx null: their bf16 values alone).
template<typename T, int LANES, int PACKS> __device__ __forceinline__ void rmsnorm_scaled_jvp_packs_impl(
        const T* __restrict__ x, const unsigned short* __restrict__ x16, const T* __restrict__ dx,
        const unsigned short* __restrict__ dx16, const T* __restrict__ s, const T* __restrict__ ds, const T* __restrict__ dt,
        T* __restrict__ out, unsigned short* __restrict__ y16, i64 nrows, i64 rows, i64 cols, T eps) {
    constexpr int RPW = 32 / LANES, P = 16 / sizeof(T);
    const int lane = threadIdx.x & 31, sub = lane / LANES, l = lane % LANES;
    const i64 nw = gstride() >> 5, width = LANES * PACKS;
    typedef Pack<T> V;
    for (i64 r0 = (gtid() >> 5) * RPW; r0 < nrows; r0 += nw * RPW) {
        const i64 r = r0 + sub, o = r * width, so = (r / rows) * width;
        const bool live = r < nrows;
        V xv[PACKS], dv[PACKS];
        T xx = 0, xd = 0;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = o + l + LANES * k;
            xv[k] = live ? load_pack(x, x16, i) : V{};
            dv[k] = live ? load_pack(dx, dx16, i) : V{};
#pragma unroll
            for (int e = 0; e < P; ++e) { xx += xv[k].v[e] * xv[k].v[e]; xd += xv[k].v[e] * dv[k].v[e]; }
        }
        xx = warp_sum<LANES>(xx);
        xd = warp_sum<LANES>(xd);
        if (!live) continue;
        const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), q = inv * inv * inv * xd / n;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = l + LANES * k;
            const V sv = reinterpret_cast<const V*>(s)[so + i];
            V dsv, dtv, v;
            if (ds) dsv = reinterpret_cast<const V*>(ds)[so + i];
            if (dt) dtv = reinterpret_cast<const V*>(dt)[so + i];
#pragma unroll
            for (int e = 0; e < P; ++e) {
                T w = sv.v[e] * (inv * dv[k].v[e] - q * xv[k].v[e]);
                if (ds) w += dsv.v[e] * (xv[k].v[e] * inv);
                if (dt) w += dtv.v[e];
                v.v[e] = w;
            }
            if (out) reinterpret_cast<V*>(out)[o + i] = v;
            store_bf16(y16, o + i, v);
        }
    }
}

// Rows of at most 32 * width values in registers (a warp per row); longer rows take the _block kernels.
//! kernel rmsnorm_warp(width: Int)
#define RMSNORM_WARP(width) TVM_KERNEL(rmsnorm_warp##width, (256), (const scalar_t* x, scalar_t* y, i64 rows, i64 cols, \
        scalar_t eps)) { rmsnorm_scaled_warp_impl<scalar_t, width>(x, nullptr, nullptr, nullptr, y, nullptr, rows, rows, cols, eps); }
RMSNORM_WARP(1) RMSNORM_WARP(2) RMSNORM_WARP(4) RMSNORM_WARP(8) RMSNORM_WARP(16) RMSNORM_WARP(32) RMSNORM_WARP(48) RMSNORM_WARP(64)
TVM_KERNEL(rmsnorm_block, (1024), (const scalar_t* x, scalar_t* y, i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_scaled_block_impl<scalar_t>(x, nullptr, nullptr, nullptr, y, nullptr, rows, rows, cols, eps);
}

//! kernel rmsnorm_scaled_warp(width: Int)
#define RMSNORM_SCALED_WARP(width) TVM_KERNEL(rmsnorm_scaled_warp##width, (256), (const scalar_t* x, const unsigned short* x16, \
        const scalar_t* s, const scalar_t* t, scalar_t* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols, scalar_t eps)) { \
    rmsnorm_scaled_warp_impl<scalar_t, width>(x, x16, s, t, y, y16, nrows, rows, cols, eps); }
RMSNORM_SCALED_WARP(1) RMSNORM_SCALED_WARP(2) RMSNORM_SCALED_WARP(4) RMSNORM_SCALED_WARP(8) RMSNORM_SCALED_WARP(16) RMSNORM_SCALED_WARP(32) RMSNORM_SCALED_WARP(48) RMSNORM_SCALED_WARP(64)
// Packed rows (rmsnorm_scaled_packs_impl) of the DiT's widths: q/k norms over a head dim of 64, the modulated norms of
// DiT-S, B, L and XL (384, 768, 1024, 1152 float32 values). s and t null: plain RMS normalisation.
//! kernel rmsnorm_scaled_packs(lanes: Int, packs: Int)
#define RMSNORM_SCALED_PACKS(lanes, packs) TVM_KERNEL(rmsnorm_scaled_l##lanes##p##packs, (256), (const scalar_t* x, \
        const unsigned short* x16, const scalar_t* s, const scalar_t* t, scalar_t* y, unsigned short* y16, i64 nrows, i64 rows, \
        i64 cols, scalar_t eps)) { rmsnorm_scaled_packs_impl<scalar_t, lanes, packs>(x, x16, s, t, y, y16, nrows, rows, cols, eps); }
RMSNORM_SCALED_PACKS(8, 2) RMSNORM_SCALED_PACKS(32, 3) RMSNORM_SCALED_PACKS(32, 6) RMSNORM_SCALED_PACKS(32, 8) RMSNORM_SCALED_PACKS(32, 9)
TVM_KERNEL(rmsnorm_scaled_block, (1024), (const scalar_t* x, const unsigned short* x16, const scalar_t* s, const scalar_t* t,
                                          scalar_t* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_scaled_block_impl<scalar_t>(x, x16, s, t, y, y16, nrows, rows, cols, eps);
}

// The tangent: rows of up to 512 values (DiT-S and every head dimension) in registers, longer ones read twice.
//! kernel rmsnorm_scaled_jvp_rows(width: Int)
#define RMSNORM_SCALED_JVP_ROWS(width) TVM_KERNEL(rmsnorm_scaled_jvp_w##width, (256), (const scalar_t* x, \
        const unsigned short* x16, const scalar_t* dx, const unsigned short* dx16, const scalar_t* s, const scalar_t* ds, \
        const scalar_t* dt, scalar_t* out, unsigned short* y16, i64 nrows, i64 rows, i64 cols, scalar_t eps)) { \
    rmsnorm_scaled_jvp_impl<scalar_t, width>(x, x16, dx, dx16, s, ds, dt, out, y16, nrows, rows, cols, eps); }
RMSNORM_SCALED_JVP_ROWS(1) RMSNORM_SCALED_JVP_ROWS(2) RMSNORM_SCALED_JVP_ROWS(4) RMSNORM_SCALED_JVP_ROWS(8)
RMSNORM_SCALED_JVP_ROWS(12) RMSNORM_SCALED_JVP_ROWS(16)
// The tangent of packed rows (rmsnorm_scaled_jvp_packs_impl): a head dim of 64, DiT-S and DiT-B widths.
//! kernel rmsnorm_scaled_jvp_packs(lanes: Int, packs: Int)
#define RMSNORM_SCALED_JVP_PACKS(lanes, packs) TVM_KERNEL(rmsnorm_scaled_jvp_l##lanes##p##packs, (256), (const scalar_t* x, \
        const unsigned short* x16, const scalar_t* dx, const unsigned short* dx16, const scalar_t* s, const scalar_t* ds, \
        const scalar_t* dt, scalar_t* out, unsigned short* y16, i64 nrows, i64 rows, i64 cols, scalar_t eps)) { \
    rmsnorm_scaled_jvp_packs_impl<scalar_t, lanes, packs>(x, x16, dx, dx16, s, ds, dt, out, y16, nrows, rows, cols, eps); }
RMSNORM_SCALED_JVP_PACKS(8, 2) RMSNORM_SCALED_JVP_PACKS(32, 3) RMSNORM_SCALED_JVP_PACKS(32, 6)
TVM_KERNEL(rmsnorm_scaled_jvp, (256), (const scalar_t* x, const unsigned short* x16, const scalar_t* dx,
                                       const unsigned short* dx16, const scalar_t* s, const scalar_t* ds, const scalar_t* dt,
                                       scalar_t* out, unsigned short* y16, i64 nrows, i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_scaled_jvp_impl<scalar_t, 0>(x, x16, dx, dx16, s, ds, dt, out, y16, nrows, rows, cols, eps);
}

TVM_KERNEL(rmsnorm_linear, (256), (const scalar_t* x, const scalar_t* y, const scalar_t* d, const scalar_t* c, scalar_t* out,
                                   i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_linear_impl<scalar_t>(x, y, d, c, out, rows, cols, eps);
}
TVM_KERNEL(rmsnorm_linear_bwd, (256), (const scalar_t* x, const scalar_t* y, const scalar_t* d, const scalar_t* g, scalar_t* gx,
                                       scalar_t* gy, scalar_t* gd, const scalar_t* cx, const scalar_t* cy, const scalar_t* cd,
                                       i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_linear_bwd_impl<scalar_t>(x, y, d, g, gx, gy, gd, cx, cy, cd, rows, cols, eps);
}
