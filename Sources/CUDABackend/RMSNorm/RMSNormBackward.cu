// The backward passes of the scaled RMS normalisation (RMSNorm.cu's rmsnorm_scaled) and of its tangent: the input
// cotangents row by row, with the per-column sums of the scale's and shift's cotangents in the same pass (rows of a
// head) or in a column-sum pass after it (wider rows). Launchers: RMSNormBackward.swift; the formulas are TensorCore's
// NormBackend.rmsNormScaledBackward.
#include "../common.cuh"

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

// rmsnorm_scaled_bwd_impl for rows of exactly LANES * PACKS 16-byte packs with aligned addresses: x, dx and g read once into registers with vector loads (the scalar kernel reads each twice, a value at a
// time: 1.2-1.6 TB/s on the S/2 step's modulated norms), the scale packs read again for the outputs (one per batch
// entry: cache hits). rowR, rowQ as there, for norm_col_sums.
template<typename T, int LANES, int PACKS> __device__ __forceinline__ void rmsnorm_scaled_bwd_packs_impl(
        const T* __restrict__ x, const T* __restrict__ dx, const T* __restrict__ g, const T* __restrict__ sA,
        const T* __restrict__ sB, T* __restrict__ gx, T* __restrict__ gdx, const T* __restrict__ px,
        const T* __restrict__ pdx, T* __restrict__ rowR, T* __restrict__ rowQ, i64 nrows, i64 rows, i64 cols, T eps) {
    constexpr int RPW = 32 / LANES, P = 16 / sizeof(T);
    const int lane = threadIdx.x & 31, sub = lane / LANES, l = lane % LANES;
    const i64 nw = gstride() >> 5, width = LANES * PACKS;
    typedef Pack<T> V;
    const V* vx = reinterpret_cast<const V*>(x);
    const V* vd = reinterpret_cast<const V*>(dx);
    const V* vg = reinterpret_cast<const V*>(g);
    const V* va = reinterpret_cast<const V*>(sA);
    const V* vb = reinterpret_cast<const V*>(sB);
    for (i64 r0 = (gtid() >> 5) * RPW; r0 < nrows; r0 += nw * RPW) {
        const i64 r = r0 + sub, o = r * width, so = (r / rows) * width;
        const bool live = r < nrows;
        V xv[PACKS], dv[PACKS], gv[PACKS];
        T xx = 0, xd = 0, sa = 0, xa = 0, xc = 0;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = l + LANES * k;
            xv[k] = live ? vx[o + i] : V{};
            dv[k] = live && dx ? vd[o + i] : V{};
            gv[k] = live ? vg[o + i] : V{};
            V av{}, bv{};
            if (live && sA) av = va[so + i];
            if (live && sB) bv = vb[so + i];
#pragma unroll
            for (int e = 0; e < P; ++e) {
                const T xe = xv[k].v[e], de = dv[k].v[e], a = gv[k].v[e] * av.v[e], c = gv[k].v[e] * bv.v[e];
                xx += xe * xe; xd += xe * de; sa += a * de; xa += a * xe; xc += c * xe;
            }
        }
        xx = warp_sum<LANES>(xx); xd = warp_sum<LANES>(xd); sa = warp_sum<LANES>(sa);
        xa = warp_sum<LANES>(xa); xc = warp_sum<LANES>(xc);
        if (!live) continue;
        const T n = T(cols), inv = T(1) / m_sqrt(xx / n + eps), r3 = inv * inv * inv, mu = xd / n;
        const T ka = r3 * mu, kd = r3 * xa / n, kx = (T(3) * r3 * inv * inv * mu * xa - r3 * sa - r3 * xc) / n;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = l + LANES * k;
            V av{}, bv{}, outx, outd, qx, qd;
            if (sA) av = va[so + i];
            if (sB) bv = vb[so + i];
            if (px) qx = reinterpret_cast<const V*>(px)[o + i];
            if (pdx) qd = reinterpret_cast<const V*>(pdx)[o + i];
#pragma unroll
            for (int e = 0; e < P; ++e) {
                const T a = gv[k].v[e] * av.v[e], c = gv[k].v[e] * bv.v[e];
                const T wx = inv * c - ka * a - kd * dv[k].v[e] + kx * xv[k].v[e];
                outx.v[e] = px ? qx.v[e] + wx : wx;
                const T wd = inv * a - kd * xv[k].v[e];
                outd.v[e] = pdx ? qd.v[e] + wd : wd;
            }
            reinterpret_cast<V*>(gx)[o + i] = outx;
            if (gdx) reinterpret_cast<V*>(gdx)[o + i] = outd;
        }
        if (l == 0) { rowR[r] = inv; rowQ[r] = ka; }
    }
}

// The bwd_rows kernels' last step: the column sums of a block's 8 warps, part[w][c], added in a fixed order into
// out[c] (c < cols); the barriers let the caller fill part for the next output.
template<typename T, int N> __device__ __forceinline__ void add_warp_column_sums(const T (*part)[N], T* out, i64 cols) {
    __syncthreads();
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        T v = 0;
#pragma unroll
        for (int w = 0; w < 8; ++w) v += part[w][c];
        out[c] = v;
    }
    __syncthreads();
}

// rmsnorm_scaled_bwd for rows of at most 32 VPL values, held in registers, with the column sums of
// norm_col_sums in the same pass: a block of 8 warps takes rows [chunk * chunkRows, +chunkRows) of one batch
// entry (blockIdx.y = chunk * batch + entry, as row_sums), each lane keeps its columns' sums over its warp's
// rows, and the 8 warps add theirs through shared memory in a fixed order (deterministic). o0, o1, o2 (null:
// not wanted) get the block's sums at (chunk * batch + entry) * cols. x and dx null: x16 and dx16 hold their bf16
// values alone; gx and gdx null: gx16 and gdx16 get theirs so (cotangents only matrix products read).
template<typename T, int VPL> __device__ __forceinline__ void rmsnorm_scaled_bwd_rows_impl(
        const T* x, const unsigned short* x16, const T* dx, const unsigned short* dx16, const T* g, const T* sA, const T* sB,
        T* gx, unsigned short* gx16, T* gdx, unsigned short* gdx16, const T* px, const T* pdx, T* o0, T* o1, T* o2, i64 rows,
        i64 cols, i64 batch, i64 chunkRows, T eps) {
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
            xv[k] = in ? load_one(x, x16, o + i) : T(0);
            dv[k] = in && (dx || dx16) ? load_one(dx, dx16, o + i) : T(0);
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
                T vx = inv * c - ka * a - kd * dv[k] + kx * xv[k];
                if (px) vx += px[o + i];
                if (gx) gx[o + i] = vx; else store_bf16_one(gx16, o + i, vx);
                if (gdx || gdx16) {
                    T vd = inv * a - kd * xv[k];
                    if (pdx) vd += pdx[o + i];
                    if (gdx) gdx[o + i] = vd; else store_bf16_one(gdx16, o + i, vd);
                }
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
        add_warp_column_sums(part, outs[m] + (chunk * batch + bi) * cols, cols);
    }
}

// rmsnorm_scaled_bwd_rows_impl for rows of exactly LANES * PACKS 16-byte packs with aligned addresses (a head dim of
// 64: 8 lanes of two packs, four rows a warp): x, dx and g each read as float32 or bf16 (16 or 8 bytes a lane and
// pack), gx and gdx written either way, and each lane's columns' sums kept as packs; the lanes holding the same
// columns add theirs by shuffles, then the 8 warps through shared memory (fixed order: deterministic). The scalar
// kernel read and wrote the bf16 values two bytes at a time (9.2 ms of the S/2 step for 72 launches).
template<typename T, int LANES, int PACKS> __device__ __forceinline__ void rmsnorm_scaled_bwd_rows_packs_impl(
        const T* __restrict__ x, const unsigned short* __restrict__ x16, const T* __restrict__ dx,
        const unsigned short* __restrict__ dx16, const T* __restrict__ g, const unsigned short* __restrict__ g16,
        const T* __restrict__ sA, const T* __restrict__ sB, T* __restrict__ gx, unsigned short* __restrict__ gx16,
        T* __restrict__ gdx, unsigned short* __restrict__ gdx16, const T* __restrict__ px, const T* __restrict__ pdx,
        T* __restrict__ o0, T* __restrict__ o1, T* __restrict__ o2, i64 rows, i64 cols, i64 batch, i64 chunkRows, T eps) {
    constexpr int RPW = 32 / LANES, P = 16 / sizeof(T), WP = LANES * PACKS;
    typedef Pack<T> V;
    __shared__ T part[8][WP * P];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LANES, l = lane % LANES;
    const i64 bi = blockIdx.y % batch, chunk = blockIdx.y / batch, so = bi * WP;
    const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
    const bool hasD = dx || dx16, wantD = gdx || gdx16;
    V fa[PACKS], fb[PACKS], acc[3][PACKS];
#pragma unroll
    for (int k = 0; k < PACKS; ++k) {
        const i64 i = so + l + LANES * k;
        fa[k] = sA ? reinterpret_cast<const V*>(sA)[i] : V{};
        fb[k] = sB ? reinterpret_cast<const V*>(sB)[i] : V{};
        acc[0][k] = acc[1][k] = acc[2][k] = V{};
    }
    // Every lane runs every iteration (the shuffles need the whole warp); rows past the chunk read zeros.
    for (i64 r0 = first + warp * RPW; r0 < end; r0 += 8 * RPW) {
        const i64 rr = r0 + sub, o = (bi * rows + rr) * WP;
        const bool live = rr < end;
        V xv[PACKS], dv[PACKS], gv[PACKS];
        T xx = 0, xd = 0, sa = 0, xa = 0, xc = 0;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = o + l + LANES * k;
            xv[k] = live ? load_pack(x, x16, i) : V{};
            dv[k] = live && hasD ? load_pack(dx, dx16, i) : V{};
            gv[k] = live ? load_pack(g, g16, i) : V{};
#pragma unroll
            for (int e = 0; e < P; ++e) {
                const T a = gv[k].v[e] * fa[k].v[e], c = gv[k].v[e] * fb[k].v[e];
                xx += xv[k].v[e] * xv[k].v[e]; xd += xv[k].v[e] * dv[k].v[e]; sa += a * dv[k].v[e];
                xa += a * xv[k].v[e]; xc += c * xv[k].v[e];
            }
        }
        xx = warp_sum<LANES>(xx); xd = warp_sum<LANES>(xd); sa = warp_sum<LANES>(sa);
        xa = warp_sum<LANES>(xa); xc = warp_sum<LANES>(xc);
        const T n = T(cols), inv = live ? T(1) / m_sqrt(xx / n + eps) : T(0), r3 = inv * inv * inv, mu = xd / n;
        const T ka = r3 * mu, kd = r3 * xa / n, kx = (T(3) * r3 * inv * inv * mu * xa - r3 * sa - r3 * xc) / n;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
            const i64 i = o + l + LANES * k;
            V ox, od, qx, qd;
            if (live && px) qx = reinterpret_cast<const V*>(px)[i];
            if (live && pdx) qd = reinterpret_cast<const V*>(pdx)[i];
#pragma unroll
            for (int e = 0; e < P; ++e) {
                const T a = gv[k].v[e] * fa[k].v[e], c = gv[k].v[e] * fb[k].v[e];
                const T wx = inv * c - ka * a - kd * dv[k].v[e] + kx * xv[k].v[e];
                ox.v[e] = px ? qx.v[e] + wx : wx;
                const T wd = inv * a - kd * xv[k].v[e];
                od.v[e] = pdx ? qd.v[e] + wd : wd;
                // A dead row's values and inv are zeros, so it adds nothing (whatever eps).
                acc[0][k].v[e] += gv[k].v[e] * (xv[k].v[e] * inv);
                acc[1][k].v[e] += gv[k].v[e] * (inv * dv[k].v[e] - ka * xv[k].v[e]);
                acc[2][k].v[e] += gv[k].v[e];
            }
            if (live) {
                if (gx) reinterpret_cast<V*>(gx)[i] = ox; else store_bf16(gx16, i, ox);
                if (wantD) { if (gdx) reinterpret_cast<V*>(gdx)[i] = od; else store_bf16(gdx16, i, od); }
            }
        }
    }
    T* outs[3] = {o0, o1, o2};
#pragma unroll
    for (int m = 0; m < 3; ++m) {
        if (!outs[m]) continue;
#pragma unroll
        for (int k = 0; k < PACKS; ++k) {
#pragma unroll
            for (int e = 0; e < P; ++e) {
                T v = acc[m][k].v[e];
#pragma unroll
                for (int off = LANES; off < 32; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
                if (sub == 0) part[warp][(l + LANES * k) * P + e] = v;
            }
        }
        add_warp_column_sums(part, outs[m] + (chunk * batch + bi) * cols, cols);
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


// norm_col_sums_impl in 16-byte packs (a lane takes 16 / sizeof(T) columns, a block of 32 x 8 threads 32 packs), for
// rows of whole packs with every address aligned to its pack: vector loads, two rows a thread at a time with every
// load issued first.
template<typename T> __device__ __forceinline__ void norm_col_sums_packs_impl(const T* g, const T* x, const T* dx, const T* rowR,
                                                                              const T* rowQ, T* o0, T* o1, T* o2, i64 rows,
                                                                              i64 cols, i64 batch, i64 chunkRows) {
    constexpr int P = 16 / sizeof(T);
    typedef Pack<T> V;
    const i64 pcols = cols / P, pc = (i64)blockIdx.x * 32 + threadIdx.x, bi = blockIdx.y % batch, chunk = blockIdx.y / batch;
    const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
    V acc[3] = {V{}, V{}, V{}};
    if (pc < pcols) {
        for (i64 r0 = first + threadIdx.y; r0 < end; r0 += 16) {
            V gv[2], xv[2], dv[2];
            T rr[2], qq[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const i64 r = r0 + 8 * j, row = bi * rows + r, o = row * pcols + pc;
                const bool in = r < end;
                gv[j] = in ? reinterpret_cast<const V*>(g)[o] : V{};
                xv[j] = in && (o0 || o1) ? reinterpret_cast<const V*>(x)[o] : V{};
                dv[j] = in && o1 ? reinterpret_cast<const V*>(dx)[o] : V{};
                rr[j] = in ? rowR[row] : T(0);
                qq[j] = in && o1 ? rowQ[row] : T(0);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
#pragma unroll
                for (int e = 0; e < P; ++e) {
                    acc[0].v[e] += gv[j].v[e] * (xv[j].v[e] * rr[j]);
                    acc[1].v[e] += gv[j].v[e] * (rr[j] * dv[j].v[e] - qq[j] * xv[j].v[e]);
                    acc[2].v[e] += gv[j].v[e];
                }
            }
        }
    }
    T* const outs[3] = {o0, o1, o2};
    add_packed_column_sums(acc, outs, cols, (chunk * batch + bi) * cols);
}

// The backward with the column sums in the same pass: rows of up to 128 values (q/k norms over a head). Wider rows
// take a row pass (rmsnorm_scaled_bwd) and a column-sum pass (norm_col_sums): the per-lane sums need so many
// registers there that one block fits per SM (H100, DiT-S/2 rows of 384: 285 us against about 190 us per call).
//! kernel rmsnorm_scaled_bwd_rows(width: Int)
#define RMSNORM_SCALED_BWD_ROWS(width) TVM_KERNEL(rmsnorm_scaled_bwd_w##width, (256), (const scalar_t* x, \
        const unsigned short* x16, const scalar_t* dx, const unsigned short* dx16, const scalar_t* g, const scalar_t* sA, \
        const scalar_t* sB, scalar_t* gx, unsigned short* gx16, scalar_t* gdx, unsigned short* gdx16, const scalar_t* px, \
        const scalar_t* pdx, scalar_t* o0, scalar_t* o1, scalar_t* o2, i64 rows, i64 cols, i64 batch, i64 chunkRows, \
        scalar_t eps)) { \
    rmsnorm_scaled_bwd_rows_impl<scalar_t, width>(x, x16, dx, dx16, g, sA, sB, gx, gx16, gdx, gdx16, px, pdx, o0, o1, o2, rows, \
                                                  cols, batch, chunkRows, eps); }
RMSNORM_SCALED_BWD_ROWS(1) RMSNORM_SCALED_BWD_ROWS(2) RMSNORM_SCALED_BWD_ROWS(4)
// The row pass of wider rows in 16-byte packs (rmsnorm_scaled_bwd_packs_impl): DiT-S's width (78 registers; DiT-B's
// 768 took 128, two blocks an SM, and keeps the scalar kernel).
//! kernel rmsnorm_scaled_bwd_packs(lanes: Int, packs: Int)
#define RMSNORM_SCALED_BWD_PACKS(lanes, packs) TVM_KERNEL(rmsnorm_scaled_bwd_l##lanes##p##packs, (256), (const scalar_t* x, \
        const scalar_t* dx, const scalar_t* g, const scalar_t* sA, const scalar_t* sB, scalar_t* gx, scalar_t* gdx, \
        const scalar_t* px, const scalar_t* pdx, scalar_t* rowR, scalar_t* rowQ, i64 nrows, i64 rows, i64 cols, scalar_t eps)) { \
    rmsnorm_scaled_bwd_packs_impl<scalar_t, lanes, packs>(x, dx, g, sA, sB, gx, gdx, px, pdx, rowR, rowQ, nrows, rows, cols, eps); }
RMSNORM_SCALED_BWD_PACKS(32, 3)
// The same for a head dim of 64 in 16-byte packs (rmsnorm_scaled_bwd_rows_packs_impl), g also as bf16 alone. 120
// registers (two blocks an SM); capped at 80 for three it spilled 200 bytes.
//! kernel rmsnorm_scaled_bwd_rows_packs(lanes: Int, packs: Int)
#define RMSNORM_SCALED_BWD_ROWS_PACKS(lanes, packs) TVM_KERNEL(rmsnorm_scaled_bwd_rows_l##lanes##p##packs, (256), \
        (const scalar_t* x, const unsigned short* x16, const scalar_t* dx, const unsigned short* dx16, const scalar_t* g, \
        const unsigned short* g16, const scalar_t* sA, const scalar_t* sB, scalar_t* gx, unsigned short* gx16, scalar_t* gdx, \
        unsigned short* gdx16, const scalar_t* px, const scalar_t* pdx, scalar_t* o0, scalar_t* o1, scalar_t* o2, i64 rows, \
        i64 cols, i64 batch, i64 chunkRows, scalar_t eps)) { \
    rmsnorm_scaled_bwd_rows_packs_impl<scalar_t, lanes, packs>(x, x16, dx, dx16, g, g16, sA, sB, gx, gx16, gdx, gdx16, px, \
                                                               pdx, o0, o1, o2, rows, cols, batch, chunkRows, eps); }
RMSNORM_SCALED_BWD_ROWS_PACKS(8, 2)
TVM_KERNEL(rmsnorm_scaled_bwd, (256), (const scalar_t* x, const scalar_t* dx, const scalar_t* g, const scalar_t* sA,
                                       const scalar_t* sB, scalar_t* gx, scalar_t* gdx, const scalar_t* px, const scalar_t* pdx,
                                       scalar_t* rowR, scalar_t* rowQ, i64 nrows, i64 rows, i64 cols, scalar_t eps)) {
    rmsnorm_scaled_bwd_impl<scalar_t>(x, dx, g, sA, sB, gx, gdx, px, pdx, rowR, rowQ, nrows, rows, cols, eps);
}
// Value at a time (tag values) or in 16-byte packs (tag packs).
//! kernel norm_col_sums(vectorized: Bool)
#define NORM_COL_SUMS(tag, vectorized) TVM_KERNEL(norm_col_sums_##tag, (256), (const scalar_t* g, const scalar_t* x, \
        const scalar_t* dx, const scalar_t* rowR, const scalar_t* rowQ, scalar_t* o0, scalar_t* o1, scalar_t* o2, i64 rows, \
        i64 cols, i64 batch, i64 chunkRows)) { \
    if constexpr (vectorized) norm_col_sums_packs_impl<scalar_t>(g, x, dx, rowR, rowQ, o0, o1, o2, rows, cols, batch, chunkRows); \
    else norm_col_sums_impl<scalar_t>(g, x, dx, rowR, rowQ, o0, o1, o2, rows, cols, batch, chunkRows); }
NORM_COL_SUMS(values, false) NORM_COL_SUMS(packs, true)
