// The AdamW step and the EMA update, in place. Launchers: OptimizerKernels.swift.
#include "../common.cuh"

template<typename T> __device__ __forceinline__ void adamw_one(T& p, T g, T& m, T& v, T stepSize, T sqrtBc2,
                                                               T decay, T b1, T b2, T eps, T gs) {
    const T gi = g * gs;
    const T mi = b1 * m + (T(1) - b1) * gi;
    const T vi = b2 * v + (T(1) - b2) * gi * gi;
    m = mi;
    v = vi;
    p = p * decay - stepSize * mi / (m_sqrt(vi) / sqrtBc2 + eps);
}

template<typename T> __device__ __forceinline__ void adamw_impl(T* p, const T* g, T* m, T* v, i64 n, T stepSize,
                                                                T sqrtBc2, T decay, T b1, T b2, T eps, T gs) {
    constexpr int P = 16 / sizeof(T);
    const i64 np = n / P, t = gtid(), st = gstride();
    for (i64 i = t; i < np; i += st) {
        Pack<T> pp = ((Pack<T>*)p)[i], pg = ((const Pack<T>*)g)[i], pm = ((Pack<T>*)m)[i], pv = ((Pack<T>*)v)[i];
#pragma unroll
        for (int k = 0; k < P; ++k) adamw_one(pp.v[k], pg.v[k], pm.v[k], pv.v[k], stepSize, sqrtBc2, decay, b1, b2, eps, gs);
        ((Pack<T>*)p)[i] = pp; ((Pack<T>*)m)[i] = pm; ((Pack<T>*)v)[i] = pv;
    }
    for (i64 i = np * P + t; i < n; i += st) adamw_one(p[i], g[i], m[i], v[i], stepSize, sqrtBc2, decay, b1, b2, eps, gs);
}

template<typename T> __device__ __forceinline__ void ema_impl(T* e, const T* p, i64 n, T d) {
    constexpr int P = 16 / sizeof(T);
    const i64 np = n / P, t = gtid(), st = gstride();
    for (i64 i = t; i < np; i += st) {
        Pack<T> pe = ((Pack<T>*)e)[i], pp = ((const Pack<T>*)p)[i];
#pragma unroll
        for (int k = 0; k < P; ++k) pe.v[k] = pp.v[k] + d * (pe.v[k] - pp.v[k]);
        ((Pack<T>*)e)[i] = pe;
    }
    for (i64 i = np * P + t; i < n; i += st) e[i] = p[i] + d * (e[i] - p[i]);
}

TVM_KERNEL(adamw, (256), (scalar_t* p, const scalar_t* g, scalar_t* m, scalar_t* v, i64 n, scalar_t stepSize, scalar_t sqrtBc2,
                          scalar_t decay, scalar_t b1, scalar_t b2, scalar_t eps, scalar_t gs)) {
    adamw_impl<scalar_t>(p, g, m, v, n, stepSize, sqrtBc2, decay, b1, b2, eps, gs);
}
TVM_KERNEL(ema, (256), (scalar_t* e, const scalar_t* p, i64 n, scalar_t d)) { ema_impl<scalar_t>(e, p, n, d); }
