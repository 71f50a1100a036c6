// Attention with its forward-mode tangent and the backward of both, a warp per query (or key) row: every head
// dimension up to 512 and float64. Float32 heads of 64 and 72 take the tensor-core kernels of
// FlashAttention/FlashAttention.cu instead. Launchers: AttentionKernels.swift.
#include "../common.cuh"

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
/// to_i = sum_j P_ij tS_ij v_j - mu_i o_i + sum_j P_ij tv_j and mu_i (null: not stored).
template<typename T, int DPL, bool TAN>
__device__ __forceinline__ void attn_fwd_impl(const T* q, const T* k, const T* v, const T* tq, const T* tk, const T* tv,
                                              T* o, T* to, T* lse, T* muOut, i64 rows, int n, int heads, int d, T scale) {
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
    if (lane == 0) {
        lse[row] = m + m_log(l);
        if (TAN && muOut != nullptr) muOut[row] = muv;
    }
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

// Per kernel: plain (tag p, TAN false) or with the tangent (t, true), for head dims up to 32 * width.
//! kernel attn_fwd(tangent: Bool, width: Int)
#define ATTN_FWD(tag, tangent, width) TVM_KERNEL(attn_fwd_##tag##width, (256), (const scalar_t* q, const scalar_t* k, \
        const scalar_t* v, const scalar_t* tq, const scalar_t* tk, const scalar_t* tv, scalar_t* o, scalar_t* to, scalar_t* lse, \
        scalar_t* mu, i64 rows, int n, int heads, int d, scalar_t scale)) { \
    attn_fwd_impl<scalar_t, width, tangent>(q, k, v, tq, tk, tv, o, to, lse, mu, rows, n, heads, d, scale); }
ATTN_FWD(p, false, 1) ATTN_FWD(p, false, 2) ATTN_FWD(p, false, 3) ATTN_FWD(p, false, 4) ATTN_FWD(p, false, 8) ATTN_FWD(p, false, 16)
ATTN_FWD(t, true, 1) ATTN_FWD(t, true, 2) ATTN_FWD(t, true, 3) ATTN_FWD(t, true, 4) ATTN_FWD(t, true, 8) ATTN_FWD(t, true, 16)

//! kernel attn_bwd_rows(tangent: Bool, width: Int)
#define ATTN_BWD_ROWS(tag, tangent, width) TVM_KERNEL(attn_bwd_rows_##tag##width, (256), (const scalar_t* q, const scalar_t* k, \
        const scalar_t* v, const scalar_t* tq, const scalar_t* tk, const scalar_t* tv, const scalar_t* lse, const scalar_t* go, \
        const scalar_t* gto, scalar_t* dq, scalar_t* dtq, scalar_t* stats, i64 rows, int n, int heads, int d, scalar_t scale)) { \
    attn_bwd_rows_impl<scalar_t, width, tangent>(q, k, v, tq, tk, tv, lse, go, gto, dq, dtq, stats, rows, n, heads, d, scale); }
ATTN_BWD_ROWS(p, false, 1) ATTN_BWD_ROWS(p, false, 2) ATTN_BWD_ROWS(p, false, 3) ATTN_BWD_ROWS(p, false, 4) ATTN_BWD_ROWS(p, false, 8) ATTN_BWD_ROWS(p, false, 16)
ATTN_BWD_ROWS(t, true, 1) ATTN_BWD_ROWS(t, true, 2) ATTN_BWD_ROWS(t, true, 3) ATTN_BWD_ROWS(t, true, 4) ATTN_BWD_ROWS(t, true, 8) ATTN_BWD_ROWS(t, true, 16)

//! kernel attn_bwd_cols(tangent: Bool, width: Int)
#define ATTN_BWD_COLS(tag, tangent, width) TVM_KERNEL(attn_bwd_cols_##tag##width, (256), (const scalar_t* q, const scalar_t* k, \
        const scalar_t* v, const scalar_t* tq, const scalar_t* tk, const scalar_t* tv, const scalar_t* lse, const scalar_t* go, \
        const scalar_t* gto, const scalar_t* stats, scalar_t* dk, scalar_t* dv, scalar_t* dtk, scalar_t* dtv, i64 rows, int n, \
        int heads, int d, scalar_t scale)) { \
    attn_bwd_cols_impl<scalar_t, width, tangent>(q, k, v, tq, tk, tv, lse, go, gto, stats, dk, dv, dtk, dtv, rows, n, heads, d, scale); }
ATTN_BWD_COLS(p, false, 1) ATTN_BWD_COLS(p, false, 2) ATTN_BWD_COLS(p, false, 3) ATTN_BWD_COLS(p, false, 4) ATTN_BWD_COLS(p, false, 8) ATTN_BWD_COLS(p, false, 16)
ATTN_BWD_COLS(t, true, 1) ATTN_BWD_COLS(t, true, 2) ATTN_BWD_COLS(t, true, 3) ATTN_BWD_COLS(t, true, 4) ATTN_BWD_COLS(t, true, 8) ATTN_BWD_COLS(t, true, 16)
