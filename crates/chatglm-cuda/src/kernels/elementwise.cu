// Row-wise and element-wise operations on f32 activations. Each is one pass
// over its data; they are a small share of a step next to the products.

// One row's bytes into shared memory with every load in flight at once (16
// bytes a load where aligned): a table in mapped host memory answers each
// load after a bus round trip (~1 µs), and a loop that used each value before
// loading the next paid one a step per iteration (~20 µs a row, session 18).
__device__ __forceinline__ void stage_row(unsigned char* dst, const unsigned char* src, long bytes) {
    if (((unsigned long)src & 15) == 0 && (bytes & 15) == 0) {
        const uint4* s = (const uint4*)src;
        uint4* d = (uint4*)dst;
        const long n = bytes / 16;
        for (long i0 = threadIdx.x; i0 < n; i0 += 4L * blockDim.x) {
            uint4 v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const long i = i0 + (long)k * blockDim.x;
                if (i < n) v[k] = s[i];
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const long i = i0 + (long)k * blockDim.x;
                if (i < n) d[i] = v[k];
            }
        }
    } else {
        for (long i0 = threadIdx.x; i0 < bytes; i0 += 8L * blockDim.x) {
            unsigned char v[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const long i = i0 + (long)k * blockDim.x;
                if (i < bytes) v[k] = src[i];
            }
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const long i = i0 + (long)k * blockDim.x;
                if (i < bytes) dst[i] = v[k];
            }
        }
    }
    __syncthreads();
}

// staged: the row goes through shared memory (stage_row; dynamic shared
// memory = cols elements), else straight from the table.
template <int T>
__device__ __forceinline__ void embed_body(const void* table_, const int* ids, float* out, int cols, int table_rows,
                                           int staged) {
    extern __shared__ __align__(16) unsigned char embed_row[];
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<T>::storage S;
    const S* table = (const S*)table_;
    const int row = blockIdx.x;
    int id = ids[row];
    // Ids are validated by the forward pass; clamping keeps a broken invariant
    // from becoming an out-of-bounds read.
    if (id < 0 || id >= table_rows) id = 0;
    const S* src = table + (long)id * cols;
    if (staged) {
        stage_row(embed_row, (const unsigned char*)src, (long)cols * sizeof(S));
        src = (const S*)embed_row;
    }
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)row * cols + c] = Elem<T>::load(src, c);
}

// grid = rows (tokens), block = 256.
extern "C" __global__ void embed_0(const void* t, const int* ids, float* out, int cols, int rows, int staged) { embed_body<0>(t, ids, out, cols, rows, staged); }
extern "C" __global__ void embed_1(const void* t, const int* ids, float* out, int cols, int rows, int staged) { embed_body<1>(t, ids, out, cols, rows, staged); }
extern "C" __global__ void embed_2(const void* t, const int* ids, float* out, int cols, int rows, int staged) { embed_body<2>(t, ids, out, cols, rows, staged); }

// Rows of a table of ggml blocks of 32 (K: 0 q8_0, 1 q4_0, 2 q4_1, 3 q5_0,
// 4 q5_1, laid out as chatglm-weights' Block* structs), read where the table
// lies (mapped host memory: one pass of byte loads into shared memory, then
// decoded from there) and dequantized as the CPU does it — each product and
// sum rounded on its own, never fused, so a row is the CPU's bits.
// grid = rows (tokens), block = 256, dynamic shared memory = row_bytes.
template <int K>
__device__ __forceinline__ float ggml_value(const unsigned char* b, int j) {
    const float d = f16_to_f32((u16)(b[0] | (b[1] << 8)));
    if (K == 0) return __fmul_rn((float)(signed char)b[2 + j], d);
    const int off = K == 1 ? 2 : K == 2 ? 4 : K == 3 ? 6 : 8;  // the 16 nibble bytes
    const int byte = b[off + (j & 15)];
    int q = j < 16 ? byte & 15 : byte >> 4;
    if (K >= 3) {
        const int h = K == 3 ? 2 : 4;  // qh: bit j is bit 4 of code j
        const u32 qh = (u32)b[h] | ((u32)b[h + 1] << 8) | ((u32)b[h + 2] << 16) | ((u32)b[h + 3] << 24);
        q |= (int)((qh >> j) & 1u) << 4;
    }
    if (K == 1) return __fmul_rn((float)(q - 8), d);
    if (K == 3) return __fmul_rn((float)(q - 16), d);
    const float m = f16_to_f32((u16)(b[2] | (b[3] << 8)));
    return __fadd_rn(__fmul_rn((float)q, d), m);
}

template <int K>
__device__ __forceinline__ void embed_ggml_body(const unsigned char* table, const int* ids, float* out, int cols,
                                                int table_rows, long row_bytes) {
    constexpr int BB = K == 0 ? 34 : K == 1 ? 18 : K == 2 ? 20 : K == 3 ? 22 : 24;
    extern __shared__ __align__(16) unsigned char ggml_row[];
    pdl_launch_dependents();
    pdl_wait();
    const int row = blockIdx.x;
    int id = ids[row];
    if (id < 0 || id >= table_rows) id = 0;
    stage_row(ggml_row, table + (long)id * row_bytes, row_bytes);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)row * cols + c] = ggml_value<K>(ggml_row + (c / 32) * BB, c % 32);
}

#define EMBED_GGML(K)                                                                                    \
    extern "C" __global__ void embed_ggml_##K(const unsigned char* t, const int* ids, float* out, int cols, \
                                              int rows, long row_bytes) {                                \
        embed_ggml_body<K>(t, ids, out, cols, rows, row_bytes);                                          \
    }
EMBED_GGML(0)
EMBED_GGML(1)
EMBED_GGML(2)
EMBED_GGML(3)
EMBED_GGML(4)

// out = x over n values (embedding rows gathered on the host). grid-stride.
extern "C" __global__ void copy_f32(const float* x, float* out, long n) {
    pdl_launch_dependents();
    pdl_wait();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = x[i];
}

// x += y over n values. grid-stride.
extern "C" __global__ void add_inplace(float* x, const float* y, long n) {
    pdl_launch_dependents();
    pdl_wait();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] += y[i];
}

// x[r, c] += b[c]. grid = (column blocks, row blocks): no 64-bit division per element.
extern "C" __global__ void add_bias(float* x, const float* b, long rows, int cols) {
    pdl_launch_dependents();
    pdl_wait();
    for (long r = blockIdx.y; r < rows; r += gridDim.y)
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) x[r * cols + c] += b[c];
}

// out[r, c] = silu(x[r, c]) * x[r, ffn + c], x and out in element types IT
// and OT (0 f32, 1 f16, 2 bf16). grid = (column blocks, row blocks).
template <int IT, int OT>
__device__ __forceinline__ void swiglu_body(const void* x_, void* out_, long rows, int ffn) {
    pdl_launch_dependents();
    pdl_wait();
    const typename Elem<IT>::storage* x = (const typename Elem<IT>::storage*)x_;
    typename Elem<OT>::storage* out = (typename Elem<OT>::storage*)out_;
    for (long r = blockIdx.y; r < rows; r += gridDim.y)
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < ffn; c += gridDim.x * blockDim.x) {
            const float a = Elem<IT>::load(x, r * 2 * ffn + c);
            Elem<OT>::store(out, r * ffn + c, a / (1.0f + expf(-a)) * Elem<IT>::load(x, r * 2 * ffn + ffn + c));
        }
}
extern "C" __global__ void swiglu(const void* x, void* out, long rows, int ffn) { swiglu_body<0, 0>(x, out, rows, ffn); }
extern "C" __global__ void swiglu_h1(const void* x, void* out, long rows, int ffn) { swiglu_body<0, 1>(x, out, rows, ffn); }
extern "C" __global__ void swiglu_h2(const void* x, void* out, long rows, int ffn) { swiglu_body<0, 2>(x, out, rows, ffn); }
extern "C" __global__ void swiglu_hh1(const void* x, void* out, long rows, int ffn) { swiglu_body<1, 1>(x, out, rows, ffn); }
extern "C" __global__ void swiglu_hh2(const void* x, void* out, long rows, int ffn) { swiglu_body<2, 2>(x, out, rows, ffn); }

// out[i, :] = x[rows[i], :]. grid = picked rows, block = 256.
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int cols) {
    pdl_launch_dependents();
    pdl_wait();
    const long src = rows[blockIdx.x];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = x[src * cols + c];
}

// f32 → f16 / bf16 (inputs of the half-precision matrix products).
extern "C" __global__ void to_f16(const float* x, u16* out, long n) {
    pdl_launch_dependents();
    pdl_wait();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = f32_to_f16(x[i]);
}
extern "C" __global__ void to_bf16(const float* x, u16* out, long n) {
    pdl_launch_dependents();
    pdl_wait();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = f32_to_bf16(x[i]);
}

// Pseudo-random values uniform in ±amp from a hash of (seed, index): synthetic
// weights and caches for benchmarks, built on the device.
__device__ __forceinline__ float hash_uniform(u64 seed, long i) {
    u64 z = seed + (u64)i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) - 0.5f;
}

template <int T>
__device__ __forceinline__ void fill_random_body(void* p, long n, u64 seed, float amp) {
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<T>::storage S;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        Elem<T>::store((S*)p, i, 2.0f * amp * hash_uniform(seed, i));
}
extern "C" __global__ void fill_random_0(void* p, long n, u64 seed, float amp) { fill_random_body<0>(p, n, seed, amp); }
extern "C" __global__ void fill_random_1(void* p, long n, u64 seed, float amp) { fill_random_body<1>(p, n, seed, amp); }
extern "C" __global__ void fill_random_2(void* p, long n, u64 seed, float amp) { fill_random_body<2>(p, n, seed, amp); }

// RMSNorm writing OT (0 f32, 1 f16, 2 bf16): the 16-bit forms are the inputs
// of the next half-precision matrix product, without an f32 round trip. Mean
// square in f32 over a tree (the CPU reference sums in f64; the two agree to
// ~1e-7 relative). grid = rows, block = 256.
template <int OT>
__device__ __forceinline__ void rms_norm_body(const float* x, const float* w, void* out_, int cols, float eps) {
    typename Elem<OT>::storage* out = (typename Elem<OT>::storage*)out_;
    pdl_launch_dependents();
    pdl_wait();
    __shared__ float partial[8];
    const int row = blockIdx.x;
    const float* xr = x + (long)row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s = fmaf(xr[c], xr[c], s);
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    const float inv = 1.0f / sqrtf(partial[0] / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) Elem<OT>::store(out, (long)row * cols + c, w[c] * (xr[c] * inv));
}
extern "C" __global__ void __launch_bounds__(256) rms_norm(const float* x, const float* w, void* out, int cols, float eps) { rms_norm_body<0>(x, w, out, cols, eps); }
extern "C" __global__ void __launch_bounds__(256) rms_norm_h1(const float* x, const float* w, void* out, int cols, float eps) { rms_norm_body<1>(x, w, out, cols, eps); }
extern "C" __global__ void __launch_bounds__(256) rms_norm_h2(const float* x, const float* w, void* out, int cols, float eps) { rms_norm_body<2>(x, w, out, cols, eps); }

// A step's metadata and block table, read in place from page-locked host
// memory the host filled (`src`: meta16 16-byte chunks of metadata, then
// table16 of the table), into their device buffers — one launch where two
// copies and a kernel took ~25 µs between queued decode steps (bench/
// RESULTS.md run 134). Block 0 copies the metadata and then, where the step
// before chose tokens the host has not read (it queued this step behind
// that one), sets ids[pairs[2i]] = chosen[pairs[2i + 1]] for its n_chained
// (row, source) pairs at int offset off_pairs; the other blocks copy the
// table. Each thread keeps four 16-byte loads in flight (a bus round trip
// each).
#define STAGE_LOADS 4
// 1: a thread's first round of loads from host memory is requested before
// the wait for the kernel ahead (the host filled the buffer before this
// launch, and only the writes must follow that kernel), so the bus round
// trip overlaps it (the step's argmax) instead of following it.
#ifndef STAGE_EARLY_LOADS
#define STAGE_EARLY_LOADS 1
#endif
extern "C" __global__ void __launch_bounds__(256) stage_step(const int4* __restrict__ src, int4* meta, int meta16,
                                                             int4* table, int table16, const int* chosen,
                                                             int off_pairs, int n_chained) {
    const bool is_meta = blockIdx.x == 0;
    int4* dst = is_meta ? meta : table;
    const int4* from = is_meta ? src : src + meta16;
    const int n = is_meta ? meta16 : table16;
    const int stride = is_meta ? STAGE_LOADS * blockDim.x : STAGE_LOADS * blockDim.x * (gridDim.x - 1);
    const int first = is_meta ? threadIdx.x : (blockIdx.x - 1) * STAGE_LOADS * blockDim.x + threadIdx.x;
    int4 v[STAGE_LOADS];
    auto load_round = [&](int i0) {
#pragma unroll
        for (int k = 0; k < STAGE_LOADS; k++) {
            const int i = i0 + k * blockDim.x;
            if (i < n) v[k] = __ldcv(from + i);  // the host rewrote it since the last step: never a cached copy
        }
    };
    if (STAGE_EARLY_LOADS) load_round(first);
    // No early launch of the kernel after this one: kernels read a step's
    // positions and block table before their own wait (preload_token_slots),
    // which covers only the kernel just ahead of them — a successor launched
    // early here would let the one after it read what this kernel is still
    // writing (the `cuda` suite's queued-steps test caught it, run 139).
    pdl_wait();
    for (int i0 = first; i0 < n; i0 += stride) {
        if (!STAGE_EARLY_LOADS || i0 != first) load_round(i0);
#pragma unroll
        for (int k = 0; k < STAGE_LOADS; k++) {
            const int i = i0 + k * blockDim.x;
            if (i < n) dst[i] = v[k];
        }
    }
    if (!is_meta || n_chained == 0) return;
    __syncthreads();  // the pairs (and ids) this block just wrote
    int* ids = (int*)meta;
    const int* pairs = ids + off_pairs;
    for (int i = threadIdx.x; i < n_chained; i += blockDim.x) ids[pairs[2 * i]] = chosen[pairs[2 * i + 1]];
}

// (value, index) pairs: the larger value, the first of equal ones.
__device__ __forceinline__ void argmax_merge(float& bv, int& bi, float ov, int oi) {
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
}

// The block's best (value, index) over its threads' and whether any thread
// met a non-finite value, valid in thread 0.
__device__ __forceinline__ void argmax_block(float& bv, int& bi, int& bad) {
    __shared__ float sv[32];
    __shared__ int si[32];
    bad = __syncthreads_or(bad);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w != 0) return;
    const int nw = (blockDim.x + 31) >> 5;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// out[r] = the greedy choice for row r, as the host's greedy sampler makes
// it: a row holding NaN or ±inf is first replaced by zeros with 5e4 at index
// 5 (the official InvalidScoreLogitsProcessor), then the index of the largest
// value, the first of equal ones. grid = (slices, rows): block (s, r) takes
// the s-th of gridDim.x equal runs of row r's columns (a 65K-column row
// over one block took 5.3 µs of a step, run 218), writes its best to
// scratch, and the row's last block to finish (a counter a row, which it
// sets back to zero) merges them — the result does not depend on which.
// scratch: ARGMAX_ROW_INTS a row — its counter (zero), then slices·3 ints
// (value bits, index, non-finite seen) — at fixed places whatever the
// launch's rows and slices, so no launch's partials land on a counter
// another launch relies on being zero. host_out (or null): mapped
// page-locked memory the choices also go to, so a queued step's tokens reach
// the host without a copy behind the kernel.
#define ARGMAX_MAX_SLICES 64
#define ARGMAX_ROW_INTS (1 + 3 * ARGMAX_MAX_SLICES)
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* x, int* out, int cols, int* host_out,
                                                               int* scratch) {
    __shared__ bool last;
    pdl_launch_dependents();
    pdl_wait();
    const int r = blockIdx.y, slices = gridDim.x;
    const float* row = x + (long)r * cols;
    const int per = ((cols + slices - 1) / slices + 3) & ~3;  // a multiple of 4: float4 runs stay aligned
    const int c_begin = min(cols, (int)blockIdx.x * per), c_end = min(cols, c_begin + per);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    int bad = 0;
    if ((cols & 3) == 0 && ((unsigned long)row & 15) == 0) {
        // Four float4 loads in flight a thread (the row was just written: L2
        // round trips); each thread meets its columns in increasing order.
        const float4* r4 = (const float4*)row;
        const int b4 = c_begin / 4, e4 = c_end / 4;
        for (int c0 = b4 + threadIdx.x; c0 < e4; c0 += 4 * blockDim.x) {
            float4 q[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = c0 + k * blockDim.x;
                if (c < e4) q[k] = r4[c];
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = c0 + k * blockDim.x;
                if (c >= e4) break;
                const float v[4] = {q[k].x, q[k].y, q[k].z, q[k].w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    bad |= !(fabsf(v[e]) <= 3.402823466e38f);
                    if (v[e] > bv) { bv = v[e]; bi = 4 * c + e; }
                }
            }
        }
    } else {
        for (int c = c_begin + threadIdx.x; c < c_end; c += blockDim.x) {
            const float v = row[c];
            bad |= !(fabsf(v) <= 3.402823466e38f);
            if (v > bv) { bv = v; bi = c; }
        }
    }
    argmax_block(bv, bi, bad);
    if (slices > 1) {
        int* counter = scratch + (long)r * ARGMAX_ROW_INTS;
        int* part = counter + 1 + 3 * blockIdx.x;
        if (threadIdx.x == 0) {
            part[0] = __float_as_int(bv);
            part[1] = bi;
            part[2] = bad;
            __threadfence();
            last = atomicAdd(counter, 1) == slices - 1;
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
        bv = -INFINITY;
        bi = 0x7fffffff;
        bad = 0;
        const int* parts = counter + 1;
        for (int s = threadIdx.x; s < slices; s += blockDim.x) {
            argmax_merge(bv, bi, __int_as_float(__ldcg(parts + 3 * s)), __ldcg(parts + 3 * s + 1));
            bad |= __ldcg(parts + 3 * s + 2);
        }
        argmax_block(bv, bi, bad);
        if (threadIdx.x == 0) *counter = 0;
    }
    if (threadIdx.x == 0) {
        const int chosen = bad ? (cols > 5 ? 5 : 0) : bi;
        out[r] = chosen;
        if (host_out) host_out[r] = chosen;
    }
}

// Rows 0..rows of a sequence's cache written from `src` (P-Tuning v2 prefix
// keys and values): src is [run][row][row_bytes] for runs = layers·2·groups;
// block b of the sequence (address blocks[b]) holds rows b·bt.. as
// [run][bt][row_bytes]. row_bytes is a multiple of 16.
extern "C" __global__ void kv_prefix_rows(const unsigned char* src, const u64* blocks, int rows, int bt, int runs,
                                          int row_bytes, int unit) {
    pdl_launch_dependents();
    pdl_wait();
    // `unit` (16, 8, 4 or 2) divides row_bytes, so every copy is aligned.
    const int vecs = row_bytes / unit;
    const long total = (long)runs * rows * vecs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const int v = (int)(i % vecs);
        const long rest = i / vecs;
        const int row = (int)(rest % rows), run = (int)(rest / rows);
        const unsigned char* from = src + ((long)run * rows + row) * row_bytes + (long)v * unit;
        unsigned char* to = (unsigned char*)blocks[row / bt] + ((long)run * bt + row % bt) * row_bytes + (long)v * unit;
        if (unit == 16)
            *(uint4*)to = *(const uint4*)from;
        else if (unit == 8)
            *(uint2*)to = *(const uint2*)from;
        else if (unit == 4)
            *(u32*)to = *(const u32*)from;
        else
            *(u16*)to = *(const u16*)from;
    }
}

// Zeroes a step's kernel-chain counters (chain.rs) once the kernel before —
// the step before's last — is done, so none of them is still in use.
extern "C" __global__ void chain_reset(int* counters, int n) {
    pdl_launch_dependents();
    pdl_wait();
    for (int i = threadIdx.x; i < n; i += blockDim.x) counters[i] = 0;
}
