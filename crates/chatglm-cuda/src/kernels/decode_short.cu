// Decode attention for short contexts (the step's longest at most
// CHATGLM_DECODE_SHORT keys), 16 query heads per KV group, head size 128,
// f16 cache: one block of 8 warps per (token, group), no splits.
//
// Why a second kernel: in a batch-1 decode step of a quantized model the
// attention of a short context cost ~10.7 µs of a ~78 µs layer (q8_0, run
// 125: leaving it out of every step, 453 → 525 tok/s) for a few kilobytes of
// keys. Timed alone (run 128, no PDL) the tensor-core kernel takes 7.9 µs:
// its working warps run ~1,000 instructions each at ~10 cycles an issue
// (one warp's chain of dependent loads, mma and shuffles), most of them in
// the end — the unrolled 8 → 4 warp merge and decode_finish, which
// recomputes each head's maximum, sum and 4–8 exponentials for every one of
// its 2,048 outputs. Here: no splits (nothing to merge across blocks), every
// row of the context started towards L2 and the block table read before the
// wait, two tiles a warp in flight with the query, each warp's fragments
// stored as 16-byte rows, each (head, warp) weight exp(m_w − M)/L computed
// once by its own thread, and the outputs summed as float4s.
//
// Launch: grid = (n_groups · subs, work tokens), block = 256, subs (1, 2,
// 4, 8 or 16) blocks a group, each the group's whole context for 16 / subs
// of its heads; short_smem_bytes(16 / subs) bytes of dynamic shared memory
// (ShortReduce with that many heads' outputs). More blocks a group shorten
// the end of each (the warps' outputs merged and written for fewer heads)
// at the price of every block reading the group's keys. qout (one work
// token only; else null): the output also as q8_0 codes for the dense
// product after it (quantize_out4).
// The most warps a block (its shared memory is sized for them); a launch
// may take fewer (blockDim.x = 32 · warps, 4 or 8).
#define SHORT_WARPS 8
// 1 (measurements): thread 0 of block (0, 0) prints %globaltimer at entry,
// after the wait, after its tile steps, after each merge barrier and at the
// end, in layer 3 of steps whose context is a multiple of 16 (run 131).
// 0 (measurements): no row of the context is started towards L2 before the
// wait — at 32 sequences those 8 MB of requests land while the QKV product's
// split groups publish and sum their parts (run 287's stamps: ~2 µs a part).
#ifndef SHORT_PREFETCH
#define SHORT_PREFETCH 1
#endif
// 1: a warp's first two tiles of settled rows loaded before the wait
// (below); 2: and the later tiles' rows requested again after it; 0: every
// tile after the wait (measurements).
#ifndef SHORT_EARLY_TILES
#define SHORT_EARLY_TILES 1
#endif
#ifndef SHORT_STAMPS
#define SHORT_STAMPS 0
#endif
// SHORT_STAMPS=2 (measurements): every block of this layer prints its absolute
// start and phases, for alignment with the grouped products' stamps
// (QMMG_STAMPS with QMMG_STAMP_STEP / QMMG_STAMP_LAYER, which assume 28 layers).
#ifndef SHORT_STAMP_LAYER
#define SHORT_STAMP_LAYER 3
#endif

__device__ __forceinline__ unsigned long long short_now() {
    unsigned long long t = 0;
#if SHORT_STAMPS
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
#endif
    return t;
}

struct ShortReduce {
    float m[SHORT_WARPS][16], l[SHORT_WARPS][16];
    // Each warp's share of a head's output: exp(m_w − M) / L.
    float wt[SHORT_WARPS][16];
    // [warp][head of the block][DEC_D]: only the block's heads (16 / subs)
    // are stored, packed, so the launch asks for less with more subs.
    __align__(16) float o[SHORT_WARPS][16 * DEC_D];
};
// The launch asks for DECODE_SHORT_SMEM (ops.rs) bytes: this size.
static_assert(sizeof(ShortReduce) == SHORT_WARPS * (3 * 16 + 16 * DEC_D) * 4, "DECODE_SHORT_SMEM");

// qmma.cu's X_MAGIC (1.5·2²³ as f32 bits), which this file is compiled without.
#define SHORT_X_MAGIC 0x4B400000

// Four values of the 8 consecutive lanes holding a q8_0 block of 32,
// quantized exactly as quantize_block32 does (d = max|v| / 127): their codes
// as a word; the block's d (rounded to f16) and Σq to every lane.
__device__ __forceinline__ u32 quantize4_of_block(float4 v, float& d16, int& sum) {
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f;
    const float id = d != 0.f ? 1.0f / d : 0.f;
    const int q[4] = {(int)roundf(v.x * id), (int)roundf(v.y * id), (int)roundf(v.z * id), (int)roundf(v.w * id)};
    sum = q[0] + q[1] + q[2] + q[3];
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    d16 = f16_to_f32(f32_to_f16(d));
    u32 word = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) word |= ((u32)(q[k] & 0xff)) << (8 * k);
    return word;
}

// Four outputs (columns c..c+3 of the one token's row of `cols`) into the
// q8_0 block they belong to, as qmma.cu's one_token_x reads a one-token
// product's input handed over already quantized: (dx, Σq) of block b at
// float2 2b, the codes from byte 16·(cols / 32) + c. The 8 lanes of a block
// are consecutive (every lane of the warp calls it); the values are
// quantized exactly as quantize_block32 does (d = max|v| / 127).
__device__ __forceinline__ void quantize_out4(float4 v, unsigned char* qout, int cols, int c) {
    float d;
    int sum;
    *(u32*)(qout + (cols / 32) * 16 + c) = quantize4_of_block(v, d, sum);
    if (c % 32 == 0) ((float2*)qout)[c / 32 * 2] = make_float2(d, __int_as_float(sum));
}

// The same four outputs of token t in quantize_x's form for a grouped
// product of the step (qmma.cu; the attention's hand-off of a batched
// step): form 1, q8_0 codes at qout[t][cols] and (dx, Σq) of block b at
// qs[b·stride + t], q4_0's offset folded (X_MAGIC − off·Σq) as quantize_x
// folds it; 2, f16 values in the order the f16 products read them
// (quantize_x's hx layout).
__device__ __forceinline__ void quantize_out4_step(float4 v, unsigned char* qout, float2* qs, int form, int stride,
                                                   int off, int cols, int t, int c) {
    const int i = (c & 31) >> 2;  // the float4 of the block
    if (form >= 2) {
        u16* row = (u16*)qout + (long)t * cols + (c & ~31);
        const u32 lo = (u32)f32_to_f16(v.x) | ((u32)f32_to_f16(v.z) << 16);
        const u32 hi = (u32)f32_to_f16(v.y) | ((u32)f32_to_f16(v.w) << 16);
        ((uint2*)row)[(i & 3) * 2 + (i >> 2)] = make_uint2(lo, hi);
        return;
    }
    float d;
    int sum;
    *(u32*)(qout + (long)t * cols + c) = quantize4_of_block(v, d, sum);
    if ((c & 31) == 0) qs[(c >> 5) * stride + t] = make_float2(d, __int_as_float(off ? SHORT_X_MAGIC - off * sum : sum));
}

extern "C" __global__ void __launch_bounds__(SHORT_WARPS * 32)
    attn_decode_short16(const float* qkv, int width, float* out, int out_width, const int* work_tokens,
                        const int* positions, const int* seq_of_token, const u64* block_table, int max_blocks,
                        int n_groups, int layer, int block_tokens, float scale, unsigned char* qout, float2* qs,
                        int qform, int qstride, int qoff) {
#if __CUDA_ARCH__ >= 800
    constexpr int HG = 16;
    const int nw = blockDim.x >> 5, STEP = nw * MMA_KEYS;
    extern __shared__ __align__(16) unsigned char short_smem[];
    ShortReduce& red = *reinterpret_cast<ShortReduce*>(short_smem);
    const int subs = gridDim.x / n_groups, hb = HG / subs;
    const int g = blockIdx.x / subs, h0 = blockIdx.x % subs * hb, wt = blockIdx.y;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, gr = lane >> 2, tq = lane & 3;
    float* const red_o = &red.o[0][0];  // [nw][hb][DEC_D]
    const unsigned long long t0 = short_now();
    const int t = work_tokens[wt];
    const int ctx = positions[t] + 1;
    const u64* table = block_table + (long)seq_of_token[t] * max_blocks;
    pdl_launch_dependents();
    // The rows of earlier steps are settled; this step's (the last) lands
    // in L2 when the kernel ahead writes it, so a prefetch cannot go stale.
    if (SHORT_PREFETCH)
        for (int kb = w * MMA_KEYS; kb < ctx; kb += STEP)
            if (lane < MMA_KEYS && kb + lane < ctx) prefetch_kv_row(table, kb + lane, block_tokens, layer, n_groups, g);
    const long per_group = (long)block_tokens * DEC_D;
    const long koff = ((long)(layer * 2 + 0) * n_groups + g) * per_group;
    const long voff = ((long)(layer * 2 + 1) * n_groups + g) * per_group;
    const float qscale = scale * 1.4426950408889634f;
    const float* q = qkv + (long)t * width + (long)g * HG * DEC_D;
    KvTile ta, tb;
    const int kb0 = w * MMA_KEYS;
#if SHORT_EARLY_TILES
    // A warp's first two tiles of settled rows in registers before the wait:
    // a block enters up to ~240 µs before it (run 302) and the rows it
    // started towards L2 are evicted again by then (32 int4 sequences +1.8%,
    // run 303). Settled: the rows below a sequence's first token of the step
    // (its tokens are consecutive, in order) — for that first token all but
    // its own; a later token of the same sequence reads none early. The
    // step's own rows are the kernel ahead's to write, so a tile holding
    // one is read again, whole, after the wait.
    const int settled = t == 0 || seq_of_token[t - 1] != seq_of_token[t] ? ctx - 1 : 0;
    if (kb0 < settled) load_tile(ta, table, kb0, settled, block_tokens, koff, voff, gr, tq);
    if (kb0 + STEP < settled) load_tile(tb, table, kb0 + STEP, settled, block_tokens, koff, voff, gr, tq);
    pdl_wait();
    const unsigned long long t1 = short_now();
#if SHORT_EARLY_TILES >= 2
    // The later tiles' rows requested again (their early requests are gone too).
    for (int kb = kb0 + 2 * STEP; kb < ctx; kb += STEP)
        if (lane < MMA_KEYS && kb + lane < ctx) prefetch_kv_row(table, kb + lane, block_tokens, layer, n_groups, g);
#endif
    if (kb0 < ctx && kb0 + MMA_KEYS > settled) load_tile(ta, table, kb0, ctx, block_tokens, koff, voff, gr, tq);
    if (kb0 + STEP < ctx && kb0 + STEP + MMA_KEYS > settled)
        load_tile(tb, table, kb0 + STEP, ctx, block_tokens, koff, voff, gr, tq);
#else
    pdl_wait();
    const unsigned long long t1 = short_now();
    // Both of a warp's first two tiles in flight with the query.
    if (kb0 < ctx) load_tile(ta, table, kb0, ctx, block_tokens, koff, voff, gr, tq);
    if (kb0 + STEP < ctx) load_tile(tb, table, kb0 + STEP, ctx, block_tokens, koff, voff, gr, tq);
#endif
    u32 qf[8][4];
    // All 16 rows, the block's heads or not (a row's scores and outputs
    // depend on its own query only; the others are not stored).
    load_q_fragments(q, qscale, gr, tq, qf);
    float o[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
#pragma unroll 1
    for (int kb = kb0; kb < ctx; kb += 2 * STEP) {
        if (kb != kb0) load_tile(ta, table, kb, ctx, block_tokens, koff, voff, gr, tq);
        if (kb != kb0 && kb + STEP < ctx) load_tile(tb, table, kb + STEP, ctx, block_tokens, koff, voff, gr, tq);
        mma_consume(ta, kb, ctx, qf, o, m0, m1, l0, l1, tq);
        if (kb + STEP < ctx) mma_consume(tb, kb + STEP, ctx, qf, o, m0, m1, l0, l1, tq);
    }
    // (Reading o makes the stamp wait for the tile steps.)
    const unsigned long long t2 = short_now() + (unsigned long long)(o[0][0] == 12345.f);
    store_softmax_state(m0, m1, l0, l1, red.m[w], red.l[w], gr, tq);
    // Fragment j of column n holds output dim pv_dim(j, n): j, j+1, j+2, j+3
    // (j % 4 == 0) are four consecutive dims, one 16-byte store; only the
    // block's heads h0..h0 + hb.
#pragma unroll
    for (int j = 0; j < 16; j += 4) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = gr + (e >> 1) * 8 - h0, d = pv_dim(j, 2 * tq + (e & 1));
            if ((unsigned)row < (unsigned)hb)
                *(float4*)&red_o[(w * hb + row) * DEC_D + d] =
                    make_float4(o[j][e], o[j + 1][e], o[j + 2][e], o[j + 3][e]);
        }
    }
    __syncthreads();
    const unsigned long long t3 = short_now();
    // Thread (head hh, warp k) of the first nw·hb: warp k's share of head hh
    // (warps without keys have m = −∞ and add nothing; warp 0 has key 0).
    // (Whole warps enter for the shuffles; with one or two heads a block
    // the last lanes work on a copy of its first head and write nothing.)
    if (tid < ((nw * hb + 31) & ~31)) {
        const int hh = h0 + (tid < nw * hb ? tid / nw : 0), k = tid % nw;
        float M = -INFINITY;
#pragma unroll
        for (int i = 0; i < SHORT_WARPS; i++)
            if (i < nw) M = fmaxf(M, red.m[i][hh]);
        const float mk = red.m[k][hh];
        const float f = mk == -INFINITY ? 0.f : expf(mk - M);
        float L = red.l[k][hh] * f;
#pragma unroll
        for (int s = 1; s < SHORT_WARPS; s <<= 1)
            if (s < nw) L += __shfl_xor_sync(0xffffffffu, L, s);
        if (tid < nw * hb) red.wt[k][hh] = f / L;
    }
    __syncthreads();
    const unsigned long long t4 = short_now();
    // 4-dim groups (two a thread with 16 heads), summed over the warps in
    // order. Whole warps enter (hb·32 threads or more), as the quantizers'
    // shuffles need.
    const int first = g * HG * DEC_D + h0 * DEC_D;  // the block's first output
#pragma unroll 1
    for (int i = tid; i < hb * DEC_D / 4; i += blockDim.x) {
        const int hh = h0 + i * 4 / DEC_D;
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int k = 0; k < SHORT_WARPS; k++) {
            if (k == nw) break;
            const float f = red.wt[k][hh];
            const float4 v = *(const float4*)&red_o[k * hb * DEC_D + i * 4];
            acc.x += v.x * f;
            acc.y += v.y * f;
            acc.z += v.z * f;
            acc.w += v.w * f;
        }
        *(float4*)(out + (long)t * out_width + first + i * 4) = acc;
        if (qout && qform == 0) quantize_out4(acc, qout, out_width, first + i * 4);
        else if (qout) quantize_out4_step(acc, qout, qs, qform, qstride, qoff, out_width, t, first + i * 4);
    }
    // The q8_0 form's scales of the padding tokens (the step's tokens are
    // 0..gridDim.y − 1): zero, with the folded offset, as quantize_x writes them.
    if (qout && qform == 1 && wt == 0)
        for (int e = tid; e < hb * DEC_D / 32 * (qstride - (int)gridDim.y); e += blockDim.x) {
            const int b = first / 32 + e % (hb * DEC_D / 32), tt = gridDim.y + e / (hb * DEC_D / 32);
            qs[b * qstride + tt] = make_float2(0.f, __int_as_float(qoff ? SHORT_X_MAGIC : 0));
        }
    // SHORT_STAMPS=2: every block of layer SHORT_STAMP_LAYER, absolute start (see its define).
    if (SHORT_STAMPS == 2 && tid == 0 && layer == SHORT_STAMP_LAYER && ctx % 16 == 0) {
        __threadfence();
        const unsigned long long t5 = short_now();
        printf("SHS g %d wt %d ctx %d t0 %llu wait %llu tiles %llu merge1 %llu merge2 %llu out %llu\n", g, wt, ctx, t0,
               t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4);
    }
    if (SHORT_STAMPS == 1 && tid == 0 && g == 0 && wt == 0 && layer == 3 && ctx % 16 == 0) {
        __threadfence();
        const unsigned long long t5 = short_now();
        printf("short stamps ctx %d: start %llu wait +%llu tiles +%llu merge1 +%llu merge2 +%llu out +%llu ns\n", ctx,
               t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4);
    }
#endif
}
