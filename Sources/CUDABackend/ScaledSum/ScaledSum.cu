// a s + b t + c with per-column factors (adaLN modulation, gated residuals) and the column sums of products that
// are its factors' cotangents. Launchers: ScaledSumKernels.swift.
#include "../common.cuh"

// y = a s + b t + c over [batch, rows, cols], s and t per (batch, column). a, b and c may be given as their bf16
// values alone (a16, b16, c16 with the float32 pointer null: a linear layer's output read by this kernel and products
// alone), and y written as its bf16 values alone (y null): a cotangent only products read. Block (32, 8): a warp per
// row. With 16-byte packs (VEC: cols a multiple of the pack, every address aligned to its pack) a lane loads two
// packs of its row before it stores any, so that enough loads are in flight (one value at a time, each store before
// the next load, held the kernel near 2 TB/s); four took 88 registers, a quarter of the warps an SM can hold.
template<typename T, bool VEC> __device__ __forceinline__ void scaled_sum_impl(
        const T* a, const unsigned short* a16, const T* s, const T* b, const unsigned short* b16, const T* t, const T* c,
        const unsigned short* c16, int cFull, T* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols) {
    constexpr int P = VEC ? 16 / sizeof(T) : 1, K = VEC ? 2 : 4;
    const bool hasB = b || b16, hasC = c || c16;
    const i64 width = cols / P;
    for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < nrows; r += (i64)gridDim.x * blockDim.y) {
        // Offsets in packs (P values each) of the row and of its batch entry's factors.
        const i64 o = r * width, so = (r / rows) * width, co = cFull ? o : so;
        for (i64 base = threadIdx.x; base < width; base += 32 * K) {
            Pack<T> av[K], bv[K], cv[K];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 i = base + 32 * k;
                if (i >= width) continue;
                if constexpr (VEC) {
                    av[k] = load_pack(a, a16, o + i);
                    if (hasB) bv[k] = load_pack(b, b16, o + i);
                    if (hasC) cv[k] = load_pack(c, c16, co + i);
                } else {
                    av[k].v[0] = load_one(a, a16, o + i);
                    if (hasB) bv[k].v[0] = load_one(b, b16, o + i);
                    if (hasC) cv[k].v[0] = load_one(c, c16, co + i);
                }
            }
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 i = base + 32 * k;
                if (i >= width) continue;
                Pack<T> sv, tv, v;
                if constexpr (VEC) {
                    sv = reinterpret_cast<const Pack<T>*>(s)[so + i];
                    if (hasB) tv = reinterpret_cast<const Pack<T>*>(t)[so + i];
                } else {
                    sv.v[0] = s[so + i];
                    if (hasB) tv.v[0] = t[so + i];
                }
#pragma unroll
                for (int e = 0; e < P; ++e) {
                    T x = av[k].v[e] * sv.v[e];
                    if (hasB) x += bv[k].v[e] * tv.v[e];
                    if (hasC) x += cv[k].v[e];
                    v.v[e] = x;
                }
                if constexpr (VEC) {
                    if (y) reinterpret_cast<Pack<T>*>(y)[o + i] = v;
                    store_bf16(y16, o + i, v);
                } else {
                    if (y) y[o + i] = v.v[0];
                    store_bf16_one(y16, o + i, v.v[0]);
                }
            }
        }
    }
}

// out_k[b, c] = sum_r g[b, r, c] x_k[b, r, c] (x_k and h_k null: of g; h_k: x_k's bf16 values alone). Grid (column
// blocks of 32, batch), block (32, 8): the 8 warps take every 8th row, then add up through shared memory (fixed order:
// deterministic).
/// Block (32 x 8) per 32 columns of one batch entry and one chunk of its rows: blockIdx.y = chunk * batch + entry.
/// Chunk c writes its partial sums at outputs (c * batch + entry) * cols; with one chunk, the sums themselves.
template<typename T> __device__ __forceinline__ void row_sums_impl(const T* g, const T* x0, const T* x1, const T* x2,
                                                                   const unsigned short* h0, const unsigned short* h1,
                                                                   const unsigned short* h2, T* o0, T* o1, T* o2, int nout,
                                                                   i64 rows, i64 cols, i64 batch, i64 chunkRows) {
    __shared__ T part[3][8][33];
    const i64 col = (i64)blockIdx.x * 32 + threadIdx.x, bi = blockIdx.y % batch, chunk = blockIdx.y / batch;
    const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
    const T* xs[3] = {x0, x1, x2};
    const unsigned short* hs[3] = {h0, h1, h2};
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
                for (int k = 0; k < 3; ++k) xv[k][j] = (k < nout && (xs[k] || hs[k]) && in) ? load_one(xs[k], hs[k], o) : T(1);
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

// row_sums_impl in 16-byte packs of g (a lane takes 16 / sizeof(T) columns, a block of 32 x 8 threads 32 packs of one
// batch entry's columns), each factor as float32 or bf16 (8 bytes a lane and pack): for rows of whole packs with every
// address aligned to its pack. The value-at-a-time kernel read bf16 factors two bytes at a time (S/2 step on an H100:
// 82 us a call, about 1 TB/s). Rows two at a time per thread, all loads before any use.
template<typename T> __device__ __forceinline__ void row_sums_packs_impl(const T* __restrict__ g, const T* x0, const T* x1,
                                                                         const T* x2, const unsigned short* h0,
                                                                         const unsigned short* h1, const unsigned short* h2,
                                                                         T* o0, T* o1, T* o2, int nout, i64 rows, i64 cols,
                                                                         i64 batch, i64 chunkRows) {
    constexpr int P = 16 / sizeof(T);
    typedef Pack<T> V;
    const i64 pcols = cols / P, pc = (i64)blockIdx.x * 32 + threadIdx.x, bi = blockIdx.y % batch, chunk = blockIdx.y / batch;
    const i64 first = chunk * chunkRows, end = min(rows, first + chunkRows);
    const T* xs[3] = {x0, x1, x2};
    const unsigned short* hs[3] = {h0, h1, h2};
    V one;
#pragma unroll
    for (int e = 0; e < P; ++e) one.v[e] = T(1);
    V acc[3] = {V{}, V{}, V{}};
    if (pc < pcols) {
        for (i64 r0 = first + threadIdx.y; r0 < end; r0 += 16) {
            V gv[2], xv[3][2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const i64 r = r0 + 8 * j, o = (bi * rows + r) * pcols + pc;
                const bool in = r < end;
                gv[j] = in ? reinterpret_cast<const V*>(g)[o] : V{};
#pragma unroll
                for (int k = 0; k < 3; ++k) xv[k][j] = (k < nout && (xs[k] || hs[k]) && in) ? load_pack(xs[k], hs[k], o) : one;
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
#pragma unroll
                for (int k = 0; k < 3; ++k) {
                    if (k < nout) {
#pragma unroll
                        for (int e = 0; e < P; ++e) acc[k].v[e] += gv[j].v[e] * xv[k][j].v[e];
                    }
                }
            }
        }
    }
    T* const outs[3] = {o0, o1, o2};
    add_packed_column_sums(acc, outs, cols, (chunk * batch + bi) * cols);
}

// One value at a time (tag values) or in 16-byte packs (tag packs).
//! kernel scaled_sum(vectorized: Bool)
#define SCALED_SUM(tag, vectorized) TVM_KERNEL(scaled_sum_##tag, (256, 4), (const scalar_t* a, const unsigned short* a16, \
        const scalar_t* s, const scalar_t* b, const unsigned short* b16, const scalar_t* t, const scalar_t* c, \
        const unsigned short* c16, int cFull, scalar_t* y, unsigned short* y16, i64 nrows, i64 rows, i64 cols)) { \
    scaled_sum_impl<scalar_t, vectorized>(a, a16, s, b, b16, t, c, c16, cFull, y, y16, nrows, rows, cols); }
SCALED_SUM(values, false) SCALED_SUM(packs, true)
// Value at a time (tag values) or in 16-byte packs (tag packs). At most 64 registers (4 blocks an SM): reading a factor
// as float32 or bf16 took the value kernel to 127 and a quarter of the warps (105 us against about 48 us per DiT-S/2
// call on an H100).
//! kernel row_sums(vectorized: Bool)
#define ROW_SUMS(tag, vectorized) TVM_KERNEL(row_sums_##tag, (256, 4), (const scalar_t* g, const scalar_t* x0, \
        const scalar_t* x1, const scalar_t* x2, const unsigned short* h0, const unsigned short* h1, const unsigned short* h2, \
        scalar_t* o0, scalar_t* o1, scalar_t* o2, int nout, i64 rows, i64 cols, i64 batch, i64 chunkRows)) { \
    if constexpr (vectorized) row_sums_packs_impl<scalar_t>(g, x0, x1, x2, h0, h1, h2, o0, o1, o2, nout, rows, cols, batch, chunkRows); \
    else row_sums_impl<scalar_t>(g, x0, x1, x2, h0, h1, h2, o0, o1, o2, nout, rows, cols, batch, chunkRows); }
ROW_SUMS(values, false) ROW_SUMS(packs, true)
