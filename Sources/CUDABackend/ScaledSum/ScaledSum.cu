// a s + b t + c with per-column factors (adaLN modulation, gated residuals) and the column sums of products that
// are its factors' cotangents. Launchers: ScaledSumKernels.swift.
#include "../common.cuh"

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

TVM_KERNEL(scaled_sum, (256), (const scalar_t* a, const scalar_t* s, const scalar_t* b, const scalar_t* t, const scalar_t* c,
                               int cFull, scalar_t* y, i64 nrows, i64 rows, i64 cols)) {
    scaled_sum_impl<scalar_t>(a, s, b, t, c, cFull, y, nrows, rows, cols);
}
TVM_KERNEL(row_sums, (256), (const scalar_t* g, const scalar_t* x0, const scalar_t* x1, const scalar_t* x2, scalar_t* o0,
                             scalar_t* o1, scalar_t* o2, int nout, i64 rows, i64 cols, i64 batch, i64 chunkRows)) {
    row_sums_impl<scalar_t>(g, x0, x1, x2, o0, o1, o2, nout, rows, cols, batch, chunkRows);
}
