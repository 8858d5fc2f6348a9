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

// 1: preload_token_slots also requests, for each token, the first and last
// cache rows this layer's QKV epilogue writes (towards L2), long before the
// epilogue: each sequence's cache block lies in its own pages, and at 32
// sequences the grouped QKV epilogue took ~6 µs where dense's takes <1
// (run 184's stamps). 0: not (measurements).
#ifndef QKV_KV_WARM
#define QKV_KV_WARM 1
#endif
// Measurement only (results wrong): 1 skips the QKV epilogue's cache writes.
#ifndef QKV_NO_KV
#define QKV_NO_KV 0
#endif

// Up to `cap` tokens' slots into shared memory (threads < n; a barrier must
// follow before they are read).
__device__ __forceinline__ void preload_token_slots(const RopeCtx& rc, int n, int cap, TokenSlot* slots) {
    if ((int)threadIdx.x >= min(n, cap)) return;
    const TokenSlot s = token_slot(rc, threadIdx.x);
    slots[threadIdx.x] = s;
    if (QKV_KV_WARM) {
        const int es = rc.kv_f16 ? 2 : 4;
        const long row = (long)(s.pos % rc.block_tokens) * rc.head_dim;
        const long k0 = (long)(rc.layer * 2) * rc.n_groups * rc.block_tokens * rc.head_dim + row;
        const long v1 = ((long)(rc.layer * 2 + 1) * rc.n_groups + rc.n_groups - 1) * rc.block_tokens * rc.head_dim + row;
        prefetch_l2((const char*)s.blk + k0 * es);
        prefetch_l2((const char*)s.blk + v1 * es);
    }
}

// The rotary frequency of QKV output row `row`, negative where the row is not
// rotated (values, each head's second half): read before the epilogue, so
// that a thread's epilogues do not each wait on a load queued behind the
// cache writes of the one before (the compiler cannot move it past them).
__device__ __forceinline__ float rope_freq(const RopeCtx& rc, int row) {
    const int h = row / rc.head_dim, d = row % rc.head_dim;
    return h < rc.n_heads + rc.n_groups && d < 2 * rc.n_pairs ? rc.inv_freq[d >> 1] : -1.f;
}

// Row `row` of token t's QKV output (value a; its RoPE partner's value b),
// with the row's rope_freq already read.
__device__ __forceinline__ void qkv_epilogue_f(const RopeCtx& rc, TokenSlot ts, float* out, int out_rows, int t,
                                               int row, float a, float b, float freq) {
    const int h = row / rc.head_dim, d = row % rc.head_dim;
    const int pos = ts.pos;
    float v = a;
    if (freq >= 0.f) {
        float s, c;
        sincosf((float)pos * freq, &s, &c);
        v = (d & 1) ? a * c + b * s : a * c - b * s;
    }
    out[(long)t * out_rows + row] = v;
    if (h >= rc.n_heads && !QKV_NO_KV) {
        const int kvh = h - rc.n_heads, which = kvh >= rc.n_groups, g = which ? kvh - rc.n_groups : kvh;
        const u64 blk = ts.blk;
        const long off = ((long)(rc.layer * 2 + which) * rc.n_groups + g) * rc.block_tokens * rc.head_dim +
                         (long)(pos % rc.block_tokens) * rc.head_dim + d;
        if (rc.kv_f16) ((u16*)blk)[off] = f32_to_f16(v);
        else ((float*)blk)[off] = v;
    }
}

__device__ __forceinline__ void qkv_epilogue_at(const RopeCtx& rc, TokenSlot ts, float* out, int out_rows, int t,
                                                int row, float a, float b) {
    qkv_epilogue_f(rc, ts, out, out_rows, t, row, a, b, rope_freq(rc, row));
}

__device__ __forceinline__ void qkv_epilogue(const RopeCtx& rc, float* out, int out_rows, int t, int row, float a,
                                             float b) {
    qkv_epilogue_at(rc, token_slot(rc, t), out, out_rows, t, row, a, b);
}
