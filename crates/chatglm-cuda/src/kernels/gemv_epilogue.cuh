// What the mat-vec kernels (gemv.cu, qmma.cu) do with a finished dot product:
// SwiGLU's activation and the QKV projection's RoPE and KV-cache append.

__device__ __forceinline__ float silu(float a) { return a / (1.0f + expf(-a)); }

// What MODE 3 needs besides the product: where each token sits and the cache.
struct RopeCtx {
    const int* positions;
    const int* seq_of_token;
    const u64* block_table;
    const float* inv_freq;
    int max_blocks, n_pairs, head_dim, n_heads, n_groups, layer, block_tokens, kv_f16;
};

// Where token t goes: its position and the cache block holding it. Step
// data the host wrote before the step, so a kernel reads it before waiting
// for the kernel ahead (the epilogue then has no dependent loads to make).
struct TokenSlot {
    int pos;
    u64 blk;
};

__device__ __forceinline__ TokenSlot token_slot(const RopeCtx& rc, int t) {
    TokenSlot s;
    s.pos = rc.positions[t];
    s.blk = rc.block_table[(long)rc.seq_of_token[t] * rc.max_blocks + s.pos / rc.block_tokens];
    return s;
}

// Up to `cap` tokens' slots into shared memory (threads < n; a barrier must
// follow before they are read).
__device__ __forceinline__ void preload_token_slots(const RopeCtx& rc, int n, int cap, TokenSlot* slots) {
    if ((int)threadIdx.x < min(n, cap)) slots[threadIdx.x] = token_slot(rc, threadIdx.x);
}

// Whether dim d of QKV output head h is turned by RoPE: the rotated part
// (the first 2·n_pairs dims) of a query or key head, not a value head.
__device__ __forceinline__ bool rope_turns(const RopeCtx& rc, int h, int d) {
    return h < rc.n_heads + rc.n_groups && d < 2 * rc.n_pairs;
}

// Row `row` of a token at `pos` after RoPE (value a; its partner's value b):
// the rotated part of the query and key heads turned, the rest as it is.
__device__ __forceinline__ float qkv_rope(const RopeCtx& rc, int pos, int row, float a, float b) {
    const int h = row / rc.head_dim, d = row % rc.head_dim;
    if (!rope_turns(rc, h, d)) return a;
    float s, c;
    sincosf((float)pos * rc.inv_freq[d >> 1], &s, &c);
    return (d & 1) ? a * c + b * s : a * c - b * s;
}

// Element index, in its cache block, of dim d of key/value head kvh (keys
// 0..n_groups-1, then values) of the token at pos.
__device__ __forceinline__ long kv_cache_index(const RopeCtx& rc, int pos, int kvh, int d) {
    const int which = kvh >= rc.n_groups, g = which ? kvh - rc.n_groups : kvh;
    return ((long)(rc.layer * 2 + which) * rc.n_groups + g) * rc.block_tokens * rc.head_dim +
           (long)(pos % rc.block_tokens) * rc.head_dim + d;
}

// Dims d..d+7 of key/value head kvh of a token as 16-byte stores (d and
// head_dim multiples of 8, so the row's 8 values are one aligned vector):
// the grouped products' epilogue writes a token's cache rows this way, 8×
// fewer stores than one a value (run 189: +0.6% at 32 sequences against the
// 2-byte stores; alone, behind the old unrolled epilogue, −1.1%: run 188).
__device__ __forceinline__ void kv_store8(const RopeCtx& rc, TokenSlot ts, int kvh, int d, const float* x) {
    const long off = kv_cache_index(rc, ts.pos, kvh, d);
    if (rc.kv_f16) {
        uint4 p;
        p.x = f32_to_f16(x[0]) | (u32)f32_to_f16(x[1]) << 16;
        p.y = f32_to_f16(x[2]) | (u32)f32_to_f16(x[3]) << 16;
        p.z = f32_to_f16(x[4]) | (u32)f32_to_f16(x[5]) << 16;
        p.w = f32_to_f16(x[6]) | (u32)f32_to_f16(x[7]) << 16;
        *(uint4*)((u16*)ts.blk + off) = p;
    } else {
        float4* q = (float4*)((float*)ts.blk + off);
        q[0] = make_float4(x[0], x[1], x[2], x[3]);
        q[1] = make_float4(x[4], x[5], x[6], x[7]);
    }
}

// Row `row` of a token into the cache, if it is a key or value row.
__device__ __forceinline__ void kv_store1(const RopeCtx& rc, TokenSlot ts, int row, float v) {
    const int h = row / rc.head_dim;
    if (h < rc.n_heads) return;
    const long off = kv_cache_index(rc, ts.pos, h - rc.n_heads, row % rc.head_dim);
    if (rc.kv_f16) ((u16*)ts.blk)[off] = f32_to_f16(v);
    else ((float*)ts.blk)[off] = v;
}

// Row `row` of token t's QKV output (value a; its RoPE partner's value b).
__device__ __forceinline__ void qkv_epilogue_at(const RopeCtx& rc, TokenSlot ts, float* out, int out_rows, int t,
                                                int row, float a, float b) {
    const float v = qkv_rope(rc, ts.pos, row, a, b);
    out[(long)t * out_rows + row] = v;
    kv_store1(rc, ts, row, v);
}

__device__ __forceinline__ void qkv_epilogue(const RopeCtx& rc, float* out, int out_rows, int t, int row, float a,
                                             float b) {
    qkv_epilogue_at(rc, token_slot(rc, t), out, out_rows, t, row, a, b);
}
