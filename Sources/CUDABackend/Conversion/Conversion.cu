// Element type conversions: float32 <-> float64 (Backend.convert), float32 to bfloat16 (the operand copies of
// bf16 matrix products, Matmul/BF16Operands.swift) and back (widening a tensor that holds only its bf16 values). One
// module for both element types. Launchers: ConversionKernels.swift.
#include "../common.cuh"

TVM_KERNEL_F32(convert_f32_f64, (256), (const float* x, double* y, i64 n)) {
    for (i64 i = gtid(); i < n; i += gstride()) y[i] = (double)x[i];
}
TVM_KERNEL_F32(convert_f64_f32, (256), (const double* x, float* y, i64 n)) {
    for (i64 i = gtid(); i < n; i += gstride()) y[i] = (float)x[i];
}
/// Four values per thread and step (16 bytes in, 8 out); storages start 16-byte aligned.
TVM_KERNEL_F32(convert_f32_bf16, (256), (const float* x, unsigned short* y, i64 n)) {
    const i64 packs = n / 4;
    for (i64 i = gtid(); i < packs; i += gstride()) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        uint2 o;
        o.x = bf16_pack2(v.x, v.y);
        o.y = bf16_pack2(v.z, v.w);
        reinterpret_cast<uint2*>(y)[i] = o;
    }
    for (i64 i = packs * 4 + gtid(); i < n; i += gstride()) y[i] = bf16_bits(x[i]);
}
/// Two values per thread and step (4 bytes in, 8 out); storages start 16-byte aligned.
TVM_KERNEL_F32(convert_bf16_f32, (256), (const unsigned short* x, float* y, i64 n)) {
    const i64 pairs = n / 2;
    for (i64 i = gtid(); i < pairs; i += gstride()) {
        const u32 v = reinterpret_cast<const u32*>(x)[i];
        reinterpret_cast<float2*>(y)[i] = make_float2(bf16_lo(v), bf16_hi(v));
    }
    for (i64 i = pairs * 2 + gtid(); i < n; i += gstride()) y[i] = bf16_value(x[i]);
}
