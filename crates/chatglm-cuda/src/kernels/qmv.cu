// One-token quantized products (batch-1 decode), their weights streamed
// through shared memory.
//
// Why not qmma_body for one token: its weights travel through registers
// (8 units a lane), so two blocks of 128 registers fill a SM's register
// file, and the next product's blocks cannot start beside them: at every
// one of a step's 112 product boundaries the DRAM idles from a product's
// last bytes to the next one's first request, its wait and its activation
// reads (run 74: QKV ends ~9 µs after the kernel ahead for ~2.6 µs of
// weights). Here a block is one per SM and takes at most half of a SM
// (256 threads, ≤ 128 registers, ≤ ~100 KB of shared memory), so while a
// product runs, the next one's blocks are already resident beside it and
// have requested the first QMV_RING_KB of their weights into shared memory
// before they wait for it: for QKV and dense that is nearly all of a
// block's share (80 / 71 KB on 132 SMs), for the MLP the first ~15–30%.
//
// Each warp streams its own units (a ring of DEPTH units, cp.async, one
// commit group a unit), so no block barrier sits in the stream; the warps of
// a block take interleaved units of the same item (a 16-row tile; SwiGLU: a
// gate tile with its up tile), whose sums meet in item_epilogue. Items are
// dealt to blocks in equal contiguous runs. The arithmetic is qmma's
// one-token path (unit_product<ONE>), the activations are quantized in the
// block as there (in_block_x), so results equal qmma's bit for bit.

// Shared memory for a block's weight ring (the host mirrors it: quant.rs
// qmv_ring_bytes).
#ifndef QMV_RING_KB
#define QMV_RING_KB 72
#endif

template <int F> struct QmvUnit {
    static constexpr int SCB = 32 * QFmt<F>::BLOCKS;  // scale bytes a unit: 16 rows × blocks × f16
    static constexpr int BYTES = 512 + SCB * (QFmt<F>::MIN ? 2 : 1);
};

template <int F, int RT> struct QmvRing {
    static constexpr int DEPTH = QMV_RING_KB * 1024 / (QMMA_WARPS * RT * QmvUnit<F>::BYTES);  // units a warp
    static constexpr int BYTES = QMMA_WARPS * DEPTH * RT * QmvUnit<F>::BYTES;
    static_assert(DEPTH >= 2, "QMV_RING_KB too small for two units a warp");
};

template <int F, int MODE>
__device__ __forceinline__ void qmv_body(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                         const u16* __restrict__ mins, int units, int tiles,
                                         const float* __restrict__ x, const float* __restrict__ nw, float eps, int cols,
                                         const float* __restrict__ bias, float* __restrict__ out, int out_rows,
                                         int half_rows, const RopeCtx& rc) {
    constexpr int RT = MODE == 2 ? 2 : 1;
    constexpr int SB = QFmt<F>::BLOCKS;
    constexpr int SCB = QmvUnit<F>::SCB, UNIT = QmvUnit<F>::BYTES;
    constexpr int DEPTH = QmvRing<F, RT>::DEPTH;
    typedef typename QScale<F>::type ScaleVec;
    extern __shared__ __align__(16) unsigned char qmma_smem[];
    __shared__ float red[QMMA_WARPS][RT * 16][9];
    __shared__ float inv[8], scratch[QMMA_WARPS * 8];
    __shared__ TokenSlot slots[1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nb = cols / 32;
    const int items = MODE == 2 ? half_rows / 16 : tiles;
    const int i0 = (int)((long)blockIdx.x * items / gridDim.x);
    const int i1 = (int)((long)(blockIdx.x + 1) * items / gridDim.x);
    // This warp's units of every item: warp, warp + 8, …
    const int per_item = warp < units ? (units - 1 - warp) / QMMA_WARPS + 1 : 0;
    const int total = (i1 - i0) * per_item;
    unsigned char* ring = qmma_smem + warp * (DEPTH * RT * UNIT);

    // Unit k of this warp's stream into its ring slot; one commit group a
    // unit (empty past the end) so that waiting for DEPTH − 1 groups means
    // unit k has landed.
    auto request = [&](int k) {
        if (k < total) {
            const int item = i0 + k / per_item, p = warp + QMMA_WARPS * (k % per_item);
            unsigned char* slot = ring + (k % DEPTH) * (RT * UNIT);
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const long tu = (long)(r ? item + half_rows / 16 : item) * units + p;
                unsigned char* d = slot + r * UNIT;
                cp_async16(d + lane * 16, (const char*)w + tu * 512 + lane * 16, true);
                if (lane < SCB / 16) {
                    cp_async16(d + 512 + lane * 16, (const char*)scales + tu * SCB + lane * 16, true);
                    if (QFmt<F>::MIN)
                        cp_async16(d + 512 + SCB + lane * 16, (const char*)mins + tu * SCB + lane * 16, true);
                }
            }
        }
        cp_async_commit();
    };

    pdl_launch_dependents();
    // The weights do not depend on the kernel ahead: fill the ring first.
#pragma unroll 1
    for (int k = 0; k < DEPTH; k++) request(k);
    if (MODE == 3) preload_token_slots(rc, 1, 1, slots);
    pdl_wait();
    {
        u32 dynamic;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic));
        if (dynamic < (u32)(QmvRing<F, RT>::BYTES + nb * 16 + cols)) __trap();  // host/kernel mismatch
    }
    if (i0 >= i1) return;
    const signed char* xq = nullptr;
    const float2* xs = nullptr;
    in_block_x<1, 2, SB>(x, nw, eps, 1, cols, qmma_smem + QmvRing<F, RT>::BYTES, xq, xs, inv, scratch);

    float acc[RT][1][4];
#pragma unroll
    for (int r = 0; r < RT; r++) acc[r][0][0] = acc[r][0][1] = acc[r][0][2] = acc[r][0][3] = 0.f;
    int k = 0;
    for (int item = i0; item < i1; item++) {
        for (int j = 0; j < per_item; j++, k++) {
            cp_async_wait<DEPTH - 1>();
            __syncwarp();
            const unsigned char* slot = ring + (k % DEPTH) * (RT * UNIT);
            uint4 cv[RT];
            ScaleVec cs[RT], cm[RT];
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const unsigned char* s = slot + r * UNIT;
                cv[r] = ((const uint4*)s)[lane];
                cs[r] = ((const ScaleVec*)(s + 512))[g];
                cm[r] = QFmt<F>::MIN ? ((const ScaleVec*)(s + 512 + SCB))[g] : cs[r];
            }
            __syncwarp();  // every lane has its words before the slot is refilled
            request(k + DEPTH);
            const int p = warp + QMMA_WARPS * j;
            if ((p + 1) * SB <= nb)
                unit_product<F, 1, RT, true, false>(acc, cv, cs, cm, p, nb, 1, cols, xq, xs, 2, g, t);
            else
                unit_product<F, 1, RT, true, true>(acc, cv, cs, cm, p, nb, 1, cols, xq, xs, 2, g, t);
        }
        item_epilogue<1, MODE, RT, true>(acc, red, item * 16, 1, bias, out, out_rows, half_rows, rc, slots);
    }
}

// Two blocks a SM at most: one of this product, one of the next.
#define QMV_KERNEL(F, MODE)                                                                                \
    extern "C" __global__ void __launch_bounds__(QMMA_THREADS, 2) qmv_##F##_##MODE(                        \
        const uint4* w, const u16* scales, const u16* mins, int units, int tiles, const float* x,             \
        const float* nw, float eps, int cols, const float* bias, float* out, int out_rows, int half_rows,     \
        RopeCtx rc) {                                                                                        \
        qmv_body<F, MODE>(w, scales, mins, units, tiles, x, nw, eps, cols, bias, out, out_rows, half_rows, rc); \
    }
#define QMV_MODES(F) QMV_KERNEL(F, 0) QMV_KERNEL(F, 1) QMV_KERNEL(F, 2) QMV_KERNEL(F, 3)
QMV_MODES(0)
QMV_MODES(1)
QMV_MODES(2)
QMV_MODES(3)
