// Sums and maxima over the middle axis of [outer, n, inner]. Launchers: ReductionKernels.swift.
#include "../common.cuh"

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

//! kernel reduce_rows_block(op: ReduceOp)
#define REDUCE_ROWS_BLOCK(op, MAX) TVM_KERNEL(reduce_rows_block_##op, (256), (const scalar_t* x, scalar_t* y, i64 n, i64 chunk)) { \
    reduce_rows_block_impl<scalar_t, MAX>(x, y, n, chunk); }
REDUCE_ROWS_BLOCK(sum, false) REDUCE_ROWS_BLOCK(max, true)

//! kernel reduce_rows_warp(op: ReduceOp)
#define REDUCE_ROWS_WARP(op, MAX) TVM_KERNEL(reduce_rows_warp_##op, (256), (const scalar_t* x, scalar_t* y, i64 outer, i64 n)) { \
    reduce_rows_warp_impl<scalar_t, MAX>(x, y, outer, n); }
REDUCE_ROWS_WARP(sum, false) REDUCE_ROWS_WARP(max, true)

//! kernel reduce_cols(op: ReduceOp)
#define REDUCE_COLS(op, MAX) TVM_KERNEL(reduce_cols_##op, (256), (const scalar_t* x, scalar_t* y, i64 n, i64 inner, i64 chunk)) { \
    reduce_cols_impl<scalar_t, MAX>(x, y, n, inner, chunk); }
REDUCE_COLS(sum, false) REDUCE_COLS(max, true)
