// Group normalisation of channels-last images x [images, pixels, channels] (the VAE's GroupNorm, with the SiLU that
// follows it): per image and group of consecutive channels the mean and biased variance, then one pass applying
// them with the per-channel weight and bias. Input and output each float32 or bfloat16 alone (a tensor that holds
// only its bf16 values), the arithmetic float32. Launchers: GroupNormKernels.swift.
//
// Both passes take a grid (chunks of pixels, images) of blocks whose size is a multiple of channels / V, so every
// thread keeps V consecutive channels of one group (one 16-byte load of bf16 values at V = 8) and walks the chunk's
// pixels `blockDim.x / (channels / V)` apart: the loads of a warp are consecutive, and no index is divided per
// element.
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

/// A thread's V consecutive channels of one pixel from x (float32) or x16 (its bfloat16 values alone): V of them in
/// one load where x16 holds them (i is a multiple of V, and storages start 16-byte aligned).
template<typename T, int V> __device__ __forceinline__ void group_norm_load(const T* x, const unsigned short* x16, i64 i, T (&v)[V]) {
    if (x16 == nullptr) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = x[i + k];
        return;
    }
    if constexpr (V == 1) {
        v[0] = (T)bf16_value(x16[i]);
    } else {
        u32 w[V / 2];
        if constexpr (V == 8) { const uint4 q = *reinterpret_cast<const uint4*>(x16 + i); w[0] = q.x; w[1] = q.y; w[2] = q.z; w[3] = q.w; }
        else if constexpr (V == 4) { const uint2 q = *reinterpret_cast<const uint2*>(x16 + i); w[0] = q.x; w[1] = q.y; }
        else w[0] = *reinterpret_cast<const u32*>(x16 + i);
#pragma unroll
        for (int k = 0; k < V / 2; ++k) {
            v[2 * k] = (T)bf16_lo(w[k]);
            v[2 * k + 1] = (T)bf16_hi(w[k]);
        }
    }
}
/// y16[i .. i + V - 1] = bfloat16(v), in one store (float32 only: float64 keeps no bf16 copies).
template<typename T, int V> __device__ __forceinline__ void group_norm_store16(unsigned short* y16, i64 i, const T (&v)[V]) {
    if constexpr (sizeof(T) != 4) return;
    else {
        if (y16 == nullptr) return;
        if constexpr (V == 1) {
            y16[i] = bf16_bits(v[0]);
        } else {
            u32 w[V / 2];
#pragma unroll
            for (int k = 0; k < V / 2; ++k) w[k] = bf16_pack2(v[2 * k], v[2 * k + 1]);
            if constexpr (V == 8) *reinterpret_cast<uint4*>(y16 + i) = make_uint4(w[0], w[1], w[2], w[3]);
            else if constexpr (V == 4) *reinterpret_cast<uint2*>(y16 + i) = make_uint2(w[0], w[1]);
            else *reinterpret_cast<u32*>(y16 + i) = w[0];
        }
    }
}

/// partial[((image * chunks + chunk) * groups + group) * 3 + {0, 1, 2}] = the count, mean and M2 of the group's values
/// in the chunk's pixels. Each thread keeps V channels of one group (channels / V threads per pixel): Welford per
/// channel, its V channels combined in order, then the threads of each group combined in a fixed order. x16 (when
/// not null) holds x's values in bfloat16 alone, read instead of x. sn, smean, sm2: shared memory, blockDim.x each.
template<typename T, int V> __device__ __forceinline__ void group_norm_stats_impl(const T* x, const unsigned short* x16, T* partial,
                                                                                  i64 pixels, int channels, int groups,
                                                                                  i64 chunkPixels, T* sn, T* smean, T* sm2) {
    const int lanes = channels / V, slot = threadIdx.x % lanes, rowsPerBlock = blockDim.x / lanes;
    const i64 image = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
    const i64 first = chunk * chunkPixels, end = min(pixels, first + chunkPixels);
    const i64 base = image * pixels * channels + slot * V;
    T n = 0, mean[V], m2[V];
#pragma unroll
    for (int k = 0; k < V; ++k) mean[k] = m2[k] = T(0);
    for (i64 p = first + threadIdx.x / lanes; p < end; p += rowsPerBlock) {
        T v[V];
        group_norm_load<T, V>(x, x16, base + p * channels, v);
        n += T(1);
        const T r = T(1) / n;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const T d = v[k] - mean[k];
            mean[k] += d * r;
            m2[k] += d * (v[k] - mean[k]);
        }
    }
    T tn = 0, tmean = 0, tm2 = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) chan_combine(tn, tmean, tm2, n, mean[k], m2[k]);
    sn[threadIdx.x] = tn; smean[threadIdx.x] = tmean; sm2[threadIdx.x] = tm2;
    __syncthreads();
    const int slotsPerGroup = channels / groups / V;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        T gn = 0, gmean = 0, gm2 = 0;
        for (int r = 0; r < rowsPerBlock; ++r) {
            for (int k = 0; k < slotsPerGroup; ++k) {
                const int t = r * lanes + g * slotsPerGroup + k;
                chan_combine(gn, gmean, gm2, sn[t], smean[t], sm2[t]);
            }
        }
        T* out = partial + ((image * chunks + chunk) * groups + g) * 3;
        out[0] = gn; out[1] = gmean; out[2] = gm2;
    }
}

/// y = (x - mean) rstd weight[c] + bias[c], then SiLU when `silu`; y16 (null: none) y's bf16 copy, or with y null
/// its only values. x16 and V as in group_norm_stats_impl. Each block first combines its image's statistics from
/// the chunks' partials (a warp per group, its lanes over the chunks, then a fixed tree across the lanes: every block
/// of an image gets the same values), which saves a launch between the two passes. smean, srstd: shared memory,
/// `groups` each.
template<typename T, int V> __device__ __forceinline__ void group_norm_apply_impl(const T* x, const unsigned short* x16,
                                                                                  const T* partial, const T* weight,
                                                                                  const T* bias, T* y, unsigned short* y16,
                                                                                  i64 pixels, int channels, int groups,
                                                                                  i64 chunkPixels, int chunks, T eps, int silu,
                                                                                  T* smean, T* srstd) {
    const i64 image = blockIdx.y;
    const int lane = threadIdx.x & 31;
    for (int g = threadIdx.x >> 5; g < groups; g += blockDim.x >> 5) {
        T n = 0, mean = 0, m2 = 0;
        for (int chunk = lane; chunk < chunks; chunk += 32) {
            const T* q = partial + ((image * chunks + chunk) * groups + g) * 3;
            chan_combine(n, mean, m2, q[0], q[1], q[2]);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const T nb = __shfl_down_sync(0xffffffffu, n, offset), meanb = __shfl_down_sync(0xffffffffu, mean, offset);
            const T m2b = __shfl_down_sync(0xffffffffu, m2, offset);
            if (lane < offset) chan_combine(n, mean, m2, nb, meanb, m2b);
        }
        if (lane == 0) {
            smean[g] = mean;
            srstd[g] = T(1) / m_sqrt(m2 / n + eps);
        }
    }
    __syncthreads();
    const int lanes = channels / V, c0 = (threadIdx.x % lanes) * V, rowsPerBlock = blockDim.x / lanes;
    const i64 first = (i64)blockIdx.x * chunkPixels, end = min(pixels, first + chunkPixels);
    const int g = c0 / (channels / groups);
    // One factor per channel; the mean is subtracted first (x a - mean a would cancel where the mean is large).
    const T mean = smean[g];
    T a[V], b[V];
#pragma unroll
    for (int k = 0; k < V; ++k) { a[k] = srstd[g] * weight[c0 + k]; b[k] = bias[c0 + k]; }
    const i64 base = image * pixels * channels + c0;
    for (i64 p = first + threadIdx.x / lanes; p < end; p += rowsPerBlock) {
        const i64 i = base + p * channels;
        T v[V];
        group_norm_load<T, V>(x, x16, i, v);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            v[k] = (v[k] - mean) * a[k] + b[k];
            if (silu) v[k] = v[k] / (T(1) + m_exp(-v[k]));
        }
        if (y) {
#pragma unroll
            for (int k = 0; k < V; ++k) y[i + k] = v[k];
        }
        group_norm_store16<T, V>(y16, i, v);
    }
}

// `vector`: the V of the launch (8, 4, 2 or 1: the largest that divides a group's channel count). The shared
// arrays are declared here, once for the four instantiations.
TVM_KERNEL(group_norm_stats, (1024), (const scalar_t* x, const unsigned short* x16, scalar_t* partial, i64 pixels,
                                      int channels, int groups, i64 chunkPixels, int vector)) {
    __shared__ scalar_t sn[1024], smean[1024], sm2[1024];
    switch (vector) {
#define GROUP_NORM_STATS(V) group_norm_stats_impl<scalar_t, V>(x, x16, partial, pixels, channels, groups, chunkPixels, sn, \
                                                                smean, sm2)
    case 8: GROUP_NORM_STATS(8); break;
    case 4: GROUP_NORM_STATS(4); break;
    case 2: GROUP_NORM_STATS(2); break;
    default: GROUP_NORM_STATS(1); break;
#undef GROUP_NORM_STATS
    }
}
TVM_KERNEL(group_norm_apply, (1024), (const scalar_t* x, const unsigned short* x16, const scalar_t* partial,
                                      const scalar_t* weight, const scalar_t* bias, scalar_t* y, unsigned short* y16,
                                      i64 pixels, int channels, int groups, i64 chunkPixels, int chunks, scalar_t eps,
                                      int silu, int vector)) {
    __shared__ scalar_t smean[1024], srstd[1024];
    switch (vector) {
#define GROUP_NORM_APPLY(V) group_norm_apply_impl<scalar_t, V>(x, x16, partial, weight, bias, y, y16, pixels, channels, \
                                                                groups, chunkPixels, chunks, eps, silu, smean, srstd)
    case 8: GROUP_NORM_APPLY(8); break;
    case 4: GROUP_NORM_APPLY(4); break;
    case 2: GROUP_NORM_APPLY(2); break;
    default: GROUP_NORM_APPLY(1); break;
#undef GROUP_NORM_APPLY
    }
}
