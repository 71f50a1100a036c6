// The inference kernels behind ConvolutionBackend (im2col, pooling, bilinear resize, bias + ReLU), and for the
// channels-last convolutions the bias of cuDNN's and the im2col of those computed without it. One thread per output element in grid-stride loops; they move
// memory, while the convolutions' arithmetic goes to cuBLAS through matmul (or to cuDNN). Launchers:
// ConvolutionKernels.swift, ChannelsLastConvolution.swift.
#include "../common.cuh"

/// Geometry of a sliding window, passed by value (the CPU backend's Window2D plus the output size).
struct Win { int kh, kw, sy, sx, py, px, oh, ow; };

template<typename T> __device__ __forceinline__ void im2col_impl(const T* x, T* cols, i64 planes, int h, int w, Win g) {
    const i64 total = planes * g.kh * g.kw * (i64)g.oh * g.ow;
    for (i64 i = gtid(); i < total; i += gstride()) {
        const int ox = (int)(i % g.ow);
        i64 r = i / g.ow;
        const int oy = (int)(r % g.oh); r /= g.oh;
        const int j = (int)(r % g.kw); r /= g.kw;
        const int ki = (int)(r % g.kh);
        const i64 p = r / g.kh;
        const int iy = oy * g.sy - g.py + ki, ix = ox * g.sx - g.px + j;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[(p * h + iy) * w + ix] : T(0);
    }
}

/// KIND 0: max (NaN wins and stays); 1: mean over the window's elements inside the input;
/// 2: sum over the window divided by its full size (padding counted as zeros).
template<typename T, int KIND> __device__ __forceinline__ void pool_impl(const T* x, T* y, i64 planes, int h, int w, Win g) {
    const i64 total = planes * (i64)g.oh * g.ow;
    for (i64 i = gtid(); i < total; i += gstride()) {
        const int ox = (int)(i % g.ow);
        const i64 r = i / g.ow;
        const int oy = (int)(r % g.oh);
        const i64 p = r / g.oh;
        const int y0 = oy * g.sy - g.py, x0 = ox * g.sx - g.px;
        const int ys = max(y0, 0), ye = min(y0 + g.kh, h), xs = max(x0, 0), xe = min(x0 + g.kw, w);
        const T* src = x + p * h * w;
        T acc = KIND == 0 ? -inf_<T>() : T(0);
        for (int iy = ys; iy < ye; ++iy) {
            for (int ix = xs; ix < xe; ++ix) {
                const T v = src[iy * w + ix];
                if (KIND == 0) { if (is_nan(v) || v > acc) acc = v; } else { acc += v; }
            }
        }
        if (KIND == 1) acc /= T((ye - ys) * (xe - xs));
        if (KIND == 2) acc /= T(g.kh * g.kw);
        y[i] = acc;
    }
}

/// TensorFlow 1 resize_bilinear sampling; the source coordinate is the CPU backend's double expression
/// (__dmul_rn keeps it from being fused), so both backends read the same pixels with the same weights.
template<typename T> __device__ __forceinline__ void resize_impl(const T* x, T* y, i64 planes, int h, int w, int oh, int ow) {
    const double scaleY = (double)h / (double)oh, scaleX = (double)w / (double)ow;
    const i64 total = planes * (i64)oh * ow;
    for (i64 i = gtid(); i < total; i += gstride()) {
        const int ox = (int)(i % ow);
        const i64 r = i / ow;
        const int oy = (int)(r % oh);
        const i64 p = r / oh;
        const double sy = __dmul_rn((double)oy, scaleY), sx = __dmul_rn((double)ox, scaleX);
        const int r0 = (int)floor(sy), c0 = (int)floor(sx);
        const int r1 = min(r0 + 1, h - 1), c1 = min(c0 + 1, w - 1);
        const T wy = T(sy - (double)r0), wx = T(sx - (double)c0);
        const T* src = x + p * h * w;
        const T upper = (T(1) - wx) * src[r0 * w + c0] + wx * src[r0 * w + c1];
        const T lower = (T(1) - wx) * src[r1 * w + c0] + wx * src[r1 * w + c1];
        y[i] = (T(1) - wy) * upper + wy * lower;
    }
}

/// In place: y = max(y + b[channel], 0), NaN kept (as PyTorch's relu).
template<typename T> __device__ __forceinline__ void bias_relu_impl(T* y, const T* b, i64 rows, int channels, i64 plane) {
    const i64 total = rows * plane;
    for (i64 i = gtid(); i < total; i += gstride()) {
        const T v = y[i] + b[(i / plane) % channels];
        y[i] = v < T(0) ? T(0) : v;
    }
}

TVM_KERNEL(im2col, (256), (const scalar_t* x, scalar_t* cols, i64 planes, int h, int w, Win g)) {
    im2col_impl<scalar_t>(x, cols, planes, h, w, g);
}
TVM_KERNEL(resize_bilinear, (256), (const scalar_t* x, scalar_t* y, i64 planes, int h, int w, int oh, int ow)) {
    resize_impl<scalar_t>(x, y, planes, h, w, oh, ow);
}
TVM_KERNEL(bias_relu, (256), (scalar_t* y, const scalar_t* b, i64 rows, int channels, i64 plane)) {
    bias_relu_impl<scalar_t>(y, b, rows, channels, plane);
}
//! kernel pool(kind: PoolKind)
#define POOL(kind, name, KIND) TVM_KERNEL(name, (256), (const scalar_t* x, scalar_t* y, i64 planes, int h, int w, Win g)) { \
    pool_impl<scalar_t, KIND>(x, y, planes, h, w, g); }
POOL(max, pool_max, 0) POOL(averageExcludingPadding, pool_avg_excl, 1) POOL(averageIncludingPadding, pool_avg_incl, 2)

/// y[i] = (y16 ? the bfloat16 value y16[i] : y[i]) + b[i % channels] (+ r[i] where r is given): the bias (and a
/// residual connection) of a channels-last convolution's output [pixels, channels] (cuDNN's), a bfloat16 output
/// widened to float32 on the way. The channel is carried along the grid-stride loop rather than divided out per
/// element (a 64-bit remainder costs more than the element's memory traffic).
TVM_KERNEL(conv_bias, (256), (scalar_t* y, const unsigned short* y16, const scalar_t* b, const scalar_t* r, i64 n,
                              int channels)) {
    const i64 step = gstride();
    const int stepChannels = (int)(step % channels);
    int c = (int)(gtid() % channels);
    for (i64 i = gtid(); i < n; i += step) {
        const scalar_t v = (y16 ? (scalar_t)__uint_as_float((u32)y16[i] << 16) : y[i]) + b[c];
        y[i] = r ? v + r[i] : v;
        c += stepChannels;
        if (c >= channels) c -= channels;
    }
}

/// The im2col matrix of a channels-last convolution for output pixels firstRow ..< firstRow + rows (pixel r is image
/// r / (oh ow), row r / ow % oh, column r % ow) of x [N, h, w, c]: cols[r - firstRow, (i * kw + j) * c + ch] =
/// x[n, oy * stride - top + i, ox * stride - left + j, ch], 0 in the padding; cols16 (null: none) its bf16 copy. A
/// block per pixel row (its position decoded once), the threads along the row: reads and writes run along channels.
TVM_KERNEL(im2col_nhwc, (256), (const scalar_t* x, scalar_t* cols, unsigned short* cols16, i64 firstRow, i64 rows, int h,
                                int w, int c, int kh, int kw, int stride, int top, int left, int oh, int ow)) {
    const int k = kh * kw * c;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 pixel = firstRow + r, q = pixel / ow;
        const int ox = (int)(pixel % ow), oy = (int)(q % oh);
        const scalar_t* image = x + (q / oh) * h * w * c;
        for (int t = threadIdx.x; t < k; t += blockDim.x) {
            const int ch = t % c, tap = t / c, i = tap / kw, j = tap % kw;
            const int iy = oy * stride - top + i, ix = ox * stride - left + j;
            const scalar_t v = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? image[((i64)iy * w + ix) * c + ch] : scalar_t(0);
            cols[r * k + t] = v;
            store_bf16_one(cols16, r * k + t, v);
        }
    }
}
