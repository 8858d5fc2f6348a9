// The embedding gathers through a device row cache (the embed_cached module,
// compile.rs): elementwise.cu's embed_* and embed_ggml_* with each row read
// from the cache where it holds it. Compiled after elementwise.cu in a
// module of its own that every lookup order places last (only these kernels
// are looked up in it), so that no other kernel's code moves.
//
// The cache (EmbedCache; ops.rs EmbedRowCache): `slots` rows (a power of
// two) of `stride` bytes, row id in slot id & (slots − 1), whose tag (an int
// a slot, −1 when empty) says which. A row read from mapped host memory
// costs a decode step a bus round trip on its critical path (embed_ggml_1:
// ~9 µs of a 2.7 ms 32-sequence step, run 332) where a cached one is a
// device read. Launches of up to EMBED_CACHE_MAX_ROWS rows use it; only an
// id's first row in the launch fills its slot (below), and only where no
// other row of the launch maps to that slot with another id, so in a launch
// a slot is written once and read by no row under another tag.
//
// Rows of one id in a launch are read from the table once: where they miss
// the cache (or there is none), the id's first row in the launch (the
// leader) stages it and the others (followers) wait for the leader's output
// and copy it. Mapped host memory serves concurrent reads of one line one
// after another: 32 blocks reading one 2,304-byte row took 10.6 µs where 32
// different rows took 3.7 and one row 2.0 (tests/gpu/bus_probe.cu, run 340)
// — a batch of sequences that chose the same token paid that on every
// missing step.
//
// The hand-over: the leader sets flag[lead] once its output is written and
// each follower counts itself in done[lead] after copying it; the leader
// waits for all of them, clears both (zero between launches) and only then
// fills the cache slot, so every row of an id sees the same tag — all hit
// (no hand-over, no scan of the launch's ids) or all miss.
#define EMBED_CACHE_MAX_ROWS 256
#define EMBED_SPIN_LIMIT (1L << 28)  // polls (seconds): a trap, not a hang
struct EmbedCache {
    unsigned char* rows;
    int* tags;
    int* ready;  // 2·EMBED_CACHE_MAX_ROWS ints, zero between launches: flag[r], then done[r]
    int slots;
    int stride;
};

// The launch's rows of this block's id (row `row`, id `id`).
struct EmbedPeers {
    int lead;   // the first of them (this row: it leads)
    int same;   // how many (this one included)
    int clash;  // a row of another id maps to this id's slot
};

// Launches of at most EMBED_CACHE_MAX_ROWS rows (gridDim.x).
__device__ __forceinline__ EmbedPeers embed_peers(const int* ids, int row, int id, int table_rows, int slots) {
    __shared__ int lead, same;
    if (threadIdx.x == 0) {
        lead = row;
        same = 0;
    }
    __syncthreads();
    int clash = 0;
    for (int j = threadIdx.x; j < (int)gridDim.x; j += blockDim.x) {
        int other = ids[j];
        if (other < 0 || other >= table_rows) other = 0;  // as its block clamps it
        if (other == id) {
            if (j < row) atomicMin(&lead, j);
            atomicAdd(&same, 1);
        }
        clash |= slots != 0 && other != id && ((other ^ id) & (slots - 1)) == 0;
    }
    clash = __syncthreads_or(clash);
    return EmbedPeers{lead, same, clash};
}

// Thread 0 polls `p` until it holds `want` (acquiring what was released
// with it); the block waits for it.
__device__ __forceinline__ void embed_await(const int* p, int want) {
    if (threadIdx.x == 0)
        for (long spins = 0; ld_acquire_gpu(p) != want; spins++)
            if (spins > EMBED_SPIN_LIMIT) __trap();
    __syncthreads();
}

// A follower: its leader's output, once written, copied (all of a thread's
// loads in flight before its stores), then counted done.
__device__ __forceinline__ void embed_follow(float* out, int row, int cols, int lead, int* ready) {
    embed_await(ready + lead, 1);
    const float* src = out + (long)lead * cols;
    float* dst = out + (long)row * cols;
    if ((cols & 3) == 0) {
        const int n = cols / 4;
        for (int i0 = threadIdx.x; i0 < n; i0 += 4 * blockDim.x) {
            float4 v[4];
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (i0 + k * (int)blockDim.x < n) v[k] = __ldcg((const float4*)src + i0 + k * blockDim.x);
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (i0 + k * (int)blockDim.x < n) ((float4*)dst)[i0 + k * blockDim.x] = v[k];
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = __ldcg(src + c);
    }
    __syncthreads();
    if (threadIdx.x == 0)
        asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(ready + EMBED_CACHE_MAX_ROWS + lead) : "memory");
}

// A leader with followers, its output written: handed over, then the
// hand-over cleared once every follower copied it.
__device__ __forceinline__ void embed_hand_over(int row, int followers, int* ready) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("st.release.gpu.global.s32 [%0], 1;" ::"l"(ready + row) : "memory");
    embed_await(ready + EMBED_CACHE_MAX_ROWS + row, followers);
    if (threadIdx.x == 0) {
        ready[row] = 0;
        ready[EMBED_CACHE_MAX_ROWS + row] = 0;
    }
}

// A block's row through the cache and its peers: staged, then `write()`
// (its output from shared memory), or copied from its leader's output.
template <typename Write>
__device__ __forceinline__ void embed_cached_block(unsigned char* smem, const unsigned char* src, long row_bytes,
                                                   int id, const int* ids, int table_rows, float* out, int cols,
                                                   EmbedCache c, Write write) {
    const int row = blockIdx.x;
    if ((int)gridDim.x > EMBED_CACHE_MAX_ROWS || c.ready == nullptr) {
        stage_row(smem, src, row_bytes);
        write();
        return;
    }
    const int slot = id & (c.slots - 1);
    unsigned char* cached = c.rows + (long)slot * c.stride;
    if (c.slots != 0 && __ldcg(c.tags + slot) == id) {
        stage_row(smem, cached, row_bytes);
        write();
        return;
    }
    const EmbedPeers p = embed_peers(ids, row, id, table_rows, c.slots);
    if (p.lead != row) {
        embed_follow(out, row, cols, p.lead, c.ready);
        return;
    }
    stage_row(smem, src, row_bytes);  // ends with a barrier
    write();
    if (p.same > 1) embed_hand_over(row, p.same - 1, c.ready);
    if (c.slots == 0 || p.clash) return;
    if ((row_bytes & 15) == 0) {
        for (long i = threadIdx.x; i < row_bytes / 16; i += blockDim.x) ((uint4*)cached)[i] = ((const uint4*)smem)[i];
    } else {
        for (long i = threadIdx.x; i < row_bytes; i += blockDim.x) cached[i] = smem[i];
    }
    __threadfence();  // the row before its tag, for the launches after this one
    __syncthreads();
    if (threadIdx.x == 0) c.tags[slot] = id;
}

// embed_body with the row through the cache (rows of up to 48 KiB: the
// host passes no cache for larger ones).
template <int T>
__device__ __forceinline__ void embed_cached_body(const void* table_, const int* ids, float* out, int cols,
                                                  int table_rows, EmbedCache cache) {
    extern __shared__ __align__(16) unsigned char embed_cached_smem[];
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<T>::storage S;
    const int row = blockIdx.x;
    int id = ids[row];
    if (id < 0 || id >= table_rows) id = 0;
    const S* src = (const S*)table_ + (long)id * cols;
    embed_cached_block(embed_cached_smem, (const unsigned char*)src, (long)cols * sizeof(S), id, ids, table_rows, out,
                       cols, cache, [&] {
                           for (int c = threadIdx.x; c < cols; c += blockDim.x)
                               out[(long)row * cols + c] = Elem<T>::load((const S*)embed_cached_smem, c);
                       });
}
extern "C" __global__ void embed_cached_0(const void* t, const int* ids, float* out, int cols, int rows, EmbedCache c) { embed_cached_body<0>(t, ids, out, cols, rows, c); }
extern "C" __global__ void embed_cached_1(const void* t, const int* ids, float* out, int cols, int rows, EmbedCache c) { embed_cached_body<1>(t, ids, out, cols, rows, c); }
extern "C" __global__ void embed_cached_2(const void* t, const int* ids, float* out, int cols, int rows, EmbedCache c) { embed_cached_body<2>(t, ids, out, cols, rows, c); }

// embed_ggml_body with the row through the cache.
template <int K>
__device__ __forceinline__ void embed_ggml_cached_body(const unsigned char* table, const int* ids, float* out, int cols,
                                                       int table_rows, long row_bytes, EmbedCache cache) {
    constexpr int BB = K == 0 ? 34 : K == 1 ? 18 : K == 2 ? 20 : K == 3 ? 22 : 24;
    extern __shared__ __align__(16) unsigned char embed_cached_smem[];
    pdl_launch_dependents();
    pdl_wait();
    const int row = blockIdx.x;
    int id = ids[row];
    if (id < 0 || id >= table_rows) id = 0;
    embed_cached_block(embed_cached_smem, table + (long)id * row_bytes, row_bytes, id, ids, table_rows, out, cols,
                       cache, [&] {
                           for (int c = threadIdx.x; c < cols; c += blockDim.x)
                               out[(long)row * cols + c] = ggml_value<K>(embed_cached_smem + (c / 32) * BB, c % 32);
                       });
}
#define EMBED_GGML_CACHED(K)                                                                                   \
    extern "C" __global__ void embed_ggml_cached_##K(const unsigned char* t, const int* ids, float* out, int cols, \
                                                     int rows, long row_bytes, EmbedCache c) {                  \
        embed_ggml_cached_body<K>(t, ids, out, cols, rows, row_bytes, c);                                       \
    }
EMBED_GGML_CACHED(0)
EMBED_GGML_CACHED(1)
EMBED_GGML_CACHED(2)
EMBED_GGML_CACHED(3)
EMBED_GGML_CACHED(4)
