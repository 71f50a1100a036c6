// The tensor-core tile machinery of the flash-attention kernels (FlashAttention.cu): operand precisions,
// fragments and products, the staging of tiles in shared memory and the step of the inner-block loop. Included
// after ../common.cuh.

// Fused flash attention for float32 tensors and head dims 64 and 72: tiles of 16 query
// (or key) rows per warp through tensor cores with float32 accumulators, in one of three operand precisions
// (PREC, FlashAttentionKernels.swift's FlashPrecision). FP_X3 (the default float32 path) splits every operand x into
// hi = tf32(x) and lo = tf32(x - hi) and sums lo*hi + hi*lo + hi*hi with mma.m16n8k8 TF32: three products for
// about float32 accuracy (3xTF32). FP_TF32 (allowTF32) uses hi*hi alone. FP_BF16 (bf16Products) rounds q, k,
// v, their tangents and the cotangents to bfloat16 when a tile is staged in shared memory (or stages the bf16
// copies that the kernels making them wrote: the same bits), and the softmax weights (and their tangents and
// gradients) when they become the left operand of the next product, as bf16 flash attention does, takes the
// exponentials from the hardware's approximation (flash_exp), and multiplies with mma.m16n8k16 BF16: one
// instruction per 16 columns of k instead of 2 (TF32) or 6 (3xTF32). Nothing of size seq x seq reaches memory: scores live in registers, one key (or
// query) block at a time, with an online softmax in the forward pass and the saved row log-sum-exp in the
// backward pass. Operands are token-major (attn_head_offset): grid.y runs over batch * heads, a head's rows
// are heads * D floats apart, and lse and the row statistics are [batch * heads, n].
//
// Fragment layouts (g = lane / 4, t = lane % 4). mma.m16n8k8 TF32: A (16x8) a0 = A[g][t], a1 = A[g+8][t],
// a2 = A[g][t+4], a3 = A[g+8][t+4]; B (8x8) b0 = B[t][g], b1 = B[t+4][g]. mma.m16n8k16 BF16 (two values per
// register, the lower column in the lower half): A (16x16) a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1],
// a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]; B (16x8) b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]. Both:
// C (16x8) c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]. An accumulator tile becomes the A operand of
// the next product without moving data between lanes: in TF32 as (c0, c2, c1, c3), its column 2t playing
// k = t and 2t+1 playing k = t+4, the B operand read in the same order (rows 2t and 2t+1 of the tile); in
// BF16 two adjacent tiles (columns 0-7 and 8-15) are exactly one A fragment of 16 columns. BF16 fragments come
// from shared memory by ldmatrix (x4 for A, x2 for B, x2.trans for B = a row-major tile itself).
//
// FP_WG (bf16Products on Hopper, machine code for sm_90a) computes what FP_BF16 computes, with the products as wgmma: a
// warpgroup (4 warps, 64 rows) multiplies A fragments in registers (each warp its 16 rows, the mma.sync layout above)
// by a B tile that the tensor cores read from shared memory themselves, once per warpgroup, where with mma.sync every
// warp reads every B fragment by ldmatrix. It was built to lift that shared-memory traffic; on an H100 it gave the same
// results but no speed (the kernels wait on latency at 8 warps per SM, not on shared memory), so it is off by default
// (CUDABackend.flashWarpgroupProducts; docs/CUDA_NOTES.md). The accumulators of m64nNk16 hold, per
// warp, exactly the tiles out[N / 8][4] of the mma.sync code, so the softmax, statistics and output code is shared.
// Its tiles are stored as 8x8 core matrices of 128 contiguous bytes (tile_at), the layout wgmma reads unswizzled;
// ldmatrix reads the A fragments from the same tiles.
#define FP_X3 0
#define FP_TF32 1
#define FP_BF16 2
#define FP_WG 3
__device__ __forceinline__ u32 f2tf32(float x) { u32 r; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x)); return r; }
__device__ __forceinline__ void mma_tf32(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/// Two floats rounded to bfloat16 (to nearest even) in one register, lo in the lower half.
__device__ __forceinline__ u32 bf16x2(float lo, float hi) { u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r; }
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((u32)__cvta_generic_to_shared(p)));
}
__device__ __forceinline__ void ldsm_x2(u32 (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"((u32)__cvta_generic_to_shared(p)));
}
__device__ __forceinline__ void ldsm_x2_trans(u32 (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"((u32)__cvta_generic_to_shared(p)));
}
__device__ __forceinline__ u32 dynamic_smem_bytes() { u32 r; asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r)); return r; }
/// 16 bytes from global to shared memory without passing through registers (.cg: not cached in L1, the tiles are
/// read once per block); complete, for this thread, at the next cp_async_wait_all.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"((u32)__cvta_generic_to_shared(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
__device__ __forceinline__ float ex2_approx(float x) { float r; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }

/// Per precision: the shared-memory element (bf16 bits for FP_BF16), the columns of k one product step takes
/// (in units of 8), whether operands are split (3xTF32), the sets of inner tiles (STAGES: FP_BF16 loads the next
/// block's tiles while it multiplies the current one, see flash_stage), the columns of a tile (D, or D rounded up
/// to 16 for BF16, the extra columns zero) and the tile pitch in elements (padded so that every fragment load, and
/// every ldmatrix phase, touches 32 different banks: 68 / 76 floats, 72 / 88 bf16 values for D = 64 / 72).
/// BF16: bfloat16 operands (FP_BF16 and FP_WG); CORE: tiles in core matrices, products by wgmma (FP_WG, whose rows
/// need no padding: a core matrix's 8 rows of 16 bytes are one ldmatrix phase on 32 banks).
template<int PREC> struct FlashPrec {
    typedef float E;
    static constexpr int KS = 1;
    static constexpr bool SPLIT = PREC == FP_X3, BF16 = false, CORE = false;
    static constexpr int STAGES = 1;
    template<int D> static constexpr int cols() { return D; }
    template<int D> static constexpr int ld() { return D + 4; }
};
template<> struct FlashPrec<FP_BF16> {
    typedef unsigned short E;
    static constexpr int KS = 2;
    static constexpr bool SPLIT = false, BF16 = true, CORE = false;
    static constexpr int STAGES = 2;
    template<int D> static constexpr int cols() { return (D + 15) / 16 * 16; }
    template<int D> static constexpr int ld() { return cols<D>() + 8; }
};
template<> struct FlashPrec<FP_WG> : FlashPrec<FP_BF16> {
    static constexpr bool CORE = true;
    template<int D> static constexpr int ld() { return cols<D>(); }
};

/// Element (r, c) of a shared tile of LD elements a row: row-major, or with CORE in 8x8 core matrices (8 rows of 8
/// elements, 128 contiguous bytes), LD / 8 of them for each 8 rows, side by side (c a multiple of 4 or r's row of a
/// core matrix: what a 16- or 8-byte access and ldmatrix address).
template<int PREC, int LD> __device__ __forceinline__ int tile_at(int r, int c) {
    if constexpr (FlashPrec<PREC>::CORE) return ((r >> 3) * (LD >> 3) + (c >> 3)) * 64 + ((r & 7) << 3) + (c & 7);
    else return r * LD + c;
}

/// A operand (TF32: 16x8, split into hi and lo parts for 3xTF32; BF16: 16x16 in h) and B operand (8x8; 16x8).
template<int PREC> struct FragA { u32 h[4], l[4]; };
template<int PREC> struct FragB { u32 h[2], l[2]; };

template<int PREC> __device__ __forceinline__ void tf32_parts(float x, u32& h, u32& l) {
    h = f2tf32(x);
    l = FlashPrec<PREC>::SPLIT ? f2tf32(x - __uint_as_float(h)) : 0u;
}
template<int PREC> __device__ __forceinline__ FragA<PREC> frag_a(float x0, float x1, float x2, float x3) {
    FragA<PREC> f;
    tf32_parts<PREC>(x0, f.h[0], f.l[0]);
    tf32_parts<PREC>(x1, f.h[1], f.l[1]);
    tf32_parts<PREC>(x2, f.h[2], f.l[2]);
    tf32_parts<PREC>(x3, f.h[3], f.l[3]);
    return f;
}
template<int PREC> __device__ __forceinline__ FragB<PREC> frag_b(float x0, float x1) {
    FragB<PREC> f;
    tf32_parts<PREC>(x0, f.h[0], f.l[0]);
    tf32_parts<PREC>(x1, f.h[1], f.l[1]);
    return f;
}
/// c += a b (16x8x8 TF32, 16x8x16 BF16). With 3xTF32 the three products go into a zeroed accumulator, added
/// to c with a rounded float add: the tensor cores' float32 accumulation truncates (rounds toward zero), a
/// bias that grows with the number of products summed into one accumulator (measured 1.5e-5 relative at
/// S = 1024 when a whole row's products went into one); this keeps it at three products' worth.
template<int PREC> __device__ __forceinline__ void tc_mma(float (&c)[4], const FragA<PREC>& a, const FragB<PREC>& b) {
    if constexpr (FlashPrec<PREC>::BF16) {
        mma_bf16(c, a.h, b.h[0], b.h[1]);
    } else if constexpr (PREC == FP_X3) {
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_tf32(d, a.l, b.h[0], b.h[1]);
        mma_tf32(d, a.h, b.l[0], b.l[1]);
        mma_tf32(d, a.h, b.h[0], b.h[1]);
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] += d[i];
    } else {
        mma_tf32(c, a.h, b.h[0], b.h[1]);
    }
}
/// A operand from a row-major shared tile [rows][LD]: rows r0..r0+15, columns k0..k0+8*KS-1.
template<int PREC, int LD> __device__ __forceinline__ FragA<PREC> lds_a(const typename FlashPrec<PREC>::E* s, int r0, int k0, int g, int t) {
    if constexpr (FlashPrec<PREC>::BF16) {
        const int lane = 4 * g + t;
        FragA<PREC> f;
        ldsm_x4(f.h, s + tile_at<PREC, LD>(r0 + (lane & 15), k0 + (lane >> 4) * 8));
        return f;
    } else {
        const float* p = s + (r0 + g) * LD + k0 + t;
        return frag_a<PREC>(p[0], p[8 * LD], p[4], p[8 * LD + 4]);
    }
}
/// B operand B[k][n] = Y[n0 + n][k0 + k] of a row-major shared tile Y [rows][LD] (a product with Y^T).
template<int PREC, int LD> __device__ __forceinline__ FragB<PREC> lds_bt(const typename FlashPrec<PREC>::E* s, int n0, int k0, int g, int t) {
    if constexpr (FlashPrec<PREC>::BF16) {
        const int lane = 4 * g + t;
        FragB<PREC> f;
        ldsm_x2(f.h, s + tile_at<PREC, LD>(n0 + (lane & 7), k0 + ((lane >> 3) & 1) * 8));
        return f;
    } else {
        const float* p = s + (n0 + g) * LD + k0 + t;
        return frag_b<PREC>(p[0], p[4]);
    }
}
/// B operand B[k][n] = Y[k0 + k'][n0 + n] of a row-major shared tile Y: the right operand of a product with
/// acc_a. TF32: k' in the accumulator order (k = t is row 2t, k = t+4 is row 2t+1); BF16: k' = k.
template<int PREC, int LD> __device__ __forceinline__ FragB<PREC> lds_bn(const typename FlashPrec<PREC>::E* s, int k0, int n0, int g, int t) {
    if constexpr (FlashPrec<PREC>::BF16) {
        const int lane = 4 * g + t;
        FragB<PREC> f;
        ldsm_x2_trans(f.h, s + tile_at<PREC, LD>(k0 + (lane & 15), n0));
        return f;
    } else {
        const float* p = s + (k0 + 2 * t) * LD + n0 + g;
        return frag_b<PREC>(p[0], p[LD]);
    }
}
/// Accumulator tiles as the A operand of the next product (see above): TF32 takes c0 (columns 0-7 of k), BF16
/// c0 and c1 (columns 0-15), rounded to bfloat16.
template<int PREC> __device__ __forceinline__ FragA<PREC> acc_a(const float (&c0)[4], const float (&c1)[4]) {
    if constexpr (FlashPrec<PREC>::BF16) {
        FragA<PREC> f;
        f.h[0] = bf16x2(c0[0], c0[1]);
        f.h[1] = bf16x2(c0[2], c0[3]);
        f.h[2] = bf16x2(c1[0], c1[1]);
        f.h[3] = bf16x2(c1[2], c1[3]);
        return f;
    } else {
        return frag_a<PREC>(c0[0], c0[2], c0[1], c0[3]);
    }
}

/// wgmma (FP_WG): the instructions exist only in sm_90a machine code. Elsewhere the FP_WG kernels trap (the host
/// launches them only on such a device). The accumulators and A registers go through asm operands, so wg_fence and
/// wg_operands order the ordinary instructions that write and read them around the queued products.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ACC(i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define WG_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(TRANS ? 1 : 0), "r"(1)
/// d += A B over 16 columns of k for a warpgroup's 64 rows: A this warp's 16 rows (an mma.sync A fragment), B (16 x N)
/// read from shared memory by the tensor cores through `desc`, K-major (a tile transposed: TRANS false) or MN-major (a
/// tile itself: TRANS true). Queued: complete at wg_commit_wait.
template<int N, bool TRANS> __device__ __forceinline__ void wg_mma(float (&d)[N / 8][4], const u32 (&a)[4], u64 desc) {
    static_assert(N == 16 || N == 32 || N == 64 || N == 72, "wg_mma: no instance for this N");
    if constexpr (N == 16)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %14, 0;\nwgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, %13;\n}"
                     : WG_ACC(0), WG_ACC(1) : WG_IN);
    if constexpr (N == 32)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %22, 0;\nwgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, %21;\n}"
                     : WG_ACC(0), WG_ACC(1), WG_ACC(2), WG_ACC(3) : WG_IN);
    if constexpr (N == 64)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}"
                     : WG_ACC(0), WG_ACC(1), WG_ACC(2), WG_ACC(3), WG_ACC(4), WG_ACC(5), WG_ACC(6), WG_ACC(7) : WG_IN);
    if constexpr (N == 72)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %42, 0;\nwgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 {"
                     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35}, {%36, %37, %38, %39}, %40, p, 1, 1, %41;\n}"
                     : WG_ACC(0), WG_ACC(1), WG_ACC(2), WG_ACC(3), WG_ACC(4), WG_ACC(5), WG_ACC(6), WG_ACC(7), WG_ACC(8) : WG_IN);
}
#undef WG_ACC
#undef WG_IN
/// Before the first product of a group: the registers it reads were written by ordinary instructions.
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
/// The products queued since the last commit, as one group.
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
/// Every committed group but the last PENDING done (groups complete in order), their accumulators readable.
template<int PENDING> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(PENDING) : "memory");
}
/// The queued products done, their accumulators readable.
__device__ __forceinline__ void wg_commit_wait() {
    wg_commit();
    wg_wait<0>();
}
/// Shared memory this thread wrote (st.shared, cp.async) made visible to the tensor cores' reads (the async proxy).
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
#else
template<int N, bool TRANS> __device__ __forceinline__ void wg_mma(float (&)[N / 8][4], const u32 (&)[4], u64) { __trap(); }
__device__ __forceinline__ void wg_fence() {}
__device__ __forceinline__ void wg_commit() {}
template<int PENDING> __device__ __forceinline__ void wg_wait() {}
__device__ __forceinline__ void wg_commit_wait() {}
__device__ __forceinline__ void fence_async_shared() {}
#endif
/// Accumulator tiles pinned in program order between the asm statements (no read or write of them moves across).
template<int N> __device__ __forceinline__ void wg_operands(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e]) :: "memory");
}
/// A fragments pinned likewise: a queued product reads its A registers until it is waited for, so they stay live and
/// unchanged up to this point.
template<int N> __device__ __forceinline__ void wg_operands(u32 (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e]) :: "memory");
}
/// A wgmma descriptor of a CORE tile's block at `tile` (16-byte aligned): unswizzled core matrices, `lbo` bytes apart
/// along k, `sbo` bytes apart along M or N.
__device__ __forceinline__ u64 wg_desc(const void* tile, u32 lbo, u32 sbo) {
    const u64 a = (u32)__cvta_generic_to_shared(tile);
    return ((a & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}

/// e^x for the softmax weights. FP_BF16: 2^(x log2 e) by the hardware approximation (ex2.approx.ftz: two
/// instructions where expf takes nine, with about 2 ulp of float32 error where the weights are then rounded to
/// bfloat16, 2^16 ulp, before their product; e^-inf = 0), as bf16 flash attention computes them. The float32-tile
/// precisions keep the accurate expf of the CPU backend.
template<int PREC> __device__ __forceinline__ float flash_exp(float x) {
    if constexpr (FlashPrec<PREC>::BF16) return ex2_approx(x * 1.44269504088896341f);
    else return m_exp(x);
}

/// Accumulator tiles to zero.
template<int N> __device__ __forceinline__ void zero_tiles(float (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) a[i][e] = 0.f;
}

/// A warp's accumulator tiles as its only row tile (the products' several-row-tile form).
template<int N> __device__ __forceinline__ float (&one_row_tile(float (&a)[N][4]))[1][N][4] {
    return reinterpret_cast<float (&)[1][N][4]>(a);
}

// Which factor a term of a tile product takes: the operand itself or its tangent.
#define PLAIN false
#define TANGENT true

/// One step's terms of a tile product: out0 += a b and with TAN out1 += X1 Y1 then out2 += X2 Y2, X the operand a or
/// its tangent ta, Y the operand b or its tangent, which `tangentB()` loads (only with TAN).
template<int PREC, bool TAN, bool X1, bool Y1, bool X2, bool Y2, typename TangentB>
__device__ __forceinline__ void tile_terms(float (&out0)[4], float (&out1)[4], float (&out2)[4], const FragA<PREC>& a,
        const FragA<PREC>& ta, const FragB<PREC>& b, TangentB tangentB) {
    tc_mma<PREC>(out0, a, b);
    if (TAN) {
        const FragB<PREC> tb = tangentB();
        tc_mma<PREC>(out1, X1 ? ta : a, Y1 ? tb : b);
        tc_mma<PREC>(out2, X2 ? ta : a, Y2 ? tb : b);
    }
}

/// The warpgroup's products of tile_products_bt and tile_products_bn (FP_WG): per step i of 16 along k, out0 += A B and
/// with TAN out1 += X1 Y1 then out2 += X2 Y2, in tile_terms' order; A (and tA) for every step already in registers (a
/// wgmma reading registers that an ordinary instruction wrote needs a wg_fence in between, so all are taken first), B
/// (or tB) of step i read by the tensor cores through desc(tile, i), N columns, MN-major with TRANS.
template<int N, bool TRANS, bool TAN, bool X1, bool Y1, bool X2, bool Y2, int PREC, int STEPS, typename Desc>
__device__ __forceinline__ void wg_products(float (&out0)[N / 8][4], float (&out1)[N / 8][4], float (&out2)[N / 8][4],
        const FragA<PREC> (&a)[STEPS], const FragA<PREC> (&ta)[STEPS], const typename FlashPrec<PREC>::E* sB,
        const typename FlashPrec<PREC>::E* sTB, Desc desc) {
    wg_operands(out0);
    if (TAN) { wg_operands(out1); wg_operands(out2); }
    wg_fence();
#pragma unroll
    for (int i = 0; i < STEPS; ++i) {
        wg_mma<N, TRANS>(out0, a[i].h, desc(sB, i));
        if (TAN) {
            wg_mma<N, TRANS>(out1, (X1 ? ta[i] : a[i]).h, desc(Y1 ? sTB : sB, i));
            wg_mma<N, TRANS>(out2, (X2 ? ta[i] : a[i]).h, desc(Y2 ? sTB : sB, i));
        }
    }
    wg_commit_wait();
    wg_operands(out0);
    if (TAN) { wg_operands(out1); wg_operands(out2); }
}

/// A warp's products of its MT row tiles (16 rows each, from r0 on) of the shared tile sA with the N = 8-column tiles
/// of the shared tile sB transposed (out[m][c] = A Y^T, Y rows c * 8 .. c * 8 + 7), over the head dim (KDP steps of 8
/// columns): out0 += A B^T and with TAN, in the same step, out1 += X1 Y1^T then out2 += X2 Y2^T, X1 and X2 the
/// tangent tile tA (TANGENT) or A, Y1 and Y2 tB or B. out1 and out2 may be the same tiles (or out0). Within a step of k
/// every product goes into its tile in this order, as the kernels always summed them (the order is part of the float32
/// result). A B fragment read from shared memory serves all MT row tiles (more row tiles: fewer shared-memory reads
/// and more independent products per fragment, more accumulators). UNROLL_K: unroll the loop over k (else a loop,
/// fewer fragments live).
template<int PREC, int LD, int KDP, bool TAN, bool UNROLL_K, bool X1, bool Y1, bool X2, bool Y2, int MT, int N>
__device__ __forceinline__ void tile_products_bt(float (&out0)[MT][N][4], float (&out1)[MT][N][4], float (&out2)[MT][N][4],
        const typename FlashPrec<PREC>::E* sA, const typename FlashPrec<PREC>::E* sTA,
        const typename FlashPrec<PREC>::E* sB, const typename FlashPrec<PREC>::E* sTB, int r0, int g, int t) {
    constexpr int KS = FlashPrec<PREC>::KS;
    static_assert(MT == 1 || (!TAN && !FlashPrec<PREC>::CORE), "tile_products_bt: several row tiles only for plain mma.sync products");
    if constexpr (FlashPrec<PREC>::CORE) {
        // B = the tile transposed (K-major): a step is 16 columns, two core matrices 128 bytes apart; 8-row blocks lie
        // LD * 16 bytes apart.
        constexpr int STEPS = KDP / KS;
        FragA<PREC> a[STEPS], ta[STEPS];
#pragma unroll
        for (int i = 0; i < STEPS; ++i) {
            a[i] = lds_a<PREC, LD>(sA, r0, 16 * i, g, t);
            if (TAN) ta[i] = lds_a<PREC, LD>(sTA, r0, 16 * i, g, t);
        }
        wg_products<8 * N, false, TAN, X1, Y1, X2, Y2>(out0[0], out1[0], out2[0], a, ta, sB, sTB,
                                                       [](auto y, int i) { return wg_desc(y + 128 * i, 128, LD * 16); });
    } else {
#pragma unroll (UNROLL_K ? KDP : 1)
        for (int kk = 0; kk < KDP; kk += KS) {
            FragA<PREC> a[MT], ta[MT];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                a[m] = lds_a<PREC, LD>(sA, r0 + 16 * m, kk * 8, g, t);
                if (TAN) ta[m] = lds_a<PREC, LD>(sTA, r0 + 16 * m, kk * 8, g, t);
            }
#pragma unroll
            for (int c = 0; c < N; ++c) {
                const FragB<PREC> b = lds_bt<PREC, LD>(sB, c * 8, kk * 8, g, t);
#pragma unroll
                for (int m = 0; m < MT; ++m)
                    tile_terms<PREC, TAN, X1, Y1, X2, Y2>(out0[m][c], out1[m][c], out2[m][c], a[m], ta[m], b,
                                                          [&] { return lds_bt<PREC, LD>(sTB, c * 8, kk * 8, g, t); });
            }
        }
    }
}
/// The same for a warp's one row tile.
template<int PREC, int LD, int KDP, bool TAN, bool UNROLL_K, bool X1, bool Y1, bool X2, bool Y2, int N>
__device__ __forceinline__ void tile_products_bt(float (&out0)[N][4], float (&out1)[N][4], float (&out2)[N][4],
        const typename FlashPrec<PREC>::E* sA, const typename FlashPrec<PREC>::E* sTA,
        const typename FlashPrec<PREC>::E* sB, const typename FlashPrec<PREC>::E* sTB, int r0, int g, int t) {
    tile_products_bt<PREC, LD, KDP, TAN, UNROLL_K, X1, Y1, X2, Y2>(one_row_tile(out0), one_row_tile(out1), one_row_tile(out2),
                                                                   sA, sTA, sB, sTB, r0, g, t);
}

/// Register tiles p (and tp) of N = 8-column tiles, a warp's MT row tiles, as the left operand of a product with the
/// shared tile sB read as it is (out[m][i] columns i * 8 .. i * 8 + 7 of P Y, KD tiles): out0 += P B and with TAN
/// out1 += X1 Y1 then out2 += X2 Y2 (X from P or tP, Y from B or tB), in this order per step, as tile_products_bt
/// (a B fragment serving all MT row tiles).
template<int PREC, int LD, bool TAN, bool X1, bool Y1, bool X2, bool Y2, int MT, int KD, int N>
__device__ __forceinline__ void tile_products_bn(float (&out0)[MT][KD][4], float (&out1)[MT][KD][4], float (&out2)[MT][KD][4],
        float (&p)[MT][N][4], float (&tp)[MT][N][4], const typename FlashPrec<PREC>::E* sB,
        const typename FlashPrec<PREC>::E* sTB, int g, int t) {
    constexpr int KS = FlashPrec<PREC>::KS;
    static_assert(MT == 1 || (!TAN && !FlashPrec<PREC>::CORE), "tile_products_bn: several row tiles only for plain mma.sync products");
    if constexpr (FlashPrec<PREC>::CORE) {
        // B = the tile itself (MN-major): a step is 16 rows of the tile, two 8-row blocks LD * 16 bytes apart; core
        // matrices lie 128 bytes apart along N.
        constexpr int STEPS = N / KS;
        FragA<PREC> a[STEPS], ta[STEPS];
#pragma unroll
        for (int i = 0; i < STEPS; ++i) {
            a[i] = acc_a<PREC>(p[0][KS * i], p[0][KS * i + KS - 1]);
            if (TAN) ta[i] = acc_a<PREC>(tp[0][KS * i], tp[0][KS * i + KS - 1]);
        }
        wg_products<8 * KD, true, TAN, X1, Y1, X2, Y2>(out0[0], out1[0], out2[0], a, ta, sB, sTB,
                                                       [](auto y, int i) { return wg_desc(y + 16 * LD * i, LD * 16, 128); });
    } else {
#pragma unroll
        for (int c = 0; c < N; c += KS) {
            FragA<PREC> a[MT], ta[MT];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                a[m] = acc_a<PREC>(p[m][c], p[m][c + KS - 1]);
                if (TAN) ta[m] = acc_a<PREC>(tp[m][c], tp[m][c + KS - 1]);
            }
#pragma unroll
            for (int i = 0; i < KD; ++i) {
                const FragB<PREC> b = lds_bn<PREC, LD>(sB, c * 8, i * 8, g, t);
#pragma unroll
                for (int m = 0; m < MT; ++m)
                    tile_terms<PREC, TAN, X1, Y1, X2, Y2>(out0[m][i], out1[m][i], out2[m][i], a[m], ta[m], b,
                                                          [&] { return lds_bn<PREC, LD>(sTB, c * 8, i * 8, g, t); });
            }
        }
    }
}
/// The same for a warp's one row tile.
template<int PREC, int LD, bool TAN, bool X1, bool Y1, bool X2, bool Y2, int KD, int N>
__device__ __forceinline__ void tile_products_bn(float (&out0)[KD][4], float (&out1)[KD][4], float (&out2)[KD][4],
        float (&p)[N][4], float (&tp)[N][4], const typename FlashPrec<PREC>::E* sB,
        const typename FlashPrec<PREC>::E* sTB, int g, int t) {
    tile_products_bn<PREC, LD, TAN, X1, Y1, X2, Y2>(one_row_tile(out0), one_row_tile(out1), one_row_tile(out2),
                                                    one_row_tile(p), one_row_tile(tp), sB, sTB, g, t);
}

/// Rows row0..row0+ROWS-1 of a head (n rows of D floats, `ld` apart from `src`) into a shared tile
/// [ROWS][LD] of FlashPrec<PREC>::cols<D>() columns (16-byte loads: src and ld are multiples of 4 floats;
/// rows past n and columns past D are zeros), rounded to bfloat16 for FP_BF16.
template<int D, int ROWS, int THREADS, int PREC>
__device__ __forceinline__ void flash_load(typename FlashPrec<PREC>::E* s, const float* __restrict__ src, i64 ld, int row0, int n) {
    constexpr int V = D / 4, VP = FlashPrec<PREC>::template cols<D>() / 4, LD = FlashPrec<PREC>::template ld<D>();
#pragma unroll 4
    for (int i = threadIdx.x; i < ROWS * VP; i += THREADS) {
        const int r = i / VP, c = i - r * VP;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if ((VP == V || c < V) && row0 + r < n) x = reinterpret_cast<const float4*>(src + (row0 + r) * ld)[c];
        if constexpr (FlashPrec<PREC>::BF16) {
            *reinterpret_cast<uint2*>(s + tile_at<PREC, LD>(r, 4 * c)) = make_uint2(bf16x2(x.x, x.y), bf16x2(x.z, x.w));
        } else {
            *reinterpret_cast<float4*>(s + r * LD + 4 * c) = x;
        }
    }
}
/// An operand in global memory: its float32 values and, where the kernel that made them wrote one under bf16
/// products, their bfloat16 copy (else null).
struct FlashIn { const float* x; const unsigned short* x16; };

/// Rows row0..row0+ROWS-1 of a head (first row at `hb`, rows `ld` apart) into a shared tile as flash_load does.
/// FP_BF16 with a bf16 copy: the copy's 16-byte chunks by cp.async (in flight until cp_async_wait_all, no registers
/// held, the zero rows and columns stored directly); these are the bits flash_load's rounding gives (both round to
/// nearest even), so results do not depend on which operands have copies. Otherwise flash_load (the float32 values,
/// rounded for FP_BF16).
template<int D, int ROWS, int THREADS, int PREC>
__device__ __forceinline__ void flash_stage(typename FlashPrec<PREC>::E* s, FlashIn src, i64 hb, i64 ld, int row0, int n) {
    if constexpr (FlashPrec<PREC>::BF16) {
        if (src.x16 != nullptr) {
            // Chunks of 8 values: C per tile row, CD of them holding data (D = 72: 9 of 10).
            constexpr int C = FlashPrec<PREC>::template cols<D>() / 8, CD = D / 8, LD = FlashPrec<PREC>::template ld<D>();
            const unsigned short* p = src.x16 + hb;
#pragma unroll 4
            for (int i = threadIdx.x; i < ROWS * C; i += THREADS) {
                const int r = i / C, c = i - r * C;
                unsigned short* dst = s + tile_at<PREC, LD>(r, 8 * c);
                if ((C == CD || c < CD) && row0 + r < n) cp_async16(dst, p + (row0 + r) * ld + 8 * c);
                else *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
            }
            return;
        }
    }
    flash_load<D, ROWS, THREADS, PREC>(s, src.x + hb, ld, row0, n);
}
/// Four operands' rows row0..row0+ROWS-1 into four consecutive ROWS-row tiles at s, a pair (a, b) and, with TAN,
/// their tangent-side partners (ta, tb): the tile groups every flash kernel stages (k, v, tk, tv and q, go, tq, gto).
template<int D, int ROWS, int THREADS, int PREC, bool TAN>
__device__ __forceinline__ void flash_stage_group(typename FlashPrec<PREC>::E* s, FlashIn a, FlashIn b, FlashIn ta,
        FlashIn tb, i64 hb, i64 ld, int row0, int n) {
    constexpr int LD = FlashPrec<PREC>::template ld<D>();
    flash_stage<D, ROWS, THREADS, PREC>(s, a, hb, ld, row0, n);
    flash_stage<D, ROWS, THREADS, PREC>(s + ROWS * LD, b, hb, ld, row0, n);
    if (TAN) {
        flash_stage<D, ROWS, THREADS, PREC>(s + 2 * ROWS * LD, ta, hb, ld, row0, n);
        flash_stage<D, ROWS, THREADS, PREC>(s + 3 * ROWS * LD, tb, hb, ld, row0, n);
    }
}
/// The backward's row statistics (float4 per row) of rows row0..row0+ROWS-1 into shared memory, zeros past n;
/// by cp.async with ASYNC (complete at cp_async_wait_all).
template<int ROWS, int THREADS, bool ASYNC>
__device__ __forceinline__ void flash_stage_stats(float4* s, const float* __restrict__ stats, i64 rowBase, int row0, int n) {
    for (int i = threadIdx.x; i < ROWS; i += THREADS) {
        if constexpr (ASYNC) {
            if (row0 + i < n) cp_async16(s + i, stats + (rowBase + row0 + i) * 4);
            else s[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            s[i] = row0 + i < n ? *reinterpret_cast<const float4*>(stats + (rowBase + row0 + i) * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
}

/// Launch geometry the kernel was built for; a mismatch with the host's table stops the kernel.
template<int THREADS, int SMEM> __device__ __forceinline__ void flash_check_launch() {
    if (threadIdx.x == 0 && (blockDim.x != THREADS || dynamic_smem_bytes() < (u32)SMEM)) __trap();
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

/// One step of a kernel's loop over the inner blocks of ROWS rows (keys in the forward and dq, queries in dkv), the
/// block at row0: the shared set of tiles to compute on. stage(set, row0) writes a block's tiles into a set. With
/// two sets (FlashPrec::STAGES; the caller staged the first block into set 0 before the loop) the block's copies
/// are waited for, and after the barrier, which also tells that every warp is done with the other set, the next
/// block is staged into that set: its cp.async copies fly while this block is multiplied. With one set the block
/// is loaded between two barriers, as the float32-tile kernels always did (their loop and code are unchanged). CORE:
/// the tiles' writes are made visible to wgmma's reads before the barrier (those staged before the loop included).
template<int STAGES, int ROWS, bool CORE, typename Stage>
__device__ __forceinline__ int flash_inner_step(int row0, int n, Stage stage) {
    if constexpr (STAGES == 2) {
        cp_async_wait_all();
        if (CORE) fence_async_shared();
        __syncthreads();
        if (row0 + ROWS < n) stage((row0 / ROWS + 1) & 1, row0 + ROWS);
        return (row0 / ROWS) & 1;
    } else {
        __syncthreads();
        stage(0, row0);
        __syncthreads();
        return 0;
    }
}
