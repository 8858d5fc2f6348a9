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
// Each warp streams its own units (a ring of groups of QMV_GROUP
// tile-units, cp.async, one commit group a group), so no block barrier sits
// in the stream; the warps of
// a block take interleaved units of the same item (a 16-row tile; SwiGLU: a
// gate tile with its up tile), whose sums meet in item_epilogue. Items are
// dealt to blocks in equal contiguous runs. The arithmetic is qmma's
// one-token path (unit_product<ONE>), the activations are quantized in the
// block as there (in_block_x), so results equal qmma's bit for bit under
// QMMA_ONE_COLS=0 (qmma's default one-token path sums a row's blocks in
// another order: equal to rounding).
//
// Measured (H200, runs 88–90): slower than qmma's own, so opt-in
// (CHATGLM_QMV=1). Alone, each product streams at 1.3–3.2 TB/s against
// qmma's 1.5–4.1 (logits 49.9 against 36.7 µs); within decode steps
// q4_0 359–380 against 481–502 tok/s — the chain costs ~25 µs a layer more
// than the products alone, so co-resident blocks did not buy the overlap
// they were built for (one guess not yet checked: with room for two blocks
// a SM, the scheduler may place two of the same product on one SM).

// Row `row` of an item (thread row % 16 of the block): the warps' sums
// added in warp order (as item_epilogue does) and written as MODE says.
template <int MODE, int RT>
__device__ __forceinline__ void qmv_item_out(const float (*rb)[RT * 16], int row, const float* __restrict__ bias,
                                             float* __restrict__ out, int out_rows, int half_rows, const RopeCtx& rc,
                                             TokenSlot slot) {
    const int rr = row % 16;
    float a = 0.f;
#pragma unroll
    for (int v = 0; v < QMMA_WARPS; v++) a += rb[v][rr];
    if (MODE == 2) {
        if (row < half_rows) {
            float b = 0.f;
#pragma unroll
            for (int v = 0; v < QMMA_WARPS; v++) b += rb[v][RT * 16 - 16 + rr];
            out[row] = silu(a) * b;
        }
    } else if (MODE == 3) {
        if (row < out_rows) {
            float b = 0.f;
#pragma unroll
            for (int v = 0; v < QMMA_WARPS; v++) b += rb[v][rr ^ 1];
            qkv_epilogue_at(rc, slot, out, out_rows, 0, row, a + (bias ? bias[row] : 0.f),
                            b + (bias ? bias[row ^ 1] : 0.f));
        }
    } else if (row < out_rows) {
        if (MODE == 0) out[row] = a + (bias ? bias[row] : 0.f);
        else out[row] += a;
    }
}

// Shared memory for a block's weight ring (the host mirrors it: quant_stream.rs
// ring_bytes).
#ifndef QMV_RING_KB
#define QMV_RING_KB 72
#endif
// Tile-units a warp works on at once (SwiGLU: half as many units, each a
// gate and an up tile): their loads and mmas are independent, so a warp's
// latency (shared-memory load → mma → scaling) is paid once for all of them.
// One unit at a time, two warps a scheduler streamed 1.2–2.5 TB/s (run 89).
#ifndef QMV_GROUP
#define QMV_GROUP 4
#endif

template <int F> struct QmvUnit {
    static constexpr int SCB = 32 * QFmt<F>::BLOCKS;  // scale bytes a unit: 16 rows × blocks × f16
    static constexpr int BYTES = 512 + SCB * (QFmt<F>::MIN ? 2 : 1);
};

template <int F, int RT> struct QmvRing {
    static constexpr int G = QMV_GROUP / RT;  // units a group
    static constexpr int GROUP_BYTES = G * RT * QmvUnit<F>::BYTES;
    static constexpr int GROUPS = QMV_RING_KB * 1024 / (QMMA_WARPS * GROUP_BYTES);  // groups a warp's ring
    static constexpr int BYTES = QMMA_WARPS * GROUPS * GROUP_BYTES;
    static_assert(QMV_GROUP % 2 == 0 && G >= 1, "QMV_GROUP must be even");
    static_assert(GROUPS >= 2, "QMV_RING_KB too small for two groups a warp");
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
    constexpr int G = QmvRing<F, RT>::G, GROUPS = QmvRing<F, RT>::GROUPS, GB = QmvRing<F, RT>::GROUP_BYTES;
    typedef typename QScale<F>::type ScaleVec;
    extern __shared__ __align__(16) unsigned char qmma_smem[];
    // The warps' sums of an item, double-buffered so that one barrier an
    // item suffices: item i + 2 writes buffer i & 1 only after every warp
    // passed item i + 1's barrier, which the threads reducing item i reach
    // after their reads.
    __shared__ float red[2][QMMA_WARPS][RT * 16];
    __shared__ float inv[8], scratch[QMMA_WARPS * 8];
    __shared__ TokenSlot slots[1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nb = cols / 32;
    const int items = MODE == 2 ? half_rows / 16 : tiles;
    const int i0 = (int)((long)blockIdx.x * items / gridDim.x);
    const int i1 = (int)((long)(blockIdx.x + 1) * items / gridDim.x);
    // This warp's units of every item: warp, warp + 8, …, in groups of G.
    const int per_item = warp < units ? (units - 1 - warp) / QMMA_WARPS + 1 : 0;
    const int groups_per_item = (per_item + G - 1) / G;
    const int total = (i1 - i0) * groups_per_item;
    unsigned char* ring = qmma_smem + warp * (GROUPS * GB);

    // Group k of this warp's stream into its ring slot, one commit group a
    // group (empty past the end), so that waiting for GROUPS − 1 commit
    // groups means group k has landed.
    int req_item = i0, req_j = 0;  // the next group to request: item, first unit index
    auto request = [&](int k) {
        if (k < total) {
            unsigned char* slot = ring + (k % GROUPS) * GB;
#pragma unroll
            for (int u = 0; u < G; u++) {
                if (req_j + u >= per_item) break;
                const int p = warp + QMMA_WARPS * (req_j + u);
#pragma unroll
                for (int r = 0; r < RT; r++) {
                    const long tu = (long)(r ? req_item + half_rows / 16 : req_item) * units + p;
                    unsigned char* d = slot + (u * RT + r) * UNIT;
                    cp_async16(d + lane * 16, (const char*)w + tu * 512 + lane * 16, true);
                    if (lane < SCB / 16) {
                        cp_async16(d + 512 + lane * 16, (const char*)scales + tu * SCB + lane * 16, true);
                        if (QFmt<F>::MIN)
                            cp_async16(d + 512 + SCB + lane * 16, (const char*)mins + tu * SCB + lane * 16, true);
                    }
                }
            }
            req_j += G;
            if (req_j >= per_item) {
                req_j = 0;
                req_item++;
            }
        }
        cp_async_commit();
    };

    pdl_launch_dependents();
    // The weights do not depend on the kernel ahead: fill the ring first.
#pragma unroll 1
    for (int k = 0; k < GROUPS; k++) request(k);
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
        for (int j0 = 0; j0 < per_item; j0 += G, k++) {
            cp_async_wait<GROUPS - 1>();
            __syncwarp();
            const unsigned char* slot = ring + (k % GROUPS) * GB;
            uint4 cv[G][RT];
            ScaleVec cs[G][RT], cm[G][RT];
#pragma unroll
            for (int u = 0; u < G; u++)
#pragma unroll
                for (int r = 0; r < RT; r++) {
                    const unsigned char* s = slot + (u * RT + r) * UNIT;
                    cv[u][r] = ((const uint4*)s)[lane];
                    cs[u][r] = ((const ScaleVec*)(s + 512))[g];
                    cm[u][r] = QFmt<F>::MIN ? ((const ScaleVec*)(s + 512 + SCB))[g] : cs[u][r];
                }
            __syncwarp();  // every lane has its words before the slot is refilled
            request(k + GROUPS);
            if (j0 + G <= per_item && (warp + QMMA_WARPS * (j0 + G - 1) + 1) * SB <= nb) {
#pragma unroll
                for (int u = 0; u < G; u++)
                    unit_product<F, 1, RT, true, false>(acc, cv[u], cs[u], cm[u], warp + QMMA_WARPS * (j0 + u), nb,
                                                        1, cols, xq, xs, 2, g, t);
            } else {
#pragma unroll
                for (int u = 0; u < G; u++) {
                    if (j0 + u >= per_item) break;
                    unit_product<F, 1, RT, true, true>(acc, cv[u], cs[u], cm[u], warp + QMMA_WARPS * (j0 + u), nb, 1,
                                                       cols, xq, xs, 2, g, t);
                }
            }
        }
        // The item's sums: column 0 of each mma (lanes t = 0) into this
        // warp's row of the buffer, then 16 threads add the warps' rows.
        float(*rb)[RT * 16] = red[item & 1];
        if (t == 0) {
#pragma unroll
            for (int r = 0; r < RT; r++) {
                rb[warp][r * 16 + g] = acc[r][0][0];
                rb[warp][r * 16 + g + 8] = acc[r][0][2];
            }
        }
#pragma unroll
        for (int r = 0; r < RT; r++) acc[r][0][0] = acc[r][0][1] = acc[r][0][2] = acc[r][0][3] = 0.f;
        __syncthreads();
        if (threadIdx.x < 16) qmv_item_out<MODE, RT>(rb, item * 16 + threadIdx.x, bias, out, out_rows, half_rows, rc,
                                                     slots[0]);
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
