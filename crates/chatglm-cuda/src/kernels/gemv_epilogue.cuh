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

// Row `row` of token t's QKV output (value a; its RoPE partner's value b).
__device__ __forceinline__ void qkv_epilogue_at(const RopeCtx& rc, TokenSlot ts, float* out, int out_rows, int t,
                                                int row, float a, float b) {
    const int h = row / rc.head_dim, d = row % rc.head_dim;
    const int pos = ts.pos;
    float v = a;
    if (h < rc.n_heads + rc.n_groups && d < 2 * rc.n_pairs) {
        float s, c;
        sincosf((float)pos * rc.inv_freq[d >> 1], &s, &c);
        v = (d & 1) ? a * c + b * s : a * c - b * s;
    }
    out[(long)t * out_rows + row] = v;
    if (h >= rc.n_heads) {
        const int kvh = h - rc.n_heads, which = kvh >= rc.n_groups, g = which ? kvh - rc.n_groups : kvh;
        const u64 blk = ts.blk;
        const long off = ((long)(rc.layer * 2 + which) * rc.n_groups + g) * rc.block_tokens * rc.head_dim +
                         (long)(pos % rc.block_tokens) * rc.head_dim + d;
        if (rc.kv_f16) ((u16*)blk)[off] = f32_to_f16(v);
        else ((float*)blk)[off] = v;
    }
}


__device__ __forceinline__ void qkv_epilogue(const RopeCtx& rc, float* out, int out_rows, int t, int row, float a,
                                             float b) {
    qkv_epilogue_at(rc, token_slot(rc, t), out, out_rows, t, row, a, b);
}
