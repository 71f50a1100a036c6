// Softmax over the last axis. Launchers: SoftmaxKernels.swift.
#include "../common.cuh"


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


// Rows of at most 32 * width values, held in registers (a warp per row); longer rows take softmax_block.
//! kernel softmax_warp(width: Int)
#define SOFTMAX_WARP(width) TVM_KERNEL(softmax_warp##width, (256), (const scalar_t* x, scalar_t* y, i64 rows, i64 cols)) { \
    softmax_warp_impl<scalar_t, width>(x, y, rows, cols); }
SOFTMAX_WARP(1) SOFTMAX_WARP(2) SOFTMAX_WARP(4) SOFTMAX_WARP(8) SOFTMAX_WARP(16) SOFTMAX_WARP(32) SOFTMAX_WARP(48) SOFTMAX_WARP(64)
TVM_KERNEL(softmax_block, (1024), (const scalar_t* x, scalar_t* y, i64 rows, i64 cols)) { softmax_block_impl<scalar_t>(x, y, rows, cols); }
