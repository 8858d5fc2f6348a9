// RoPE + KV append, and attention over a paged KV cache.
//
// Cache layout: a block holds `block_tokens` consecutive positions of one
// sequence for every layer: [layer][k|v][group][token] rows of `dim` values,
// f32 (KV = 0), f16 (KV = 1) or q8_0 (KV = 2: see KvRow). A step's block table holds, per sequence, the
// device address of each of its blocks (row `seq`, `max_blocks` wide).
// Multi-query attention: query head h reads KV group h / (n_heads / n_groups).

// One cache row of D values by the codes the host passes. q8_0 (KV = 2): D
// int8 codes, then one f16 scale per 32 values (34 bytes per 32, as ggml's
// q8_0 block), quantized as the CPU's `BlockQ8_0::quantize`:
// d = max|x| / 127, q = round(x / d) — so the GPU cache holds the CPU's
// numbers. Needs D % 32 == 0 (host-checked).
template <int KV> struct KvRow;
template <> struct KvRow<0> {
    static __device__ __forceinline__ long bytes(int D) { return 4L * D; }
    static __device__ __forceinline__ float load(const unsigned char* row, int d, int) {
        return ((const float*)row)[d];
    }
    static __device__ __forceinline__ void store(unsigned char* row, int d, float v, int) { ((float*)row)[d] = v; }
};
template <> struct KvRow<1> {
    static __device__ __forceinline__ long bytes(int D) { return 2L * D; }
    static __device__ __forceinline__ float load(const unsigned char* row, int d, int) {
        return f16_to_f32(((const u16*)row)[d]);
    }
    static __device__ __forceinline__ void store(unsigned char* row, int d, float v, int) {
        ((u16*)row)[d] = f32_to_f16(v);
    }
};
template <> struct KvRow<2> {
    static __device__ __forceinline__ long bytes(int D) { return (long)D + D / 16; }
    static __device__ __forceinline__ float load(const unsigned char* row, int d, int D) {
        return (float)((const signed char*)row)[d] * f16_to_f32(((const u16*)(row + D))[d >> 5]);
    }
    // Warp-collective: the 32 lanes hold the 32 values of one q8_0 block
    // (lane = d % 32).
    static __device__ __forceinline__ void store(unsigned char* row, int d, float v, int D) {
        float amax = fabsf(v);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float scale = __fdiv_rn(amax, 127.f);
        const float inv = scale != 0.f ? __frcp_rn(scale) : 0.f;
        // Saturating as Rust's `as i8` (a subnormal scale's reciprocal is
        // infinite; 0 · inf is NaN, which Rust turns into 0).
        const float r = roundf(__fmul_rn(v, inv));
        ((signed char*)row)[d] = (signed char)(r != r ? 0 : (int)fminf(fmaxf(r, -128.f), 127.f));
        if ((d & 31) == 0) ((u16*)(row + D))[d >> 5] = f32_to_f16(scale);
    }
};

// Address of the cache row of (layer, k|v, group, token) in a block.
template <int KV>
__device__ __forceinline__ long kv_row_offset(int layer, int which, int n_groups, int g, int block_tokens, int tok,
                                              int D) {
    return (((long)(layer * 2 + which) * n_groups + g) * block_tokens + tok) * KvRow<KV>::bytes(D);
}

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
    unsigned char* blk = (unsigned char*)block_table[(long)seq * max_blocks + pos / block_tokens];
    const int tok = pos % block_tokens;
    const float* k = row + n_heads * head_dim;
    const float* v = k + n_groups * head_dim;
    // A warp's 32 consecutive i are one q8_0 block of one group (blockDim and
    // head_dim multiples of 32), and every lane of a warp runs the same trips.
    for (int i = threadIdx.x; i < n_groups * head_dim; i += blockDim.x) {
        const int g = i / head_dim, d = i % head_dim;
        KvRow<KV>::store(blk + kv_row_offset<KV>(layer, 0, n_groups, g, block_tokens, tok, head_dim), d, k[i],
                         head_dim);
        KvRow<KV>::store(blk + kv_row_offset<KV>(layer, 1, n_groups, g, block_tokens, tok, head_dim), d, v[i],
                         head_dim);
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
ROPE_KV(2)

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
    const long RB = KvRow<KV>::bytes(D);
    for (int k0 = k_begin; k0 < k_end; k0 += TK) {
        const int nk = min(TK, k_end - k0);
        const unsigned char* blk = (const unsigned char*)block_table[(long)seq * max_blocks + k0 / block_tokens];
        const int tok0 = k0 % block_tokens;
        const unsigned char* kb = blk + kv_row_offset<KV>(layer, 0, n_groups, g, block_tokens, tok0, D);
        const unsigned char* vb = blk + kv_row_offset<KV>(layer, 1, n_groups, g, block_tokens, tok0, D);
        for (int i = tid; i < nk * D; i += ATT_THREADS)
            kv[(i / D) * KS + i % D] = KvRow<KV>::load(kb + (i / D) * RB, i % D, D);
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
        for (int i = tid; i < nk * D; i += ATT_THREADS)
            kv[(i / D) * KS + i % D] = KvRow<KV>::load(vb + (i / D) * RB, i % D, D);
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
ATTN_SPLIT(2)

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
// Starts key `k`'s row and its value row of a q8_0 cache (136 bytes each:
// at most two 128-byte lines) towards L2.
__device__ __forceinline__ void prefetch_kv_row_q8(const u64* table, int k, int block_tokens, int layer,
                                                   int n_groups, int g) {
    const unsigned char* blk = (const unsigned char*)table[k / block_tokens];
    const int tok = k % block_tokens;
    const unsigned char* kr = blk + kv_row_offset<2>(layer, 0, n_groups, g, block_tokens, tok, DEC_D);
    const unsigned char* vr = blk + kv_row_offset<2>(layer, 1, n_groups, g, block_tokens, tok, DEC_D);
    prefetch_l2(kr);
    prefetch_l2(kr + 128);
    prefetch_l2(vr);
    prefetch_l2(vr + 128);
}

template <int KV>
__device__ __forceinline__ void prefetch_row(const u64* table, int k, int block_tokens, int layer, int n_groups,
                                             int g) {
    if (KV == 2)
        prefetch_kv_row_q8(table, k, block_tokens, layer, n_groups, g);
    else
        prefetch_kv_row(table, k, block_tokens, layer, n_groups, g);
}

// s[h] += the 8 key values kf · dims 0..7 of head h's query at q.
template <int HB>
__device__ __forceinline__ void dot8_heads(const float* kf, const float* q, float* s) {
#pragma unroll
    for (int h = 0; h < HB; h++) {
        const float4 q0 = *(const float4*)&q[h * DEC_D];
        const float4 q1 = *(const float4*)&q[h * DEC_D + 4];
        s[h] = fmaf(kf[0], q0.x, s[h]); s[h] = fmaf(kf[1], q0.y, s[h]);
        s[h] = fmaf(kf[2], q0.z, s[h]); s[h] = fmaf(kf[3], q0.w, s[h]);
        s[h] = fmaf(kf[4], q1.x, s[h]); s[h] = fmaf(kf[5], q1.y, s[h]);
        s[h] = fmaf(kf[6], q1.z, s[h]); s[h] = fmaf(kf[7], q1.w, s[h]);
    }
}

// Key row `kr` (KV = 1: 128 f16; KV = 2: 128 int8 codes, then 4 f16 scales)
// dotted with the block's HB pre-scaled query heads in shared memory.
template <int KV, int HB>
__device__ __forceinline__ void key_scores(const unsigned char* kr, const float* qs, float* s) {
    if (KV == 1) {
        uint4 kv[16];
#pragma unroll
        for (int c = 0; c < 16; c++) kv[c] = ((const uint4*)kr)[c];
#pragma unroll
        for (int c = 0; c < 16; c++) {
            float kf[8];
            Vec16<1>::unpack(kv[c], kf);
            dot8_heads<HB>(kf, qs + c * 8, s);
        }
    } else {
        // Rows are 8-byte aligned (136 bytes apart): 8-byte loads.
        uint2 kv[16];
#pragma unroll
        for (int c = 0; c < 16; c++) kv[c] = ((const uint2*)kr)[c];
        const uint2 sc = *(const uint2*)(kr + DEC_D);
        const float scales[4] = {f16_to_f32((u16)(sc.x & 0xffffu)), f16_to_f32((u16)(sc.x >> 16)),
                                 f16_to_f32((u16)(sc.y & 0xffffu)), f16_to_f32((u16)(sc.y >> 16))};
#pragma unroll
        for (int c = 0; c < 16; c++) {
            float kf[8];
#pragma unroll
            for (int b = 0; b < 8; b++) {
                const u32 word = b < 4 ? kv[c].x : kv[c].y;
                kf[b] = (float)(signed char)((word >> (8 * (b & 3))) & 0xffu) * scales[c >> 2];
            }
            dot8_heads<HB>(kf, qs + c * 8, s);
        }
    }
}

// Dims 4·lane … 4·lane+3 of value row `vr`, as what a load returned (KV = 1:
// 4 f16 in a uint2; KV = 2: 4 codes in .x, their f16 scale in .y).
template <int KV>
__device__ __forceinline__ uint2 value_load(const unsigned char* vr, int lane) {
    if (KV == 1) return *(const uint2*)(vr + lane * 8);
    return make_uint2(*(const u32*)(vr + lane * 4), ((const u16*)(vr + DEC_D))[lane >> 3]);
}

template <int KV>
__device__ __forceinline__ void value_unpack(uint2 v, float* out) {
    if (KV == 1) {
        out[0] = f16_to_f32((u16)(v.x & 0xffffu));
        out[1] = f16_to_f32((u16)(v.x >> 16));
        out[2] = f16_to_f32((u16)(v.y & 0xffffu));
        out[3] = f16_to_f32((u16)(v.y >> 16));
    } else {
        const float d = f16_to_f32((u16)v.y);
#pragma unroll
        for (int b = 0; b < 4; b++) out[b] = (float)(signed char)((v.x >> (8 * b)) & 0xffu) * d;
    }
}

template <int HG, int HB, int KV>
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
    constexpr long RB = KV == 2 ? DEC_D + DEC_D / 16 : 2 * DEC_D;
    if (k_begin + w * 32 + lane < k_end)
        prefetch_row<KV>(block_table + (long)seq * max_blocks, k_begin + w * 32 + lane, block_tokens, layer, n_groups,
                         g);
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
            prefetch_row<KV>(block_table + (long)seq * max_blocks, kb + 128 + lane, block_tokens, layer, n_groups, g);
        const unsigned char* blk = (const unsigned char*)block_table[(long)seq * max_blocks + kb / block_tokens];
        const int tok0 = kb % block_tokens;
        const unsigned char* kbase = blk + kv_row_offset<KV>(layer, 0, n_groups, g, block_tokens, tok0, DEC_D);
        const unsigned char* vbase = blk + kv_row_offset<KV>(layer, 1, n_groups, g, block_tokens, tok0, DEC_D);
        const int n_valid = min(32, k_end - kb);
        const bool valid = lane < n_valid;
        float s[HB];
#pragma unroll
        for (int h = 0; h < HB; h++) s[h] = 0.f;
        if (valid) key_scores<KV, HB>(kbase + (long)lane * RB, qs, s);
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
                if (j0 + i < n_valid) vv[i] = value_load<KV>(vbase + (long)(j0 + i) * RB, lane);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                if (j0 + i < n_valid) {
                    float v[4];
                    value_unpack<KV>(vv[i], v);
#pragma unroll
                    for (int h = 0; h < HB; h++) {
                        const float p = __shfl_sync(0xffffffffu, s[h], j0 + i);
                        acc[h][0] = fmaf(p, v[0], acc[h][0]); acc[h][1] = fmaf(p, v[1], acc[h][1]);
                        acc[h][2] = fmaf(p, v[2], acc[h][2]); acc[h][3] = fmaf(p, v[3], acc[h][3]);
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
        attn_decode_body<HG, HB, 1>(qkv, width, out, out_width, work_tokens, positions, seq_of_token,          \
                                    block_table, max_blocks, n_groups, layer, block_tokens, scale, part_o,      \
                                    part_ml, counters);                                                          \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(128)                                                            \
        attn_decode_q8_##HG(const float* qkv, int width, float* out, int out_width, const int* work_tokens,     \
                            const int* positions, const int* seq_of_token, const u64* block_table,              \
                            int max_blocks, int n_groups, int layer, int block_tokens, float scale,             \
                            float* part_o, float* part_ml, int* counters) {                                     \
        attn_decode_body<HG, HB, 2>(qkv, width, out, out_width, work_tokens, positions, seq_of_token,          \
                                    block_table, max_blocks, n_groups, layer, block_tokens, scale, part_o,      \
                                    part_ml, counters);                                                          \
    }
ATTN_DECODE(1, 1)
ATTN_DECODE(2, 2)
ATTN_DECODE(4, 4)
ATTN_DECODE(8, 4)
ATTN_DECODE(16, 4)
