// Data movement of TensorCore's shaping ops: strided copies (permutes, pads, concatenations, broadcasts) and rows
// by index (gatherRows, scatterAddRows). Launchers: ShapingKernels.swift.
#include "../common.cuh"

template<typename T, typename I>
__device__ __forceinline__ void copy_strided_impl(View2 v, const T* x, T* y, i64 n) {
    for (I i = (I)gtid(); i < (I)n; i += (I)gstride()) {
        I ox, oy;
        view_offsets<I>(v, i, ox, oy);
        y[oy] = x[ox];
    }
}

template<typename T>
__device__ __forceinline__ void copy_rows_impl(View2 v, const T* x, T* y, i64 rows, i64 inner, i64 chunk, int ix) {
    const i64 c0 = (i64)blockIdx.y * chunk, c1 = min(inner, c0 + chunk);
    for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
        i64 ox, oy;
        view_offsets<i64>(v, r, ox, oy);
        const T* px = x + ox;
        T* py = y + oy;
        for (i64 c = c0 + threadIdx.x; c < c1; c += 32) py[c] = px[c * ix];
    }
}

TVM_KERNEL(copy_rows, (256), (View2 v, const scalar_t* x, scalar_t* y, i64 rows, i64 inner, i64 chunk, int ix)) {
    copy_rows_impl<scalar_t>(v, x, y, rows, inner, chunk, ix);
}
//! kernel copy_strided(indexBits: Int)
#define COPY_STRIDED(indexBits, I) TVM_KERNEL(copy_s##indexBits, (256), (View2 v, const scalar_t* x, scalar_t* y, i64 n)) { \
    copy_strided_impl<scalar_t, I>(v, x, y, n); }
COPY_STRIDED(32, int) COPY_STRIDED(64, i64)

// ---- Rows by index (indices are floats holding whole numbers) ----

/// Block (32 x 8): each warp copies whole rows. A bad index sets *err and writes NaN.
template<typename T> __device__ __forceinline__ void gather_impl(const T* table, const T* idx, T* y, i64 rows,
                                                                 i64 cols, i64 tableRows, int* err) {
    for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
        const T f = idx[r];
        const i64 t = (i64)f;
        const bool ok = !is_nan(f) && t >= 0 && t < tableRows;
        if (!ok && threadIdx.x == 0) atomicExch(err, 1);
        for (i64 c = threadIdx.x; c < cols; c += 32) y[r * cols + c] = ok ? table[t * cols + c] : nan_<T>();
    }
}

template<typename T> __device__ __forceinline__ void scatter_add_impl(const T* x, const T* idx, T* table, i64 rows,
                                                                      i64 cols, i64 tableRows, int* err) {
    for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
        const T f = idx[r];
        const i64 t = (i64)f;
        if (is_nan(f) || t < 0 || t >= tableRows) {
            if (threadIdx.x == 0) atomicExch(err, 2);
            continue;
        }
        for (i64 c = threadIdx.x; c < cols; c += 32) atomicAdd(table + t * cols + c, x[r * cols + c]);
    }
}

TVM_KERNEL(gather, (256), (const scalar_t* table, const scalar_t* idx, scalar_t* y, i64 rows, i64 cols, i64 tableRows,
                           int* err)) {
    gather_impl<scalar_t>(table, idx, y, rows, cols, tableRows, err);
}
TVM_KERNEL(scatter_add, (256), (const scalar_t* x, const scalar_t* idx, scalar_t* table, i64 rows, i64 cols, i64 tableRows,
                                int* err)) {
    scatter_add_impl<scalar_t>(x, idx, table, rows, cols, tableRows, err);
}
