// Fused flash attention (float32 tensors, head dims 64 and 72): forward with the tangent, and the backward's
// query side (dq) and key side (dk, dv). Launchers and launch geometry: FlashAttentionKernels.swift.
#include "../common.cuh"
#include "FlashTiles.cuh"

/// The online softmax's first half for a warp's row tile of scores s (and with TAN its tangent scores ts) from the key
/// block at j0: scaled, keys past n masked, the running max m moved on, l (and mu) rescaled by alpha, the factor for the
/// accumulators. This lane holds rows g (e = 0, 1) and g + 8 (e = 2, 3) of the tile.
template<int PREC, bool TAN, int NC>
__device__ __forceinline__ void flash_softmax_max(float (&s)[NC][4], float (&ts)[NC][4], float (&m)[2], float (&l)[2],
        float (&mu)[2], float (&alpha)[2], int j0, int n, int t, float scale) {
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
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        mx[h] = quad_max(mx[h]);
        alpha[h] = flash_exp<PREC>(m[h] - mx[h]);
        m[h] = mx[h];
        l[h] *= alpha[h];
        if (TAN) mu[h] *= alpha[h];
    }
}
/// The second half: s becomes the weights p = e^(s - m), summed into l; with TAN ts becomes p ts, summed into mu.
template<int PREC, bool TAN, int NC>
__device__ __forceinline__ void flash_softmax_weights(float (&s)[NC][4], float (&ts)[NC][4], const float (&m)[2],
        float (&l)[2], float (&mu)[2]) {
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = flash_exp<PREC>(s[c][e] - m[e >> 1]);
            l[e >> 1] += p;
            s[c][e] = p;
            if (TAN) { ts[c][e] *= p; mu[e >> 1] += ts[c][e]; }
        }
}

/// Forward (grid: query blocks of 16 * WARPS * TILES rows, heads; each warp TILES row tiles of 16): o, lse, and with
/// TAN the tangent to_i = sum_j P_ij tS_ij v_j - mu_i o_i + sum_j P_ij tv_j (mu_i = sum_j P_ij tS_ij), accumulated in
/// one pass over key blocks of BC: acc = sum p v, tacc = sum p (tS v + tv), rescaled with the running max. o and to
/// (null: not stored) get the float32 values, o16 and to16 (null: none) their bf16 copies: an output that only the
/// output projection reads is kept as its copy alone. With TAN, muOut (null: not stored) gets mu_i per row, which the
/// backward's row statistics need (flash_row_stats).
/// With `stats` (the backward's pre-pass) nothing is stored but, per row, float4 (lseIn, mu, rho, dotPdP):
/// rho = gto.o, dotPdP = sum_j P_ij dP_ij = go.o + gto.to - mu rho (TAN) or go.o; and o16 and to16 (null: none) then
/// receive the bf16 copies of go and gto, which dq and dkv stage by cp.async (dkv at every step of its loop).
template<int D, int WARPS, int TILES, int BC, bool TAN, int PREC>
__device__ __forceinline__ void flash_fwd_impl(FlashIn q, FlashIn k, FlashIn v, FlashIn tq, FlashIn tk, FlashIn tv,
        float* __restrict__ o, float* __restrict__ to, float* __restrict__ lse, float* __restrict__ muOut,
        unsigned short* __restrict__ o16, unsigned short* __restrict__ to16,
        const float* __restrict__ go, const float* __restrict__ gto, const float* __restrict__ lseIn,
        float* __restrict__ stats, int n, int heads, float scale) {
    typedef typename FlashPrec<PREC>::E E;
    // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
    constexpr int LD = FlashPrec<PREC>::template ld<D>(), KDP = FlashPrec<PREC>::template cols<D>() / 8;
    constexpr int BR = 16 * WARPS * TILES, KD = D / 8, NC = BC / 8, THREADS = 32 * WARPS, STAGES = FlashPrec<PREC>::STAGES;
    constexpr int NQ = TAN ? 2 : 1, NK = TAN ? 4 : 2;
    constexpr int SMEM = (BR * NQ + STAGES * BC * NK) * LD * (int)sizeof(E);
    flash_check_launch<THREADS, SMEM>();
    extern __shared__ float4 flash_smem[];
    E* sQ = reinterpret_cast<E*>(flash_smem);
    E* sTQ = sQ + BR * LD;
    // STAGES sets of the key block's tiles K, V, tK, tV.
    E* sKeys = sQ + NQ * BR * LD;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16 * TILES;
    const int q0 = blockIdx.x * BR;
    const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D;
    auto stage = [&](int set, int row0) {
        flash_stage_group<D, BC, THREADS, PREC, TAN>(sKeys + set * NK * BC * LD, k, v, tk, tv, hb, ld, row0, n);
    };
    flash_stage<D, BR, THREADS, PREC>(sQ, q, hb, ld, q0, n);
    if (TAN) flash_stage<D, BR, THREADS, PREC>(sTQ, tq, hb, ld, q0, n);
    if (STAGES == 2) stage(0, 0);
    // Per row tile m: accumulators, and for this lane's rows g (h = 0) and g + 8 (h = 1) the running max, sum and mu.
    float acc[TILES][KD][4], tacc[TILES][KD][4], m[TILES][2], l[TILES][2], mu[TILES][2];
#pragma unroll
    for (int mt = 0; mt < TILES; ++mt) {
        zero_tiles(acc[mt]);
        zero_tiles(tacc[mt]);
        m[mt][0] = m[mt][1] = -inf_<float>();
        l[mt][0] = l[mt][1] = mu[mt][0] = mu[mt][1] = 0.f;
    }
    for (int j0 = 0; j0 < n; j0 += BC) {
        const E* sK = sKeys + flash_inner_step<STAGES, BC, FlashPrec<PREC>::CORE>(j0, n, stage) * NK * BC * LD;
        const E* sV = sK + BC * LD;
        const E* sTK = sV + BC * LD;
        const E* sTV = sTK + BC * LD;
        // s = q k^T, ts = tq k^T + q tk^T.
        float s[TILES][NC][4], ts[TILES][NC][4];
#pragma unroll
        for (int mt = 0; mt < TILES; ++mt) { zero_tiles(s[mt]); zero_tiles(ts[mt]); }
        tile_products_bt<PREC, LD, KDP, TAN, true, TANGENT, PLAIN, PLAIN, TANGENT>(s, ts, ts, sQ, sTQ, sK, sTK, r0, g, t);
        // Online softmax of each row tile, the accumulators rescaled between its two halves.
#pragma unroll
        for (int mt = 0; mt < TILES; ++mt) {
            float alpha[2];
            flash_softmax_max<PREC, TAN>(s[mt], ts[mt], m[mt], l[mt], mu[mt], alpha, j0, n, t, scale);
#pragma unroll
            for (int i = 0; i < KD; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) { acc[mt][i][e] *= alpha[e >> 1]; if (TAN) tacc[mt][i][e] *= alpha[e >> 1]; }
            flash_softmax_weights<PREC, TAN>(s[mt], ts[mt], m[mt], l[mt], mu[mt]);
        }
        // acc += P V; tacc += (P o tS) V + P tV (k runs over this block's keys).
        tile_products_bn<PREC, LD, TAN, TANGENT, PLAIN, PLAIN, TANGENT>(acc, tacc, tacc, s, ts, sV, sTV, g, t);
    }
#pragma unroll
    for (int mt = 0; mt < TILES; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) { l[mt][h] = quad_sum(l[mt][h]); if (TAN) mu[mt][h] = quad_sum(mu[mt][h]); }
        const i64 rowBase = (i64)blockIdx.y * n;
        if (stats == nullptr) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = q0 + r0 + 16 * mt + g + 8 * h;
                if (row < n) {
                    const float inv = 1.f / l[mt][h], muv = mu[mt][h] * inv;
                    const i64 off = hb + row * ld + 2 * t;
#pragma unroll
                    for (int i = 0; i < KD; ++i) {
                        const float o0 = acc[mt][i][2 * h] * inv, o1 = acc[mt][i][2 * h + 1] * inv;
                        if (o != nullptr) *reinterpret_cast<float2*>(o + off + i * 8) = make_float2(o0, o1);
                        store_bf16_pair(o16, off + i * 8, o0, o1);
                        if (TAN) {
                            const float t0 = tacc[mt][i][2 * h] * inv - muv * o0, t1 = tacc[mt][i][2 * h + 1] * inv - muv * o1;
                            if (to != nullptr) *reinterpret_cast<float2*>(to + off + i * 8) = make_float2(t0, t1);
                            store_bf16_pair(to16, off + i * 8, t0, t1);
                        }
                    }
                    if (t == 0) {
                        lse[rowBase + row] = m[mt][h] + m_log(l[mt][h]);
                        if (TAN && muOut != nullptr) muOut[rowBase + row] = muv;
                    }
                }
            }
        } else {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = q0 + r0 + 16 * mt + g + 8 * h;
                const float inv = 1.f / l[mt][h], muv = TAN ? mu[mt][h] * inv : 0.f;
                float gdo = 0.f, rho = 0.f, gtt = 0.f;
                if (row < n) {
                    const i64 off = hb + row * ld + 2 * t;
#pragma unroll
                    for (int i = 0; i < KD; ++i) {
                        const float o0 = acc[mt][i][2 * h] * inv, o1 = acc[mt][i][2 * h + 1] * inv;
                        const float2 a = *reinterpret_cast<const float2*>(go + off + i * 8);
                        store_bf16_pair(o16, off + i * 8, a.x, a.y);
                        gdo += a.x * o0 + a.y * o1;
                        if (TAN) {
                            const float2 b = *reinterpret_cast<const float2*>(gto + off + i * 8);
                            store_bf16_pair(to16, off + i * 8, b.x, b.y);
                            rho += b.x * o0 + b.y * o1;
                            gtt += b.x * (tacc[mt][i][2 * h] * inv - muv * o0) + b.y * (tacc[mt][i][2 * h + 1] * inv - muv * o1);
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
}

/// The plain forward (o, lse) as a pipeline of warpgroup products (sm_90a; FlashAttention-3's overlap within a
/// warpgroup): the scores of key block j and the product of block j - 1's weights with its values are queued
/// together, the scores waited for first, so the softmax of block j runs while the tensor cores multiply block j - 1's
/// values. One warpgroup of 64 query rows a block (each warp its 16, A fragments in registers: q once, the weights
/// as the softmax leaves them), key blocks of BC; three sets of key tiles, as block j + 1 is staged while block j's
/// keys and block j - 1's values are read. A variant of the plain BF16 forward to be timed (TVM_CUDA_FLASH_VARIANT=wgp;
/// not yet run). Same results as the FP_WG forward up to the order of its products (the same products).
template<int D, int BC>
__device__ __forceinline__ void flash_fwd_pipelined_impl(FlashIn q, FlashIn k, FlashIn v, float* __restrict__ o,
        float* __restrict__ lse, unsigned short* __restrict__ o16, int n, int heads, float scale) {
    constexpr int PREC = FP_WG;
    typedef typename FlashPrec<PREC>::E E;
    constexpr int LD = FlashPrec<PREC>::template ld<D>(), QSTEPS = FlashPrec<PREC>::template cols<D>() / 16;
    constexpr int BR = 64, KD = D / 8, NC = BC / 8, PSTEPS = BC / 16, THREADS = 128, SETS = 3;
    constexpr int SMEM = (BR + SETS * 2 * BC) * LD * (int)sizeof(E);
    flash_check_launch<THREADS, SMEM>();
    extern __shared__ float4 flash_smem[];
    E* sQ = reinterpret_cast<E*>(flash_smem);
    E* sKeys = sQ + BR * LD;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
    const int q0 = blockIdx.x * BR, blocks = (n + BC - 1) / BC;
    const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D;
    // Key block b's tiles K, V in set b mod 3.
    auto keys = [&](int b) { return sKeys + (b % SETS) * 2 * BC * LD; };
    auto stage = [&](int b) { flash_stage_group<D, BC, THREADS, PREC, false>(keys(b), k, v, k, v, hb, ld, b * BC, n); };
    flash_stage<D, BR, THREADS, PREC>(sQ, q, hb, ld, q0, n);
    stage(0);
    float acc[KD][4], m[2] = {-inf_<float>(), -inf_<float>()}, l[2] = {0.f, 0.f};
    zero_tiles(acc);
    u32 qa[QSTEPS][4], pa[PSTEPS][4];
    auto values = [&](int b) {   // acc += P_b V_b, queued (B: the value tile itself, MN-major)
        const E* sV = keys(b) + BC * LD;
#pragma unroll
        for (int i = 0; i < PSTEPS; ++i) wg_mma<8 * KD, true>(acc, pa[i], wg_desc(sV + 16 * LD * i, LD * 16, 128));
        wg_commit();
    };
    // s = q k^T for block b, queued (B: the key tile transposed, K-major); s zeroed first.
    float s[NC][4];
    auto scores = [&](int b) {
        const E* sK = keys(b);
#pragma unroll
        for (int i = 0; i < QSTEPS; ++i) wg_mma<BC, false>(s, qa[i], wg_desc(sK + 128 * i, 128, LD * 16));
        wg_commit();
    };
    // Online softmax of block b's scores (without a tangent: s stands in for ts, none for mu, neither is touched).
    float alpha[2], none[2];
    auto softmax = [&](int b) {
        flash_softmax_max<PREC, false>(s, s, m, l, none, alpha, b * BC, n, t, scale);
        flash_softmax_weights<PREC, false>(s, s, m, l, none);
    };
    // acc rescaled (block b - 1's values in), the weights of block b as the next A fragments.
    auto advance = [&] {
#pragma unroll
        for (int i = 0; i < KD; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][e] *= alpha[e >> 1];
#pragma unroll
        for (int i = 0; i < PSTEPS; ++i) {
            const FragA<PREC> f = acc_a<PREC>(s[2 * i], s[2 * i + 1]);
#pragma unroll
            for (int e = 0; e < 4; ++e) pa[i][e] = f.h[e];
        }
    };
    // Block 0 alone, so that no queued product sits on a conditional path in the loop (ptxas serializes those).
    cp_async_wait_all();
    fence_async_shared();
    __syncthreads();
#pragma unroll
    for (int i = 0; i < QSTEPS; ++i) {
        const FragA<PREC> f = lds_a<PREC, LD>(sQ, r0, 16 * i, g, t);
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[i][e] = f.h[e];
    }
    if (blocks > 1) stage(1);
    zero_tiles(s);
    wg_operands(s);
    wg_fence();
    scores(0);
    wg_wait<0>();
    wg_operands(s);
    softmax(0);
    advance();
    for (int j = 1; j < blocks; ++j) {
        // Block j's tiles in place and visible to the tensor cores; every warp done with block j - 2's set.
        cp_async_wait_all();
        fence_async_shared();
        __syncthreads();
        if (j + 1 < blocks) stage(j + 1);
        zero_tiles(s);
        wg_operands(s);
        wg_operands(acc);
        wg_operands(pa);
        wg_fence();
        scores(j);
        values(j - 1);
        wg_wait<1>();
        wg_operands(s);
        softmax(j);
        wg_wait<0>();
        wg_operands(acc);
        wg_operands(pa);
        advance();
    }
    wg_operands(acc);
    wg_operands(pa);
    wg_fence();
    values(blocks - 1);
    wg_wait<0>();
    wg_operands(acc);
    const i64 rowBase = (i64)blockIdx.y * n;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] = quad_sum(l[h]);
        const int row = q0 + r0 + g + 8 * h;
        if (row < n) {
            const float inv = 1.f / l[h];
            const i64 off = hb + row * ld + 2 * t;
#pragma unroll
            for (int i = 0; i < KD; ++i) {
                const float o0 = acc[i][2 * h] * inv, o1 = acc[i][2 * h + 1] * inv;
                if (o != nullptr) *reinterpret_cast<float2*>(o + off + i * 8) = make_float2(o0, o1);
                store_bf16_pair(o16, off + i * 8, o0, o1);
            }
            if (t == 0) lse[rowBase + row] = m[h] + m_log(l[h]);
        }
    }
}

/// The backward's row statistics from the forward's saved outputs, in place of the pre-pass (FlashAttention-2's
/// preprocessing, with the tangent): per row float4 (lse, mu, rho = gto.o, dotPdP = go.o + gto.to - mu rho) or
/// (lse, 0, 0, go.o), from o and to (float32 where they have it, else their bf16 copies o16, to16) and the forward's
/// mu, and the bf16 copies of go and gto (go16, gto16; null: none) that dq and dkv stage. Four lanes a row, each the
/// column pairs 8 i + 2 t as the forward's fragments hold them, summed in the pre-pass's order: with float32 outputs
/// the statistics are the pre-pass's bits.
template<int D, bool TAN>
__device__ __forceinline__ void flash_row_stats_impl(const float* __restrict__ go, const float* __restrict__ gto,
        const float* __restrict__ o, const float* __restrict__ to, const unsigned short* __restrict__ o16,
        const unsigned short* __restrict__ to16, const float* __restrict__ lse, const float* __restrict__ mu,
        float* __restrict__ stats, unsigned short* __restrict__ go16, unsigned short* __restrict__ gto16, int n, int heads,
        i64 rows) {
    constexpr int KD = D / 8;
    const int t = threadIdx.x & 3;
    const i64 row = gtid() >> 2;
    const bool live = row < rows;
    // A pair of an output as float32 values, or from its bf16 copy.
    auto pair = [](const float* x, const unsigned short* x16, i64 i) {
        if (x != nullptr) return *reinterpret_cast<const float2*>(x + i);
        const u32 w = *reinterpret_cast<const u32*>(x16 + i);
        return make_float2(bf16_lo(w), bf16_hi(w));
    };
    float gdo = 0.f, rho = 0.f, gtt = 0.f, muv = 0.f;
    if (live) {
        const i64 bh = row / n, off = attn_head_offset(bh, n, heads, D) + (row - bh * n) * (i64)heads * D + 2 * t;
        if (TAN) muv = mu[row];
#pragma unroll
        for (int i = 0; i < KD; ++i) {
            const float2 ov = pair(o, o16, off + i * 8);
            const float2 a = *reinterpret_cast<const float2*>(go + off + i * 8);
            store_bf16_pair(go16, off + i * 8, a.x, a.y);
            gdo += a.x * ov.x + a.y * ov.y;
            if (TAN) {
                const float2 b = *reinterpret_cast<const float2*>(gto + off + i * 8), tv = pair(to, to16, off + i * 8);
                store_bf16_pair(gto16, off + i * 8, b.x, b.y);
                rho += b.x * ov.x + b.y * ov.y;
                gtt += b.x * tv.x + b.y * tv.y;
            }
        }
    }
    gdo = quad_sum(gdo);
    if (TAN) { rho = quad_sum(rho); gtt = quad_sum(gtt); }
    if (live && t == 0)
        *reinterpret_cast<float4*>(stats + row * 4) = make_float4(lse[row], muv, rho, TAN ? gdo + gtt - muv * rho : gdo);
}

/// Backward, query side (grid: query blocks of 16 * WARPS rows, heads): dq = scale sum_j (dS k + dtS tk),
/// dtq = scale sum_j dtS k, one pass over key blocks of BC, P recomputed from the saved lse. Per pair:
/// ts = scale (tq.k + q.tk), G = go.v + gto.tv, R = gto.v, dp = G + R (ts - mu) - ts rho,
/// dS = P (dp - dotPdP), dtS = P (R - rho) (AttentionKernels.swift's formulas).
template<int D, int WARPS, int BC, bool TAN, int PREC>
__device__ __forceinline__ void flash_bwd_dq_impl(FlashIn q, FlashIn k, FlashIn v, FlashIn tq, FlashIn tk, FlashIn tv,
        FlashIn go, FlashIn gto, const float* __restrict__ stats, float* __restrict__ dq, float* __restrict__ dtq,
        int n, int heads, float scale) {
    typedef typename FlashPrec<PREC>::E E;
    // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
    constexpr int LD = FlashPrec<PREC>::template ld<D>(), KDP = FlashPrec<PREC>::template cols<D>() / 8;
    constexpr int BR = 16 * WARPS, KD = D / 8, NC = BC / 8, THREADS = 32 * WARPS, STAGES = FlashPrec<PREC>::STAGES;
    constexpr int NS = TAN ? 4 : 2;
    constexpr int SMEM = (BR + STAGES * BC) * NS * LD * (int)sizeof(E);
    flash_check_launch<THREADS, SMEM>();
    extern __shared__ float4 flash_smem[];
    E* sQ = reinterpret_cast<E*>(flash_smem);
    E* sGO = sQ + BR * LD;
    E* sTQ = sGO + BR * LD;
    E* sGTO = sTQ + BR * LD;
    // STAGES sets of the key block's tiles K, V, tK, tV.
    E* sKeys = sQ + NS * BR * LD;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
    const int q0 = blockIdx.x * BR;
    const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D, rowBase = (i64)blockIdx.y * n;
    auto stage = [&](int set, int row0) {
        flash_stage_group<D, BC, THREADS, PREC, TAN>(sKeys + set * NS * BC * LD, k, v, tk, tv, hb, ld, row0, n);
    };
    flash_stage_group<D, BR, THREADS, PREC, TAN>(sQ, q, go, tq, gto, hb, ld, q0, n);
    if (STAGES == 2) stage(0, 0);
    float L[2], MU[2], RHO[2], DPP[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = q0 + r0 + g + 8 * h;
        float4 st = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row < n) st = *reinterpret_cast<const float4*>(stats + (rowBase + row) * 4);
        L[h] = st.x; MU[h] = st.y; RHO[h] = st.z; DPP[h] = st.w;
    }
    float dqa[KD][4], dtqa[KD][4];
    zero_tiles(dqa);
    zero_tiles(dtqa);
    for (int j0 = 0; j0 < n; j0 += BC) {
        const E* sK = sKeys + flash_inner_step<STAGES, BC, FlashPrec<PREC>::CORE>(j0, n, stage) * NS * BC * LD;
        const E* sV = sK + BC * LD;
        const E* sTK = sV + BC * LD;
        const E* sTV = sTK + BC * LD;
        // s = q k^T, ts = tq k^T + q tk^T; gg = go v^T + gto tv^T, rr = gto v^T.
        float s[NC][4], ts[NC][4], gg[NC][4], rr[NC][4];
        zero_tiles(s);
        zero_tiles(ts);
        zero_tiles(gg);
        zero_tiles(rr);
        tile_products_bt<PREC, LD, KDP, TAN, true, TANGENT, PLAIN, PLAIN, TANGENT>(s, ts, ts, sQ, sTQ, sK, sTK, r0, g, t);
        tile_products_bt<PREC, LD, KDP, TAN, true, TANGENT, PLAIN, TANGENT, TANGENT>(gg, rr, gg, sGO, sGTO, sV, sTV, r0, g, t);
        // s <- dS, ts <- dtS.
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                const bool valid = j0 + c * 8 + 2 * t + (e & 1) < n;
                const float P = valid ? flash_exp<PREC>(s[c][e] * scale - L[h]) : 0.f;
                if (TAN) {
                    const float tsv = ts[c][e] * scale, r = rr[c][e];
                    const float dp = gg[c][e] + r * (tsv - MU[h]) - tsv * RHO[h];
                    s[c][e] = P * (dp - DPP[h]);
                    ts[c][e] = P * (r - RHO[h]);
                } else {
                    s[c][e] = P * (gg[c][e] - DPP[h]);
                }
            }
        // dq += dS k + dtS tk, dtq += dtS k.
        tile_products_bn<PREC, LD, TAN, TANGENT, PLAIN, TANGENT, TANGENT>(dqa, dtqa, dqa, s, ts, sK, sTK, g, t);
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
/// dv = sum_i (P go + P (ts - mu) gto), dtv = sum_i P gto. PART 1 computes dk and dtk alone, PART 2 dv and dtv alone
/// (two kernels with fewer accumulators each, more warps an SM, at 15 products a step instead of 12 with the tangent;
/// a variant to be timed, TVM_CUDA_FLASH_VARIANT=split; not yet run).
template<int D, int WARPS, int BQ, bool TAN, int PREC, int PART>
__device__ __forceinline__ void flash_bwd_dkv_impl(FlashIn q, FlashIn k, FlashIn v, FlashIn tq, FlashIn tk, FlashIn tv,
        FlashIn go, FlashIn gto, const float* __restrict__ stats, float* __restrict__ dk, float* __restrict__ dv,
        float* __restrict__ dtk, float* __restrict__ dtv, unsigned short* __restrict__ dv16, unsigned short* __restrict__ dtv16,
        int n, int heads, float scale) {
    typedef typename FlashPrec<PREC>::E E;
    // KDP: 8-column steps of a product over the head dim (the zero columns of a BF16 tile included).
    constexpr int LD = FlashPrec<PREC>::template ld<D>(), KDP = FlashPrec<PREC>::template cols<D>() / 8;
    constexpr int BK = 16 * WARPS, KD = D / 8, NQ = BQ / 8, THREADS = 32 * WARPS, STAGES = FlashPrec<PREC>::STAGES;
    constexpr int NS = TAN ? 4 : 2;
    constexpr bool DK = PART != 2, DV = PART != 1;
    constexpr int SMEM = (BK + STAGES * BQ) * NS * LD * (int)sizeof(E) + STAGES * BQ * 16;
    flash_check_launch<THREADS, SMEM>();
    extern __shared__ float4 flash_smem[];
    E* sK = reinterpret_cast<E*>(flash_smem);
    E* sV = sK + BK * LD;
    E* sTK = sV + BK * LD;
    E* sTV = sTK + BK * LD;
    // STAGES sets of the query block's tiles Q, gO, tQ, gtO, then STAGES sets of its row statistics.
    E* sQueries = sK + NS * BK * LD;
    float4* sStats = reinterpret_cast<float4*>(sQueries + STAGES * NS * BQ * LD);
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
    const int k0 = blockIdx.x * BK;
    const i64 hb = attn_head_offset(blockIdx.y, n, heads, D), ld = (i64)heads * D, rowBase = (i64)blockIdx.y * n;
    auto stage = [&](int set, int row0) {
        flash_stage_group<D, BQ, THREADS, PREC, TAN>(sQueries + set * NS * BQ * LD, q, go, tq, gto, hb, ld, row0, n);
        flash_stage_stats<BQ, THREADS, STAGES == 2>(sStats + set * BQ, stats, rowBase, row0, n);
    };
    flash_stage_group<D, BK, THREADS, PREC, TAN>(sK, k, v, tk, tv, hb, ld, k0, n);
    if (STAGES == 2) stage(0, 0);
    float dka[KD][4], dva[KD][4], dtka[KD][4], dtva[KD][4];
    zero_tiles(dka);
    zero_tiles(dva);
    zero_tiles(dtka);
    zero_tiles(dtva);
    for (int i0 = 0; i0 < n; i0 += BQ) {
        const int set = flash_inner_step<STAGES, BQ, FlashPrec<PREC>::CORE>(i0, n, stage);
        const E* sQ = sQueries + set * NS * BQ * LD;
        const E* sGO = sQ + BQ * LD;
        const E* sTQ = sGO + BQ * LD;
        const E* sGTO = sTQ + BQ * LD;
        const float4* sSt = sStats + set * BQ;
        // Transposed tiles: rows are this warp's 16 keys, columns the block's queries.
        // s = k q^T, ts = tk q^T + k tq^T; gg = v go^T + tv gto^T, rr = v gto^T (the k loops not unrolled: fewer
        // fragments live).
        float s[NQ][4], ts[NQ][4], gg[NQ][4], rr[NQ][4];
        zero_tiles(s);
        zero_tiles(ts);
        zero_tiles(gg);
        zero_tiles(rr);
        tile_products_bt<PREC, LD, KDP, TAN, false, TANGENT, PLAIN, PLAIN, TANGENT>(s, ts, ts, sK, sTK, sQ, sTQ, r0, g, t);
        if constexpr (DK)
            tile_products_bt<PREC, LD, KDP, TAN, false, PLAIN, TANGENT, TANGENT, TANGENT>(gg, rr, gg, sV, sTV, sGO, sGTO, r0, g, t);
        // s <- P, gg <- dS, and with TAN ts <- P (ts - mu), rr <- dtS. Columns are queries.
#pragma unroll
        for (int c = 0; c < NQ; ++c)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = c * 8 + 2 * t + (e & 1);
                const float4 st = sSt[col];
                const float P = i0 + col < n ? flash_exp<PREC>(s[c][e] * scale - st.x) : 0.f;
                s[c][e] = P;
                if (TAN) {
                    const float tsv = ts[c][e] * scale;
                    if constexpr (DK) {
                        const float r = rr[c][e];
                        const float dp = gg[c][e] + r * (tsv - st.y) - tsv * st.z;
                        gg[c][e] = P * (dp - st.w);
                        rr[c][e] = P * (r - st.z);
                    }
                    ts[c][e] = P * (tsv - st.y);
                } else if constexpr (DK) {
                    gg[c][e] = P * (gg[c][e] - st.w);
                }
            }
        // dv, dtv (A: P and P (ts - mu)), then dk, dtk (A: dS and dtS): two passes hold half the fragments.
        if constexpr (DV) tile_products_bn<PREC, LD, TAN, TANGENT, TANGENT, PLAIN, TANGENT>(dva, dva, dtva, s, ts, sGO, sGTO, g, t);
        if constexpr (DK) tile_products_bn<PREC, LD, TAN, TANGENT, TANGENT, TANGENT, PLAIN>(dka, dka, dtka, gg, rr, sQ, sTQ, g, t);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = k0 + r0 + g + 8 * h;
        if (row < n) {
            const i64 off = hb + row * ld + 2 * t;
#pragma unroll
            for (int i = 0; i < KD; ++i) {
                if constexpr (DK)
                    *reinterpret_cast<float2*>(dk + off + i * 8) = make_float2(scale * dka[i][2 * h], scale * dka[i][2 * h + 1]);
                if constexpr (DV) {
                    *reinterpret_cast<float2*>(dv + off + i * 8) = make_float2(dva[i][2 * h], dva[i][2 * h + 1]);
                    store_bf16_pair(dv16, off + i * 8, dva[i][2 * h], dva[i][2 * h + 1]);
                }
                if (TAN) {
                    if constexpr (DK)
                        *reinterpret_cast<float2*>(dtk + off + i * 8) = make_float2(scale * dtka[i][2 * h], scale * dtka[i][2 * h + 1]);
                    if constexpr (DV) {
                        *reinterpret_cast<float2*>(dtv + off + i * 8) = make_float2(dtva[i][2 * h], dtva[i][2 * h + 1]);
                        store_bf16_pair(dtv16, off + i * 8, dtva[i][2 * h], dtva[i][2 * h + 1]);
                    }
                }
            }
        }
    }
}

// The instances: plain (tag p, TAN false) or with the tangent (t, true), head dim D, operand precision, and the
// launch shape: WARPS warps of 16 rows per block (the forward: TILES row tiles of 16 a warp), INNER keys (forward, dq)
// or queries (dkv) per step, and the launch bounds. The _v<name> instances (of the plain BF16 forward, and the key
// side's halves _vsplitk and _vsplitv) are variants to be timed against the defaults (docs/CUDA_NOTES.md, "row tiles"
// and "split"; TVM_CUDA_FLASH_VARIANT=<name>), not yet run. The float32-tile kernels load a tile, wait, then compute, so they rely on several blocks per multiprocessor to overlap
// the two: 3 blocks of 4 warps ran the tangent forward 1.35x faster than 2 (2026-11-25),
// and halving the inner blocks to fit 3 blocks was slower still (CUDA_NOTES.md). The 3xTF32 kernels that need more
// than 168 registers and whose shared memory allows 3 blocks get a register cap for 3 in their bounds (a few spilled
// values: tangent forward 1.05 against 1.15 ms, D = 72 plain backward 2.31 against 2.51 ms), and an uncapped build
// (_nocap, for measurements: CUDABackend.flashRegisterCaps = false). So do the BF16 tangent forwards, which the
// second tile set took from 159 / 168 to 174 / 172 registers (2 blocks; capped 168 with 12 / 24 bytes spilled,
// NVRTC 12.9). The kernels check blockDim and shared memory.
//! kernel flash_fwd(tangent: Bool, dim: Int, precision: FlashPrecision, warps: Int, tiles: Int, inner: Int)
#define FLASH_FWD(tag, tangent, dim, precision, PREC, warps, tiles, inner, bounds, suffix) \
    TVM_KERNEL_F32(flash_fwd_##tag##dim##_##precision##suffix, bounds, (const float* q, const float* k, const float* v, const float* tq, const float* tk, const float* tv, \
            const unsigned short* q16, const unsigned short* k16, const unsigned short* v16, const unsigned short* tq16, \
            const unsigned short* tk16, const unsigned short* tv16, float* o, float* to, float* lse, float* mu, \
            unsigned short* o16, unsigned short* to16, const float* go, const float* gto, const float* lseIn, float* stats, \
            int n, int heads, float scale)) { \
        flash_fwd_impl<dim, warps, tiles, inner, tangent, PREC>({q, q16}, {k, k16}, {v, v16}, {tq, tq16}, {tk, tk16}, {tv, tv16}, \
                                                         o, to, lse, mu, o16, to16, go, gto, lseIn, stats, n, heads, scale); }
FLASH_FWD(p, false, 64, x3, FP_X3, 4, 1, 64, (128), )
FLASH_FWD(p, false, 64, tf32, FP_TF32, 4, 1, 64, (128), )
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 1, 64, (128), )
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 1, 64, (128, 4), _vc4)
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 2, 64, (128), _vr2)
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 2, 64, (128, 3), _vr2c3)
FLASH_FWD(p, false, 64, bf16, FP_BF16, 2, 2, 64, (64), _vr2w2)
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 2, 32, (128), _vr2i32)
FLASH_FWD(p, false, 64, bf16, FP_BF16, 4, 1, 128, (128), _vi128)
FLASH_FWD(t, true, 64, x3, FP_X3, 4, 1, 32, (128, 3), )
FLASH_FWD(t, true, 64, x3, FP_X3, 4, 1, 32, (128), _nocap)
FLASH_FWD(t, true, 64, tf32, FP_TF32, 4, 1, 32, (128), )
FLASH_FWD(t, true, 64, bf16, FP_BF16, 4, 1, 32, (128, 3), )
FLASH_FWD(t, true, 64, bf16, FP_BF16, 4, 1, 32, (128), _nocap)
FLASH_FWD(p, false, 72, x3, FP_X3, 4, 1, 64, (128), )
FLASH_FWD(p, false, 72, tf32, FP_TF32, 4, 1, 64, (128), )
FLASH_FWD(p, false, 72, bf16, FP_BF16, 4, 1, 64, (128), )
FLASH_FWD(t, true, 72, x3, FP_X3, 4, 1, 32, (128), )
FLASH_FWD(t, true, 72, tf32, FP_TF32, 4, 1, 32, (128), )
FLASH_FWD(t, true, 72, bf16, FP_BF16, 4, 1, 32, (128, 3), )
FLASH_FWD(t, true, 72, bf16, FP_BF16, 4, 1, 32, (128), _nocap)
FLASH_FWD(p, false, 64, wgmma, FP_WG, 4, 1, 64, (128), )
FLASH_FWD(t, true, 64, wgmma, FP_WG, 4, 1, 32, (128, 3), )
FLASH_FWD(p, false, 72, wgmma, FP_WG, 4, 1, 64, (128), )
FLASH_FWD(t, true, 72, wgmma, FP_WG, 4, 1, 32, (128), )

// The pipelined plain forward (sm_90a), per head dim, key blocks of INNER.
//! kernel flash_fwd_pipelined(dim: Int, inner: Int)
#define FLASH_FWD_PIPELINED(dim, inner) \
    TVM_KERNEL_F32(flash_fwd_pipelined_p##dim, (128), (const float* q, const float* k, const float* v, \
            const unsigned short* q16, const unsigned short* k16, const unsigned short* v16, float* o, float* lse, \
            unsigned short* o16, int n, int heads, float scale)) { \
        flash_fwd_pipelined_impl<dim, inner>({q, q16}, {k, k16}, {v, v16}, o, lse, o16, n, heads, scale); }
FLASH_FWD_PIPELINED(64, 64)
FLASH_FWD_PIPELINED(72, 64)

//! kernel flash_dq(tangent: Bool, dim: Int, precision: FlashPrecision, warps: Int, inner: Int)
#define FLASH_DQ(tag, tangent, dim, precision, PREC, warps, inner, bounds, suffix) \
    TVM_KERNEL_F32(flash_dq_##tag##dim##_##precision##suffix, bounds, (const float* q, const float* k, const float* v, const float* tq, const float* tk, const float* tv, const float* go, const float* gto, \
            const unsigned short* q16, const unsigned short* k16, const unsigned short* v16, const unsigned short* tq16, \
            const unsigned short* tk16, const unsigned short* tv16, const unsigned short* go16, const unsigned short* gto16, \
            const float* stats, float* dq, float* dtq, int n, int heads, float scale)) { \
        flash_bwd_dq_impl<dim, warps, inner, tangent, PREC>({q, q16}, {k, k16}, {v, v16}, {tq, tq16}, {tk, tk16}, {tv, tv16}, \
                                                            {go, go16}, {gto, gto16}, stats, dq, dtq, n, heads, scale); }
FLASH_DQ(p, false, 64, x3, FP_X3, 4, 64, (128), )
FLASH_DQ(p, false, 64, tf32, FP_TF32, 4, 64, (128), )
FLASH_DQ(p, false, 64, bf16, FP_BF16, 4, 64, (128), )
FLASH_DQ(t, true, 64, x3, FP_X3, 8, 32, (256), )
FLASH_DQ(t, true, 64, tf32, FP_TF32, 8, 32, (256), )
FLASH_DQ(t, true, 64, bf16, FP_BF16, 8, 32, (256), )
FLASH_DQ(p, false, 72, x3, FP_X3, 4, 64, (128), )
FLASH_DQ(p, false, 72, tf32, FP_TF32, 4, 64, (128), )
FLASH_DQ(p, false, 72, bf16, FP_BF16, 4, 64, (128), )
FLASH_DQ(t, true, 72, x3, FP_X3, 8, 32, (256), )
FLASH_DQ(t, true, 72, tf32, FP_TF32, 8, 32, (256), )
FLASH_DQ(t, true, 72, bf16, FP_BF16, 8, 32, (256), )
FLASH_DQ(p, false, 64, wgmma, FP_WG, 4, 64, (128), )
FLASH_DQ(t, true, 64, wgmma, FP_WG, 8, 32, (256), )
FLASH_DQ(p, false, 72, wgmma, FP_WG, 4, 64, (128), )
FLASH_DQ(t, true, 72, wgmma, FP_WG, 8, 32, (256), )

//! kernel flash_dkv(tangent: Bool, dim: Int, precision: FlashPrecision, warps: Int, inner: Int, part: Int)
#define FLASH_DKV(tag, tangent, dim, precision, PREC, warps, inner, bounds, suffix, part) \
    TVM_KERNEL_F32(flash_dkv_##tag##dim##_##precision##suffix, bounds, (const float* q, const float* k, const float* v, const float* tq, const float* tk, const float* tv, const float* go, const float* gto, \
            const unsigned short* q16, const unsigned short* k16, const unsigned short* v16, const unsigned short* tq16, \
            const unsigned short* tk16, const unsigned short* tv16, const unsigned short* go16, const unsigned short* gto16, \
            const float* stats, float* dk, float* dv, float* dtk, float* dtv, unsigned short* dv16, unsigned short* dtv16, \
            int n, int heads, float scale)) { \
        flash_bwd_dkv_impl<dim, warps, inner, tangent, PREC, part>({q, q16}, {k, k16}, {v, v16}, {tq, tq16}, {tk, tk16}, {tv, tv16}, \
                                                             {go, go16}, {gto, gto16}, stats, dk, dv, dtk, dtv, dv16, dtv16, \
                                                             n, heads, scale); }
FLASH_DKV(p, false, 64, x3, FP_X3, 4, 32, (128), , 0)
FLASH_DKV(p, false, 64, tf32, FP_TF32, 4, 32, (128), , 0)
FLASH_DKV(p, false, 64, bf16, FP_BF16, 4, 32, (128), , 0)
FLASH_DKV(t, true, 64, x3, FP_X3, 4, 16, (128), , 0)
FLASH_DKV(t, true, 64, tf32, FP_TF32, 4, 16, (128), , 0)
FLASH_DKV(t, true, 64, bf16, FP_BF16, 4, 16, (128), , 0)
FLASH_DKV(t, true, 64, bf16, FP_BF16, 4, 16, (128), _vsplitk, 1)
FLASH_DKV(t, true, 64, bf16, FP_BF16, 4, 16, (128), _vsplitv, 2)
FLASH_DKV(p, false, 72, x3, FP_X3, 4, 32, (128, 3), , 0)
FLASH_DKV(p, false, 72, x3, FP_X3, 4, 32, (128), _nocap, 0)
FLASH_DKV(p, false, 72, tf32, FP_TF32, 4, 32, (128), , 0)
FLASH_DKV(p, false, 72, bf16, FP_BF16, 4, 32, (128), , 0)
FLASH_DKV(t, true, 72, x3, FP_X3, 4, 16, (128), , 0)
FLASH_DKV(t, true, 72, tf32, FP_TF32, 4, 16, (128), , 0)
FLASH_DKV(t, true, 72, bf16, FP_BF16, 4, 16, (128), , 0)
FLASH_DKV(p, false, 64, wgmma, FP_WG, 4, 32, (128), , 0)
FLASH_DKV(t, true, 64, wgmma, FP_WG, 4, 16, (128), , 0)
FLASH_DKV(p, false, 72, wgmma, FP_WG, 4, 32, (128), , 0)
FLASH_DKV(t, true, 72, wgmma, FP_WG, 4, 16, (128), , 0)

// Per head dim, plain (p) or with the tangent (t); 256 threads, 64 rows a block.
//! kernel flash_row_stats(tangent: Bool, dim: Int)
#define FLASH_ROW_STATS(tag, tangent, dim) \
    TVM_KERNEL_F32(flash_row_stats_##tag##dim, (256), (const float* go, const float* gto, const float* o, const float* to, \
            const unsigned short* o16, const unsigned short* to16, const float* lse, const float* mu, float* stats, \
            unsigned short* go16, unsigned short* gto16, int n, int heads, i64 rows)) { \
        flash_row_stats_impl<dim, tangent>(go, gto, o, to, o16, to16, lse, mu, stats, go16, gto16, n, heads, rows); }
FLASH_ROW_STATS(p, false, 64)
FLASH_ROW_STATS(t, true, 64)
FLASH_ROW_STATS(p, false, 72)
FLASH_ROW_STATS(t, true, 72)
