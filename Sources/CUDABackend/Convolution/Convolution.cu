// The inference kernels behind ConvolutionBackend (im2col, pooling, bilinear resize, bias + ReLU), and for the
// channels-last images the bias of cuDNN's convolutions, the bf16 padding of their inputs, the im2col of those
// computed without cuDNN, and nearest-neighbour upsampling. Grid-stride loops over output elements (or pixels); they
// move memory, while the convolutions' arithmetic goes to cuBLAS through matmul (or to cuDNN). Launchers:
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

/// y[i] = (y16 ? the bfloat16 value y16[i] : y[i]) + b[i % channels] (+ the residual r[i] or, in bfloat16, r16[i]):
/// the bias (and a residual connection) of a channels-last convolution's output [pixels, channels] (cuDNN's), a
/// bfloat16 output widened to float32 on the way. The channel is carried along the grid-stride loop rather than
/// divided out per element (a 64-bit remainder costs more than the element's memory traffic).
TVM_KERNEL(conv_bias, (256), (scalar_t* y, const unsigned short* y16, const scalar_t* b, const scalar_t* r,
                              const unsigned short* r16, i64 n, int channels)) {
    const i64 step = gstride();
    const int stepChannels = (int)(step % channels);
    int c = (int)(gtid() % channels);
    for (i64 i = gtid(); i < n; i += step) {
        const scalar_t v = (y16 ? (scalar_t)bf16_value(y16[i]) : y[i]) + b[c];
        y[i] = r ? v + r[i] : r16 ? v + (scalar_t)bf16_value(r16[i]) : v;
        c += stepChannels;
        if (c >= channels) c -= channels;
    }
}

/// conv_bias in place on an output that holds only its bfloat16 values: y16[i] = bfloat16(y16[i] + b[i % channels]
/// (+ r[i] or r16[i])), the sum in float32 as conv_bias makes it. Two values per thread and step (4-byte loads and
/// stores; storages start 16-byte aligned), the channels of both carried along the loop; a lone last value after.
TVM_KERNEL(conv_bias16, (256), (unsigned short* y16, const scalar_t* b, const scalar_t* r, const unsigned short* r16, i64 n,
                                int channels)) {
    const i64 pairs = n / 2, step = gstride();
    const int stepChannels = (int)((2 * step) % channels);
    int c = (int)((2 * gtid()) % channels);
    for (i64 k = gtid(); k < pairs; k += step) {
        const i64 i = 2 * k;
        const int c1 = c + 1 == channels ? 0 : c + 1;
        const u32 packed = reinterpret_cast<const u32*>(y16)[k];
        scalar_t v0 = (scalar_t)bf16_lo(packed) + b[c], v1 = (scalar_t)bf16_hi(packed) + b[c1];
        if (r) {
            v0 = v0 + r[i];
            v1 = v1 + r[i + 1];
        } else if (r16) {
            const u32 q = reinterpret_cast<const u32*>(r16)[k];
            v0 = v0 + (scalar_t)bf16_lo(q);
            v1 = v1 + (scalar_t)bf16_hi(q);
        }
        store_bf16_pair(y16, i, (float)v0, (float)v1);
        c += stepChannels;
        if (c >= channels) c -= channels;
    }
    if (n % 2 == 1 && gtid() == 0) {
        const i64 i = n - 1;
        scalar_t v = (scalar_t)bf16_value(y16[i]) + b[i % channels];
        if (r) v = v + r[i];
        else if (r16) v = v + (scalar_t)bf16_value(r16[i]);
        y16[i] = bf16_bits((float)v);
    }
}

/// y16 [N, ph, pw, c] = x16 [N, h, w, c] placed at (top, left) with zeros around it, in bfloat16: the part of a
/// convolution's padding cuDNN cannot take (it pads both sides alike), for an input that holds only its bf16 values
/// or is read as its bf16 copy. A block per output row (its image and y decoded once), the threads along the row's
/// pixels and channels, 8 channels (16 bytes) at a time where c is a multiple of 8 (storages start 16-byte aligned).
TVM_KERNEL(pad_nhwc16, (256), (const unsigned short* x16, unsigned short* y16, i64 rows, int h, int w, int c, int top,
                               int left, int ph, int pw)) {
    const bool chunks = c % 8 == 0;
    const int per = chunks ? c / 8 : c, units = pw * per;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 image = row / ph;
        const int iy = (int)(row - image * ph) - top;
        const i64 src = (image * h + iy) * w * c, dst = row * pw * c;
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            const int px = u / per, j = u - px * per, ix = px - left;
            const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
            if (chunks) {
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (inside) v = reinterpret_cast<const uint4*>(x16 + src + (i64)ix * c)[j];
                reinterpret_cast<uint4*>(y16 + dst + (i64)px * c)[j] = v;
            } else {
                y16[dst + (i64)px * c + j] = inside ? x16[src + (i64)ix * c + j] : (unsigned short)0;
            }
        }
    }
}

/// Nearest-neighbour 2x upsampling of channels-last images: output pixel (oy, ox) of y [N, 2h, 2w, c] is input pixel
/// (oy / 2, ox / 2) of x [N, h, w, c]. Each side float32 (x, y) or bfloat16 alone (x16, y16; the other null): bf16 to
/// bf16 copies the bits, 8 channels (16 bytes) at a time where c is a multiple of 8. A block per output row, the
/// threads along the row's pixels and channels.
TVM_KERNEL(upsample_nearest2x_nhwc, (256), (const scalar_t* x, const unsigned short* x16, scalar_t* y, unsigned short* y16,
                                            i64 rows, int h, int w, int c)) {
    const bool chunks = x16 && y16 && c % 8 == 0;
    const int per = chunks ? c / 8 : c, units = 2 * w * per;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 image = row / (2 * h);
        const int oy = (int)(row - image * 2 * h);
        const i64 src = (image * h + oy / 2) * w * c, dst = row * 2 * w * c;
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            const int ox = u / per, j = u - ox * per;
            const i64 s = src + (i64)(ox / 2) * c, d = dst + (i64)ox * c;
            if (chunks) {
                reinterpret_cast<uint4*>(y16 + d)[j] = reinterpret_cast<const uint4*>(x16 + s)[j];
                continue;
            }
            if (x16 && y16) { y16[d + j] = x16[s + j]; continue; }
            const scalar_t v = x16 ? (scalar_t)bf16_value(x16[s + j]) : x[s + j];
            if (y) y[d + j] = v;
            else store_bf16_one(y16, d + j, v);
        }
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
