// Group normalisation of channels-last images x [images, pixels, channels] (the VAE's GroupNorm, with the SiLU that
// follows it): per image and group of consecutive channels the mean and biased variance, then one pass applying
// them with the per-channel weight and bias. Input and output each float32 or bfloat16 alone (a tensor that holds
// only its bf16 values), the arithmetic float32. Launchers: GroupNormKernels.swift.
//
// Both passes take a grid (chunks of pixels, images) of blocks whose size is a multiple of the channel count, so
// every thread keeps one channel and walks the chunk's pixels `blockDim.x / channels` apart: the loads of a warp
// are consecutive, and no index is divided per element.
#include "../common.cuh"

/// Chan et al.'s combination of two partial (count, mean, M2) into the first; M2 is the sum of squared deviations
/// from the mean. Sound where the groups' means are far from zero (no E[x^2] - E[x]^2).
template<typename T> __device__ __forceinline__ void chan_combine(T& n, T& mean, T& m2, T nb, T meanb, T m2b) {
    if (nb == T(0)) return;
    const T total = n + nb, d = meanb - mean;
    mean += d * (nb / total);
    m2 += m2b + d * d * (n * nb / total);
    n = total;
}

/// partial[((image * chunks + chunk) * groups + group) * 3 + {0, 1, 2}] = the count, mean and M2 of the group's values
/// in the chunk's pixels: Welford per thread, then the threads of each group combined in a fixed order. x16 (when
/// not null) holds x's values in bfloat16 alone, read instead of x.
template<typename T> __device__ __forceinline__ void group_norm_stats_impl(const T* x, const unsigned short* x16, T* partial,
                                                                           i64 pixels, int channels, int groups,
                                                                           i64 chunkPixels) {
    __shared__ T sn[1024], smean[1024], sm2[1024];
    const int c = threadIdx.x % channels, rowsPerBlock = blockDim.x / channels;
    const i64 image = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
    const i64 first = chunk * chunkPixels, end = min(pixels, first + chunkPixels);
    const i64 base = image * pixels * channels + c;
    T n = 0, mean = 0, m2 = 0;
    for (i64 p = first + threadIdx.x / channels; p < end; p += rowsPerBlock) {
        const i64 i = base + p * channels;
        const T v = x16 ? (T)bf16_value(x16[i]) : x[i];
        n += T(1);
        const T d = v - mean;
        mean += d / n;
        m2 += d * (v - mean);
    }
    sn[threadIdx.x] = n; smean[threadIdx.x] = mean; sm2[threadIdx.x] = m2;
    __syncthreads();
    const int perGroup = channels / groups;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        T gn = 0, gmean = 0, gm2 = 0;
        for (int r = 0; r < rowsPerBlock; ++r) {
            for (int k = 0; k < perGroup; ++k) {
                const int t = r * channels + g * perGroup + k;
                chan_combine(gn, gmean, gm2, sn[t], smean[t], sm2[t]);
            }
        }
        T* out = partial + ((image * chunks + chunk) * groups + g) * 3;
        out[0] = gn; out[1] = gmean; out[2] = gm2;
    }
}

/// stats[(image * groups + group) * 2 + {0, 1}] = the mean and 1 / sqrt(var + eps) of each group, from the chunks'
/// partials combined in order. One thread per (image, group).
template<typename T> __device__ __forceinline__ void group_norm_finalize_impl(const T* partial, T* stats, i64 rows, int chunks,
                                                                              int groups, T eps) {
    for (i64 r = gtid(); r < rows; r += gstride()) {
        const i64 image = r / groups, g = r % groups;
        T n = 0, mean = 0, m2 = 0;
        for (int chunk = 0; chunk < chunks; ++chunk) {
            const T* q = partial + ((image * chunks + chunk) * groups + g) * 3;
            chan_combine(n, mean, m2, q[0], q[1], q[2]);
        }
        stats[r * 2] = mean;
        stats[r * 2 + 1] = T(1) / m_sqrt(m2 / n + eps);
    }
}

/// y = (x - mean) rstd weight[c] + bias[c], then SiLU when `silu`; y16 (null: none) y's bf16 copy, or with y null
/// its only values. x16 as in group_norm_stats_impl.
template<typename T> __device__ __forceinline__ void group_norm_apply_impl(const T* x, const unsigned short* x16,
                                                                           const T* stats, const T* weight,
                                                                           const T* bias, T* y, unsigned short* y16,
                                                                           i64 pixels, int channels, int groups,
                                                                           i64 chunkPixels, int silu) {
    const int c = threadIdx.x % channels, rowsPerBlock = blockDim.x / channels;
    const i64 image = blockIdx.y, first = (i64)blockIdx.x * chunkPixels, end = min(pixels, first + chunkPixels);
    const T* s = stats + (image * groups + c / (channels / groups)) * 2;
    // One factor per channel; the mean is subtracted first (x a - mean a would cancel where the mean is large).
    const T mean = s[0], a = s[1] * weight[c], b = bias[c];
    const i64 base = image * pixels * channels + c;
    for (i64 p = first + threadIdx.x / channels; p < end; p += rowsPerBlock) {
        const i64 i = base + p * channels;
        T v = ((x16 ? (T)bf16_value(x16[i]) : x[i]) - mean) * a + b;
        if (silu) v = v / (T(1) + m_exp(-v));
        if (y) y[i] = v;
        store_bf16_one(y16, i, v);
    }
}

TVM_KERNEL(group_norm_stats, (1024), (const scalar_t* x, const unsigned short* x16, scalar_t* partial, i64 pixels,
                                      int channels, int groups, i64 chunkPixels)) {
    group_norm_stats_impl<scalar_t>(x, x16, partial, pixels, channels, groups, chunkPixels);
}
TVM_KERNEL(group_norm_finalize, (256), (const scalar_t* partial, scalar_t* stats, i64 rows, int chunks, int groups,
                                        scalar_t eps)) {
    group_norm_finalize_impl<scalar_t>(partial, stats, rows, chunks, groups, eps);
}
TVM_KERNEL(group_norm_apply, (1024), (const scalar_t* x, const unsigned short* x16, const scalar_t* stats,
                                      const scalar_t* weight, const scalar_t* bias, scalar_t* y, unsigned short* y16,
                                      i64 pixels, int channels, int groups, i64 chunkPixels, int silu)) {
    group_norm_apply_impl<scalar_t>(x, x16, stats, weight, bias, y, y16, pixels, channels, groups, chunkPixels, silu);
}
