// Decode attention on tensor cores for 16 query heads per KV group (ChatGLM2:
// 32 heads over 2 groups), head size 128, f16 cache. The group's 16 heads are
// the 16 rows of mma.sync m16n8k16, so every key and value is read from
// memory once for all of them (attention.cu's CUDA-core kernel reads a key
// once per 4 heads) and the arithmetic, 16× the bytes, stays off the critical
// path at long contexts.
//
// Each warp takes 16 keys at a time, straight from the cache into registers
// with no shared memory: the order of the 128 dimensions inside a k16 step
// is free (both operands use the same one), so lane (g, q) loads 16-byte
// chunks 4i+q of key row g and of key row g+8, and each warp instruction
// reads 64 whole bytes of 8 rows. For P·V the key order is fixed by the
// score fragments, but the output dimensions are free: lane (g, q) reads
// dims 8g..8g+7 and 64+8g..64+8g+7 of value rows 2q, 2q+1, 2q+8, 2q+9 (whole
// 128-byte lines per instruction) and pairs rows into B fragments with
// byte permutes; n-tile j then holds dims 8n+j (j < 8) or 64+8n+j−8 of its
// column n. Softmax runs on exp2 with Q pre-scaled by log2(e)/sqrt(D); the
// state goes back to natural logs for decode_finish.
//
// Each warp requests its next tile before computing the current one (two
// tiles, 16 KB, in flight per warp), and a block has 8 warps, so a few dozen
// blocks keep the memory busy: few splits, so merging them stays cheap.
//
// Launch: grid = (n_groups, work tokens, most splits), block = 256 (8 warps
// on interleaved 16-key tiles of the block's split; attn_decode_mma16_w4: 4
// warps, 128); block_tokens a multiple of 16. Splits and merging as
// attn_decode (decode.cuh), heads per block 16.
#define MMA_KEYS 16
#define MMA_WARPS 8
// 1: each warp's two tiles in flight through every wait (ping-pong tiles);
// 0: a copy of the next tile at the end of each (it waits for that tile's
// loads), for measurements.
#ifndef DECODE_PINGPONG
#define DECODE_PINGPONG 1
#endif
// 1: the running output and sum are rescaled only when some lane's running
// maximum moved (a warp vote); otherwise the factor is exp2(0) = 1 exactly,
// so the result is the same bits. After the first tiles of a long context the
// maximum rarely moves, and the 66 multiplies a tile were ~15% of its
// instructions. H200, 6B f16, two alternations: 8K 277.5 → 278.0 tok/s
// (run 58); 0 for measurements.
#ifndef DECODE_LAZY_RESCALE
#define DECODE_LAZY_RESCALE 1
#endif
// 1: each warp also starts its first two tiles towards L2 before waiting for
// the kernel ahead (0: only tiles 2 and 3, as the first two are loaded right
// after the wait). At short contexts those two are the whole context and
// their loads are most of the attention's chain (8.1 µs of a 55.5 µs int4
// layer, run 91); a prefetch is only a hint and L2 is where the kernel
// ahead's writes of this step's rows land, so no row is read stale. A
// measurement variant, not yet timed (written after session 14's device
// time was spent).
#ifndef DECODE_PREFETCH_FIRST
#define DECODE_PREFETCH_FIRST 0
#endif

__device__ __forceinline__ u32 word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Output dimension of column n of n-tile j (see above).
__device__ __forceinline__ int pv_dim(int j, int n) { return (j >> 3) * 64 + n * 8 + (j & 7); }

// The key chunks and value rows lane (gr, tq) needs of one 16-key tile.
struct KvTile {
    uint4 k[2][4], v[4][2];
};

// Tile at key `kb` of a context ending at k_end; zeros past the context
// (stale cache data, possibly NaN, must not reach P·V).
__device__ __forceinline__ void load_tile(KvTile& tile, const u64* table, int kb, int k_end, int block_tokens,
                                          long koff, long voff, int gr, int tq) {
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    const u16* blk = (const u16*)table[kb / block_tokens];
    const int tok0 = kb % block_tokens;
    const u16* kbase = blk + koff + (long)tok0 * DEC_D;
    const u16* vbase = blk + voff + (long)tok0 * DEC_D;
    const int nvalid = min(MMA_KEYS, k_end - kb);
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        const int key = nt * 8 + gr;
        const uint4* row = (const uint4*)(kbase + (long)key * DEC_D);
#pragma unroll
        for (int i = 0; i < 4; i++) tile.k[nt][i] = key < nvalid ? row[i * 4 + tq] : zero;
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int key = 2 * tq + (r & 1) + (r >> 1) * 8;
        const u16* row = vbase + (long)key * DEC_D + gr * 8;
        tile.v[r][0] = key < nvalid ? *(const uint4*)row : zero;
        tile.v[r][1] = key < nvalid ? *(const uint4*)(row + 64) : zero;
    }
}

// A warp's running maxima (log2 domain, rows gr and gr + 8) and sums (each
// lane's share: summed over the quad here) into a block's merge buffers, the
// maxima in natural logs.
__device__ __forceinline__ void store_softmax_state(float m0, float m1, float l0, float l1, float* m, float* l, int gr,
                                                    int tq) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    if (tq == 0) {
        const float ln2 = 0.6931471805599453f;
        m[gr] = m0 * ln2;
        m[gr + 8] = m1 * ln2;
        l[gr] = l0;
        l[gr + 8] = l1;
    }
}

// The A fragments of a group's 16 query rows at q (f32, head size 128),
// times qscale, in f16: k-step kc covers dims 8(4(kc/2)+q) + 4(kc%2) +
// {0,1} (a0, a1) and + {2,3} (a2, a3), rows = heads gr and gr + 8.
__device__ __forceinline__ void load_q_fragments(const float* q, float qscale, int gr, int tq, u32 (&qf)[8][4]) {
#pragma unroll
    for (int kc = 0; kc < 8; kc++) {
        const int d0 = ((kc >> 1) * 4 + tq) * 8 + (kc & 1) * 4;
        const float4 a = *(const float4*)(q + gr * DEC_D + d0);
        const float4 b = *(const float4*)(q + (gr + 8) * DEC_D + d0);
        qf[kc][0] = pack_f16(a.x * qscale, a.y * qscale);
        qf[kc][1] = pack_f16(b.x * qscale, b.y * qscale);
        qf[kc][2] = pack_f16(a.z * qscale, a.w * qscale);
        qf[kc][3] = pack_f16(b.z * qscale, b.w * qscale);
    }
}

// Tile `tile` (keys kb… of a context ending at k_end) into a warp's running
// softmax state (m, l: rows gr and gr + 8, log2 domain) and output fragments o.
__device__ __forceinline__ void mma_consume(const KvTile& tile, int kb, int k_end, const u32 (&qf)[8][4],
                                            float (&o)[16][4], float& m0, float& m1, float& l0, float& l1,
                                            int tq) {
    const int nvalid = min(MMA_KEYS, k_end - kb);

    float s[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < 8; kc++) {
            const uint4 v = tile.k[nt][kc >> 1];
            const u32 b[2] = {(kc & 1) ? v.z : v.x, (kc & 1) ? v.w : v.y};
            mma16816(s[nt], qf[kc], b);
        }
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (nt * 8 + 2 * tq + (e & 1) >= nvalid) s[nt][e] = -INFINITY;
    }
    // Key 0 of the tile is always valid, so the maxima are finite.
    float mx0 = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
    float mx1 = fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
#if DECODE_LAZY_RESCALE
    const bool rescale = __any_sync(0xffffffffu, mn0 != m0 || mn1 != m1);
#endif
    const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        s[nt][0] = exp2f(s[nt][0] - mn0);
        s[nt][1] = exp2f(s[nt][1] - mn0);
        s[nt][2] = exp2f(s[nt][2] - mn1);
        s[nt][3] = exp2f(s[nt][3] - mn1);
    }
#if DECODE_LAZY_RESCALE
    if (rescale) {
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            o[j][0] *= a0;
            o[j][1] *= a0;
            o[j][2] *= a1;
            o[j][3] *= a1;
        }
    }
    l0 += s[0][0] + s[0][1] + s[1][0] + s[1][1];
    l1 += s[0][2] + s[0][3] + s[1][2] + s[1][3];
#else
    l0 = l0 * a0 + (s[0][0] + s[0][1] + s[1][0] + s[1][1]);
    l1 = l1 * a1 + (s[0][2] + s[0][3] + s[1][2] + s[1][3]);
#endif
    const u32 pa[4] = {pack_f16(s[0][0], s[0][1]), pack_f16(s[0][2], s[0][3]), pack_f16(s[1][0], s[1][1]),
                       pack_f16(s[1][2], s[1][3])};
#pragma unroll
    for (int j = 0; j < 16; j++) {
#if !DECODE_LAZY_RESCALE
        o[j][0] *= a0;
        o[j][1] *= a0;
        o[j][2] *= a1;
        o[j][3] *= a1;
#endif
        const int hf = j >> 3, wi = (j & 7) >> 1;
        const u32 sel = (j & 1) ? 0x7632u : 0x5410u;
        const u32 b[2] = {__byte_perm(word_of(tile.v[0][hf], wi), word_of(tile.v[1][hf], wi), sel),
                          __byte_perm(word_of(tile.v[2][hf], wi), word_of(tile.v[3][hf], wi), sel)};
        mma16816(o[j], pa, b);
    }
}

template <int WARPS>
__device__ __forceinline__ void attn_decode_mma_body(const float* qkv, int width, float* out, int out_width,
                                                     const int* work_tokens, const int* positions,
                                                     const int* seq_of_token, const u64* block_table,
                                                     int max_blocks, int n_groups, int layer, int block_tokens,
                                                     float scale, float* part_o, float* part_ml, int* counters,
                                                     const ChainSync& chain) {
#if __CUDA_ARCH__ >= 800
    constexpr int HG = 16;
    // First the 8 → 4 warp merge's fragments, then decode_finish's DecodeReduce.
    constexpr int RAW_FLOATS = 4 * 68 * 32;
    constexpr int SMEM_BYTES =
        sizeof(DecodeReduce<HG>) > RAW_FLOATS * 4 ? sizeof(DecodeReduce<HG>) : RAW_FLOATS * 4;
    __shared__ __align__(16) unsigned char smem[SMEM_BYTES];
    DecodeReduce<HG>& red = *reinterpret_cast<DecodeReduce<HG>*>(smem);
    float* raw = reinterpret_cast<float*>(smem);
    const int g = blockIdx.x, wt = blockIdx.y, split = blockIdx.z, n_grid = gridDim.z;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    const int t = work_tokens[wt];
    const int ctx = positions[t] + 1;
    const int seq = seq_of_token[t];
    int k_begin, k_end;
    const int n_splits = decode_split(ctx, n_grid, split, &k_begin, &k_end);
    pdl_launch_dependents();
    if (split >= n_splits) return;
    const u64* table = block_table + (long)seq * max_blocks;
    constexpr int STEP = WARPS * MMA_KEYS;
    if (DECODE_PREFETCH_FIRST) {
        if (lane < MMA_KEYS && k_begin + w * MMA_KEYS + lane < k_end)
            prefetch_kv_row(table, k_begin + w * MMA_KEYS + lane, block_tokens, layer, n_groups, g);
        if (lane < MMA_KEYS && k_begin + STEP + w * MMA_KEYS + lane < k_end)
            prefetch_kv_row(table, k_begin + STEP + w * MMA_KEYS + lane, block_tokens, layer, n_groups, g);
    }
    if (lane < MMA_KEYS && k_begin + 2 * STEP + w * MMA_KEYS + lane < k_end)
        prefetch_kv_row(table, k_begin + 2 * STEP + w * MMA_KEYS + lane, block_tokens, layer, n_groups, g);
    if (lane < MMA_KEYS && k_begin + 3 * STEP + w * MMA_KEYS + lane < k_end)
        prefetch_kv_row(table, k_begin + 3 * STEP + w * MMA_KEYS + lane, block_tokens, layer, n_groups, g);
    const long per_group = (long)block_tokens * DEC_D;
    const long koff = ((long)(layer * 2 + 0) * n_groups + g) * per_group;
    const long voff = ((long)(layer * 2 + 1) * n_groups + g) * per_group;
    chain_wait(chain);
    // The cache rows of this step's tokens were written by the kernel before.
    // Two tiles a warp in flight from the start: ping-pong buffers, each
    // reloaded as soon as it is used (a copy nxt → cur would wait for nxt's
    // loads and leave one tile in flight).
    const int kb0 = k_begin + w * MMA_KEYS;
    KvTile ta, tb;
    if (kb0 < k_end) load_tile(ta, table, kb0, k_end, block_tokens, koff, voff, gr, tq);
    if (kb0 + STEP < k_end) load_tile(tb, table, kb0 + STEP, k_end, block_tokens, koff, voff, gr, tq);

    const float qscale = scale * 1.4426950408889634f;
    const float* q = qkv + (long)t * width + (long)g * HG * DEC_D;
    u32 qf[8][4];
    load_q_fragments(q, qscale, gr, tq, qf);

    float o[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    auto consume = [&](const KvTile& tile, int kb) { mma_consume(tile, kb, k_end, qf, o, m0, m1, l0, l1, tq); };
    if (DECODE_PINGPONG) {
        for (int kb = kb0; kb < k_end; kb += 2 * STEP) {
            // The two tiles after the ones loaded next start towards L2.
            if (lane < MMA_KEYS && kb + 4 * STEP + lane < k_end)
                prefetch_kv_row(table, kb + 4 * STEP + lane, block_tokens, layer, n_groups, g);
            if (lane < MMA_KEYS && kb + 5 * STEP + lane < k_end)
                prefetch_kv_row(table, kb + 5 * STEP + lane, block_tokens, layer, n_groups, g);
            consume(ta, kb);
            if (kb + 2 * STEP < k_end) load_tile(ta, table, kb + 2 * STEP, k_end, block_tokens, koff, voff, gr, tq);
            if (kb + STEP < k_end) {
                consume(tb, kb + STEP);
                if (kb + 3 * STEP < k_end) load_tile(tb, table, kb + 3 * STEP, k_end, block_tokens, koff, voff, gr, tq);
            }
        }
    } else {
        for (int kb = kb0; kb < k_end; kb += STEP) {
            if (lane < MMA_KEYS && kb + 2 * STEP + lane < k_end)
                prefetch_kv_row(table, kb + 2 * STEP + lane, block_tokens, layer, n_groups, g);
            consume(ta, kb);
            if (kb + STEP < k_end) ta = tb;
            if (kb + 2 * STEP < k_end) load_tile(tb, table, kb + 2 * STEP, k_end, block_tokens, koff, voff, gr, tq);
        }
    }

    // Warps 4-7 hand their state to warps 0-3 (the same fragment layout, so
    // lane for lane), which merge it into theirs.
    if (WARPS == 8 && w >= 4) {
        float* mine = raw + (w - 4) * 68 * 32 + lane;
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) mine[(j * 4 + e) * 32] = o[j][e];
        mine[64 * 32] = m0;
        mine[65 * 32] = m1;
        mine[66 * 32] = l0;
        mine[67 * 32] = l1;
    }
    if (WARPS == 8) __syncthreads();
    if (WARPS == 8 && w < 4) {
        const float* other = raw + w * 68 * 32 + lane;
        const float pm0 = other[64 * 32], pm1 = other[65 * 32];
        const float M0 = fmaxf(m0, pm0), M1 = fmaxf(m1, pm1);
        const float fa0 = m0 == -INFINITY ? 0.f : exp2f(m0 - M0), fb0 = pm0 == -INFINITY ? 0.f : exp2f(pm0 - M0);
        const float fa1 = m1 == -INFINITY ? 0.f : exp2f(m1 - M1), fb1 = pm1 == -INFINITY ? 0.f : exp2f(pm1 - M1);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            o[j][0] = o[j][0] * fa0 + other[(j * 4 + 0) * 32] * fb0;
            o[j][1] = o[j][1] * fa0 + other[(j * 4 + 1) * 32] * fb0;
            o[j][2] = o[j][2] * fa1 + other[(j * 4 + 2) * 32] * fb1;
            o[j][3] = o[j][3] * fa1 + other[(j * 4 + 3) * 32] * fb1;
        }
        l0 = l0 * fa0 + other[66 * 32] * fb0;
        l1 = l1 * fa1 + other[67 * 32] * fb1;
        m0 = M0;
        m1 = M1;
    }
    if (WARPS == 8) __syncthreads();
    if (w < 4) {
        store_softmax_state(m0, m1, l0, l1, red.m[w], red.l[w], gr, tq);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int d0 = pv_dim(j, 2 * tq), d1 = pv_dim(j, 2 * tq + 1);
            red.o[w][gr * DEC_D + d0] = o[j][0];
            red.o[w][gr * DEC_D + d1] = o[j][1];
            red.o[w][(gr + 8) * DEC_D + d0] = o[j][2];
            red.o[w][(gr + 8) * DEC_D + d1] = o[j][3];
        }
    }
    decode_finish<HG, HG>(red, out, out_width, t, wt, g, 0, 0, split, n_grid, n_splits, n_groups, part_o, part_ml,
                          counters);
#endif
}

extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)
    attn_decode_mma16(const float* qkv, int width, float* out, int out_width, const int* work_tokens,
                      const int* positions, const int* seq_of_token, const u64* block_table, int max_blocks,
                      int n_groups, int layer, int block_tokens, float scale, float* part_o, float* part_ml,
                      int* counters, ChainSync chain) {
    attn_decode_mma_body<MMA_WARPS>(qkv, width, out, out_width, work_tokens, positions, seq_of_token, block_table,
                                    max_blocks, n_groups, layer, block_tokens, scale, part_o, part_ml, counters, chain);
    chain_signal(chain);
}

// 4 warps: two blocks fit an SM, for steps of many sequences whose blocks
// already fill the device without splitting their (short) contexts.
extern "C" __global__ void __launch_bounds__(128)
    attn_decode_mma16_w4(const float* qkv, int width, float* out, int out_width, const int* work_tokens,
                         const int* positions, const int* seq_of_token, const u64* block_table, int max_blocks,
                         int n_groups, int layer, int block_tokens, float scale, float* part_o, float* part_ml,
                         int* counters, ChainSync chain) {
    attn_decode_mma_body<4>(qkv, width, out, out_width, work_tokens, positions, seq_of_token, block_table,
                            max_blocks, n_groups, layer, block_tokens, scale, part_o, part_ml, counters, chain);
    chain_signal(chain);
}
