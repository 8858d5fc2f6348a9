// RoPE + KV append, and attention over a paged KV cache.
//
// Cache layout: a block holds `block_tokens` consecutive positions of one
// sequence for every layer: [layer][k|v][group][token][dim], elements f32
// (KV = 0) or f16 (KV = 1). A step's block table holds, per sequence, the
// device address of each of its blocks (row `seq`, `max_blocks` wide).
// Multi-query attention: query head h reads KV group h / (n_heads / n_groups).

// Rotates the query heads and key groups of each token in place (interleaved
// pairs over the first half of each head, angle = position · inv_freq[i] in
// f32, as the CPU table), then writes the token's keys and values into its
// cache block. grid = tokens, block = 128.
template <int KV>
__device__ __forceinline__ void rope_kv_body(float* qkv, int width, const int* positions, const int* seq_of_token,
                                             const u64* block_table, int max_blocks, const float* inv_freq,
                                             int n_pairs, int n_heads, int n_groups, int head_dim, int layer,
                                             int block_tokens) {
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<KV>::storage S;
    const int t = blockIdx.x;
    float* row = qkv + (long)t * width;
    const int pos = positions[t];
    const int n_rot = (n_heads + n_groups) * n_pairs;
    for (int i = threadIdx.x; i < n_rot; i += blockDim.x) {
        const int h = i / n_pairs, p = i % n_pairs;
        float* v = row + h * head_dim + 2 * p;
        const float angle = (float)pos * inv_freq[p];
        float s, c;
        sincosf(angle, &s, &c);
        const float x0 = v[0], x1 = v[1];
        v[0] = x0 * c - x1 * s;
        v[1] = x1 * c + x0 * s;
    }
    __syncthreads();
    const int seq = seq_of_token[t];
    S* blk = (S*)block_table[(long)seq * max_blocks + pos / block_tokens];
    const int tok = pos % block_tokens;
    const long per_group = (long)block_tokens * head_dim;
    const float* k = row + n_heads * head_dim;
    const float* v = k + n_groups * head_dim;
    for (int i = threadIdx.x; i < n_groups * head_dim; i += blockDim.x) {
        const int g = i / head_dim, d = i % head_dim;
        const long koff = ((long)(layer * 2 + 0) * n_groups + g) * per_group + (long)tok * head_dim + d;
        const long voff = ((long)(layer * 2 + 1) * n_groups + g) * per_group + (long)tok * head_dim + d;
        Elem<KV>::store(blk, koff, k[i]);
        Elem<KV>::store(blk, voff, v[i]);
    }
}

#define ROPE_KV(KV)                                                                                        \
    extern "C" __global__ void rope_kv_##KV(float* qkv, int width, const int* positions,                   \
                                            const int* seq_of_token, const u64* block_table, int max_blocks,\
                                            const float* inv_freq, int n_pairs, int n_heads, int n_groups,  \
                                            int head_dim, int layer, int block_tokens) {                    \
        rope_kv_body<KV>(qkv, width, positions, seq_of_token, block_table, max_blocks, inv_freq, n_pairs,   \
                         n_heads, n_groups, head_dim, layer, block_tokens);                                 \
    }
ROPE_KV(0)
ROPE_KV(1)

// Split-context attention for any number of query tokens (decode, and the
// exact path for f32 caches): one block per (KV group, query token, split of
// the context). The group's HG query heads share every key and value read
// from the cache (read once, converted once). Keys go through shared memory
// in tiles of TK; online softmax per head. With one split the block writes
// the normalised output; otherwise unnormalised partials (acc, max, sum) that
// attn_combine merges with a log-sum-exp reduction.
//
// Launch: grid = (n_groups, work tokens, n_splits), block = 128, dynamic
// shared memory = (HG·D + HG·TK + TK·(D+4) + 3·HG) floats. Needs D % 4 == 0,
// D ≤ 256, HG ≤ 32, `chunk` and `block_tokens` multiples of TK (host-checked).
#define ATT_THREADS 128
#define MAX_HG 32

template <int KV>
__device__ __forceinline__ void attn_split_body(const float* qkv, int width, float* out, int out_width,
                                                const int* work_tokens, const int* positions,
                                                const int* seq_of_token, const u64* block_table, int max_blocks,
                                                int n_heads, int n_groups, int D, int layer, int block_tokens,
                                                int TK, int chunk, float scale, float* part_o, float* part_ml) {
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<KV>::storage S;
    extern __shared__ float4 smem4[];
    float* smem = (float*)smem4;
    const int HG = n_heads / n_groups;
    const int g = blockIdx.x, wt = blockIdx.y, split = blockIdx.z, n_splits = gridDim.z;
    const int t = work_tokens[wt];
    const int ctx = positions[t] + 1;
    const int seq = seq_of_token[t];
    const int KS = D + 4;  // padded row: conflict-free 16-byte reads down a column of keys
    float* qs = smem;                 // [HG][D], pre-scaled
    float* ss = qs + HG * D;          // [HG][TK]
    float* kv = ss + HG * TK;         // [TK][KS]
    float* mls = kv + TK * KS;        // max[HG], sum[HG], alpha[HG]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int i = tid; i < HG * D; i += ATT_THREADS) qs[i] = qkv[(long)t * width + (long)g * HG * D + i] * scale;
    for (int h = tid; h < HG; h += ATT_THREADS) { mls[h] = -INFINITY; mls[HG + h] = 0.f; }
    float acc[2][MAX_HG];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int h = 0; h < MAX_HG; h++) acc[a][h] = 0.f;
    __syncthreads();

    const int k_begin = split * chunk;
    const int k_end = min(ctx, k_begin + chunk);
    const long per_group = (long)block_tokens * D;
    for (int k0 = k_begin; k0 < k_end; k0 += TK) {
        const int nk = min(TK, k_end - k0);
        const S* blk = (const S*)block_table[(long)seq * max_blocks + k0 / block_tokens];
        const int tok0 = k0 % block_tokens;
        const S* kb = blk + ((long)(layer * 2 + 0) * n_groups + g) * per_group + (long)tok0 * D;
        const S* vb = blk + ((long)(layer * 2 + 1) * n_groups + g) * per_group + (long)tok0 * D;
        for (int i = tid; i < nk * D; i += ATT_THREADS) kv[(i / D) * KS + i % D] = Elem<KV>::load(kb, i);
        __syncthreads();
        // Scores: thread owns key j for heads h0, h0 + hstep, ...
        for (int i = tid; i < HG * TK; i += ATT_THREADS) {
            const int h = i / TK, j = i % TK;
            float s = -INFINITY;
            if (j < nk) {
                s = 0.f;
                const float4* k4 = (const float4*)(kv + j * KS);
                const float4* q4 = (const float4*)(qs + h * D);
                for (int d = 0; d < D / 4; d++) {
                    const float4 a = k4[d], b = q4[d];
                    s = fmaf(a.x, b.x, s); s = fmaf(a.y, b.y, s); s = fmaf(a.z, b.z, s); s = fmaf(a.w, b.w, s);
                }
            }
            ss[h * TK + j] = s;
        }
        __syncthreads();
        for (int h = warp; h < HG; h += ATT_THREADS / 32) {
            float mx = -INFINITY;
            for (int j = lane; j < nk; j += 32) mx = fmaxf(mx, ss[h * TK + j]);
            mx = warp_max(mx);
            const float m_old = mls[h];
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.f;
            for (int j = lane; j < TK; j += 32) {
                const float p = j < nk ? expf(ss[h * TK + j] - m_new) : 0.f;
                ss[h * TK + j] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float alpha = expf(m_old - m_new);
                mls[h] = m_new;
                mls[HG + h] = mls[HG + h] * alpha + sum;
                mls[2 * HG + h] = alpha;
            }
        }
        __syncthreads();
        for (int i = tid; i < nk * D; i += ATT_THREADS) kv[(i / D) * KS + i % D] = Elem<KV>::load(vb, i);
        __syncthreads();
#pragma unroll
        for (int a = 0; a < 2; a++) {
            const int d = tid + a * ATT_THREADS;
            if (d < D) {
#pragma unroll
                for (int h = 0; h < MAX_HG; h++)
                    if (h < HG) acc[a][h] *= mls[2 * HG + h];
                for (int j = 0; j < nk; j++) {
                    const float v = kv[j * KS + d];
#pragma unroll
                    for (int h = 0; h < MAX_HG; h++)
                        if (h < HG) acc[a][h] = fmaf(ss[h * TK + j], v, acc[a][h]);
                }
            }
        }
        __syncthreads();
    }

    const long part = ((long)wt * n_groups + g) * n_splits + split;
#pragma unroll
    for (int a = 0; a < 2; a++) {
        const int d = tid + a * ATT_THREADS;
        if (d < D) {
#pragma unroll
            for (int h = 0; h < MAX_HG; h++) {
                if (h < HG) {
                    if (n_splits == 1) {
                        out[(long)t * out_width + (long)(g * HG + h) * D + d] = acc[a][h] / mls[HG + h];
                    } else {
                        part_o[(part * HG + h) * D + d] = acc[a][h];
                    }
                }
            }
        }
    }
    if (n_splits > 1)
        for (int h = tid; h < HG; h += ATT_THREADS) {
            part_ml[part * 2 * HG + h] = mls[h];
            part_ml[part * 2 * HG + HG + h] = mls[HG + h];
        }
}

#define ATTN_SPLIT(KV)                                                                                          \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                    \
        attn_split_##KV(const float* qkv, int width, float* out, int out_width, const int* work_tokens,         \
                        const int* positions, const int* seq_of_token, const u64* block_table, int max_blocks,  \
                        int n_heads, int n_groups, int D, int layer, int block_tokens, int TK, int chunk,       \
                        float scale, float* part_o, float* part_ml) {                                           \
        attn_split_body<KV>(qkv, width, out, out_width, work_tokens, positions, seq_of_token, block_table,      \
                            max_blocks, n_heads, n_groups, D, layer, block_tokens, TK, chunk, scale, part_o,    \
                            part_ml);                                                                           \
    }
ATTN_SPLIT(0)
ATTN_SPLIT(1)

// Merges the splits of attn_split: grid = (work tokens, n_heads), block = D.
extern "C" __global__ void attn_combine(float* out, int out_width, const int* work_tokens, const float* part_o,
                                        const float* part_ml, int n_heads, int n_groups, int D, int n_splits) {
    pdl_launch_dependents();
    pdl_wait();
    const int wt = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int HG = n_heads / n_groups, g = h / HG, hh = h % HG;
    const long base = ((long)wt * n_groups + g) * n_splits;
    float m = -INFINITY;
    for (int s = 0; s < n_splits; s++) m = fmaxf(m, part_ml[(base + s) * 2 * HG + hh]);
    float l = 0.f, o = 0.f;
    for (int s = 0; s < n_splits; s++) {
        const float ms = part_ml[(base + s) * 2 * HG + hh];
        if (ms == -INFINITY) continue;  // an empty split
        const float w = expf(ms - m);
        l += part_ml[(base + s) * 2 * HG + HG + hh] * w;
        o += part_o[((base + s) * HG + hh) * D + d] * w;
    }
    out[(long)work_tokens[wt] * out_width + (long)h * D + d] = o / l;
}

// Decode attention for head size 128 over an f16 cache: each warp takes 32
// keys at a time, one per lane, so a key row is read by one lane (16 loads of
// 16 bytes, all in flight) and dotted with the block's query heads held in
// shared memory; softmax runs across the lanes; for P·V each lane owns 4 of
// the 128 dimensions and the probabilities come by shuffle. No barriers
// inside the loop. A block takes HB (≤ 4) of the group's HG heads, so the
// group's heads share each key through L1/L2 while a block's serial work
// stays short; the 4 warps take interleaved 32-key slices of the block's
// split and merge at the end. (decode_mma.cu has the tensor-core kernel for
// 16 heads per group, which reads each key once.)
//
// Launch: grid = (n_groups · HG/HB, work tokens, most splits), block = 128;
// block_tokens a multiple of 32 (a 32-key slice never crosses a cache
// block). Each token's split count follows from its own context, so one
// launch serves every context length (a graph replays it unchanged). With
// several splits the last block of each (token, group, head slice) merges
// the partials (`counters`: one int per (token, group, head slice), zero
// before and after each launch).
template <int HG, int HB>
__device__ __forceinline__ void attn_decode_body(const float* qkv, int width, float* out, int out_width,
                                                 const int* work_tokens, const int* positions,
                                                 const int* seq_of_token, const u64* block_table, int max_blocks,
                                                 int n_groups, int layer, int block_tokens, float scale,
                                                 float* part_o, float* part_ml, int* counters) {
    __shared__ __align__(16) float qs[HB * DEC_D];
    __shared__ DecodeReduce<HB> red;
    constexpr int NSUB = HG / HB;
    const int g = blockIdx.x / NSUB, h0 = (blockIdx.x % NSUB) * HB;
    const int wt = blockIdx.y, split = blockIdx.z, n_grid = gridDim.z;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    // The step's metadata and the cache of earlier steps were written before
    // the kernel ahead of this one ran: read them, and start this block's
    // first keys and values towards L2, before waiting for it.
    const int t = work_tokens[wt];
    const int ctx = positions[t] + 1;
    const int seq = seq_of_token[t];
    int k_begin, k_end;
    const int n_splits = decode_split(ctx, n_grid, split, &k_begin, &k_end);
    pdl_launch_dependents();
    if (split >= n_splits) return;
    const long per_group = (long)block_tokens * DEC_D;
    if (k_begin + w * 32 + lane < k_end)
        prefetch_kv_row(block_table + (long)seq * max_blocks, k_begin + w * 32 + lane, block_tokens, layer, n_groups, g);
    pdl_wait();
    for (int i = tid; i < HB * DEC_D; i += 128)
        qs[i] = qkv[(long)t * width + (long)(g * HG + h0) * DEC_D + i] * scale;
    __syncthreads();

    float m[HB], l[HB], acc[HB][4];
#pragma unroll
    for (int h = 0; h < HB; h++) {
        m[h] = -INFINITY;
        l[h] = 0.f;
        acc[h][0] = acc[h][1] = acc[h][2] = acc[h][3] = 0.f;
    }
    for (int kb = k_begin + w * 32; kb < k_end; kb += 128) {
        // The warp's next 32 keys and values start towards L2 now, so the
        // next pass does not begin with a full memory round trip.
        if (kb + 128 + lane < k_end)
            prefetch_kv_row(block_table + (long)seq * max_blocks, kb + 128 + lane, block_tokens, layer, n_groups, g);
        const u16* blk = (const u16*)block_table[(long)seq * max_blocks + kb / block_tokens];
        const int tok0 = kb % block_tokens;
        const u16* kbase = blk + ((long)(layer * 2 + 0) * n_groups + g) * per_group + (long)tok0 * DEC_D;
        const u16* vbase = blk + ((long)(layer * 2 + 1) * n_groups + g) * per_group + (long)tok0 * DEC_D;
        const int n_valid = min(32, k_end - kb);
        const bool valid = lane < n_valid;
        float s[HB];
#pragma unroll
        for (int h = 0; h < HB; h++) s[h] = 0.f;
        if (valid) {
            const uint4* kr = (const uint4*)(kbase + (long)lane * DEC_D);
            uint4 kv[16];
#pragma unroll
            for (int c = 0; c < 16; c++) kv[c] = kr[c];
#pragma unroll
            for (int c = 0; c < 16; c++) {
                float kf[8];
                Vec16<1>::unpack(kv[c], kf);
#pragma unroll
                for (int h = 0; h < HB; h++) {
                    const float4 q0 = *(const float4*)&qs[h * DEC_D + c * 8];
                    const float4 q1 = *(const float4*)&qs[h * DEC_D + c * 8 + 4];
                    s[h] = fmaf(kf[0], q0.x, s[h]); s[h] = fmaf(kf[1], q0.y, s[h]);
                    s[h] = fmaf(kf[2], q0.z, s[h]); s[h] = fmaf(kf[3], q0.w, s[h]);
                    s[h] = fmaf(kf[4], q1.x, s[h]); s[h] = fmaf(kf[5], q1.y, s[h]);
                    s[h] = fmaf(kf[6], q1.z, s[h]); s[h] = fmaf(kf[7], q1.w, s[h]);
                }
            }
        }
#pragma unroll
        for (int h = 0; h < HB; h++) {
            const float sv = valid ? s[h] : -INFINITY;
            const float m_new = fmaxf(m[h], warp_max(sv));
            const float p = valid ? expf(sv - m_new) : 0.f;
            const float alpha = expf(m[h] - m_new);
            l[h] = l[h] * alpha + warp_sum(p);
            m[h] = m_new;
            s[h] = p;
            acc[h][0] *= alpha; acc[h][1] *= alpha; acc[h][2] *= alpha; acc[h][3] *= alpha;
        }
        // Values 16 keys at a time, all requested before the first is used.
        for (int j0 = 0; j0 < n_valid; j0 += 16) {
            uint2 vv[16];
#pragma unroll
            for (int i = 0; i < 16; i++)
                if (j0 + i < n_valid) vv[i] = *(const uint2*)(vbase + (long)(j0 + i) * DEC_D + lane * 4);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                if (j0 + i < n_valid) {
                    const float v0 = f16_to_f32((u16)(vv[i].x & 0xffffu)), v1 = f16_to_f32((u16)(vv[i].x >> 16));
                    const float v2 = f16_to_f32((u16)(vv[i].y & 0xffffu)), v3 = f16_to_f32((u16)(vv[i].y >> 16));
#pragma unroll
                    for (int h = 0; h < HB; h++) {
                        const float p = __shfl_sync(0xffffffffu, s[h], j0 + i);
                        acc[h][0] = fmaf(p, v0, acc[h][0]); acc[h][1] = fmaf(p, v1, acc[h][1]);
                        acc[h][2] = fmaf(p, v2, acc[h][2]); acc[h][3] = fmaf(p, v3, acc[h][3]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int h = 0; h < HB; h++) {
        if (lane == 0) { red.m[w][h] = m[h]; red.l[w][h] = l[h]; }
        *(float4*)&red.o[w][h * DEC_D + lane * 4] = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
    }
    decode_finish<HG, HB>(red, out, out_width, t, wt, g, h0, blockIdx.x % NSUB, split, n_grid, n_splits, n_groups,
                          part_o, part_ml, counters);
}

#define ATTN_DECODE(HG, HB)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                                            \
        attn_decode_##HG(const float* qkv, int width, float* out, int out_width, const int* work_tokens,        \
                         const int* positions, const int* seq_of_token, const u64* block_table, int max_blocks, \
                         int n_groups, int layer, int block_tokens, float scale, float* part_o,                 \
                         float* part_ml, int* counters) {                                                       \
        attn_decode_body<HG, HB>(qkv, width, out, out_width, work_tokens, positions, seq_of_token, block_table, \
                                 max_blocks, n_groups, layer, block_tokens, scale, part_o, part_ml, counters);   \
    }
ATTN_DECODE(1, 1)
ATTN_DECODE(2, 2)
ATTN_DECODE(4, 4)
ATTN_DECODE(8, 4)
ATTN_DECODE(16, 4)
