// Philox normals and uniforms, the same numbers as TensorCore's Philox on the CPU. Launchers: RandomKernels.swift.
#include "../common.cuh"

// ---- Philox4x32-10 and Box-Muller, exactly as TensorCore's Philox (Random.swift) ----

struct U4 { u32 x, y, z, w; };
__device__ __forceinline__ U4 philox(u64 seed, u64 counter) {
    u32 c0 = (u32)counter, c1 = (u32)(counter >> 32), c2 = 0, c3 = 0;
    u32 k0 = (u32)seed, k1 = (u32)(seed >> 32);
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const u32 hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const u32 hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        const u32 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    U4 r; r.x = c0; r.y = c1; r.z = c2; r.w = c3;
    return r;
}
__device__ __forceinline__ float unit_(u32 u) { return (float)(u >> 8) * (1.0f / 16777216.0f); }
__device__ __forceinline__ float unit_open(u32 u) { return (float)((u >> 8) + 1u) * (1.0f / 16777216.0f); }
__device__ __forceinline__ void box_muller(u32 a, u32 b, float& z0, float& z1) {
    const float r = sqrtf(-2.0f * logf(unit_open(a)));
    // Swift's Float.pi is pi rounded toward zero (0x40490FDA), and 2 * Float.pi is 0x40C90FDA.
    const float theta = __int_as_float(0x40C90FDA) * unit_(b);
    z0 = r * cosf(theta);
    z1 = r * sinf(theta);
}

template<typename T> __device__ __forceinline__ void random_impl(T* y, i64 n, u64 seed, u64 counter, int normal) {
    const i64 blocks = (n + 3) / 4;
    for (i64 b = gtid(); b < blocks; b += gstride()) {
        const U4 r = philox(seed, counter + (u64)b);
        float v0, v1, v2, v3;
        if (normal) { box_muller(r.x, r.y, v0, v1); box_muller(r.z, r.w, v2, v3); }
        else { v0 = unit_(r.x); v1 = unit_(r.y); v2 = unit_(r.z); v3 = unit_(r.w); }
        const i64 base = b * 4;
        y[base] = (T)v0;
        if (base + 1 < n) y[base + 1] = (T)v1;
        if (base + 2 < n) y[base + 2] = (T)v2;
        if (base + 3 < n) y[base + 3] = (T)v3;
    }
}

TVM_KERNEL(random, (256), (scalar_t* y, i64 n, u64 seed, u64 counter, int normal)) { random_impl<scalar_t>(y, n, seed, counter, normal); }
