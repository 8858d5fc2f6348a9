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
// device read. Launches of up to EMBED_CACHE_MAX_ROWS rows use it; a block
// fills its slot only where no other row of the launch maps to that slot
// with another id, so in a launch a slot is written only by rows that write
// the same bytes and read by none under another tag.
//
// Rows of one id in a launch are read once: the first (the leader) stages
// the row and writes its output, the others (followers) wait for it and
// copy that output. Mapped host memory serves concurrent reads of one line
// one after another: 32 blocks reading one 2,304-byte row took 10.6 µs
// where 32 different rows took 3.7 and one row 2.0 (tests/gpu/bus_probe.cu,
// run 340) — a batch of sequences that chose the same token paid that on
// every missing step.
#define EMBED_CACHE_MAX_ROWS 256
#define EMBED_SPIN_LIMIT (1L << 28)  // a follower's polls (seconds): a trap, not a hang
struct EmbedCache {
    unsigned char* rows;
    int* tags;
    // EMBED_CACHE_MAX_ROWS ints, zero between launches: ready[r] = how many
    // followers row r's leader has, set once its output is written; each
    // follower takes one off after copying it.
    int* ready;
    int slots;
    int stride;
};

// The launch's other rows as this block (row `row`, id `id`) sees them.
struct EmbedPeers {
    int lead;    // the first row of this id (this row: it leads)
    int follow;  // rows of this id after this one
    int clash;   // a row of another id maps to this id's slot
};

// Launches of at most EMBED_CACHE_MAX_ROWS rows (gridDim.x) with a block
// of blockDim.x threads.
__device__ __forceinline__ EmbedPeers embed_peers(const int* ids, int row, int id, int table_rows, int slots) {
    __shared__ int lead, follow;
    if (threadIdx.x == 0) {
        lead = row;
        follow = 0;
    }
    __syncthreads();
    int clash = 0;
    for (int j = threadIdx.x; j < (int)gridDim.x; j += blockDim.x) {
        int other = ids[j];
        if (other < 0 || other >= table_rows) other = 0;  // as its block clamps it
        if (other == id && j < row) atomicMin(&lead, j);
        if (other == id && j > row) atomicAdd(&follow, 1);
        clash |= slots != 0 && other != id && ((other ^ id) & (slots - 1)) == 0;
    }
    clash = __syncthreads_or(clash);
    return EmbedPeers{lead, follow, clash};
}

// A follower: row `lead`'s output, once written, copied to row `row`.
__device__ __forceinline__ void embed_follow(float* out, int row, int lead, int cols, int* ready) {
    if (threadIdx.x == 0)
        for (long spins = 0; ld_acquire_gpu(ready + lead) == 0; spins++)
            if (spins > EMBED_SPIN_LIMIT) __trap();
    __syncthreads();
    const float* src = out + (long)lead * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)row * cols + c] = __ldcg(src + c);
    if (threadIdx.x == 0) atomicSub(ready + lead, 1);
}

// A leader with followers: its output (every thread's writes, ordered by
// the barrier; the release is cumulative over them) published to them.
__device__ __forceinline__ void embed_lead_done(int row, int follow, int* ready) {
    __syncthreads();
    if (threadIdx.x == 0) asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(ready + row), "r"(follow) : "memory");
}

// Stages row `id` (at `src` in the table, row_bytes bytes) in `smem`: from
// the cache where it holds it, else from the table, then cached where this
// block may (above; `p` from embed_peers).
__device__ __forceinline__ void embed_cached_row(unsigned char* smem, const unsigned char* src, long row_bytes, int id,
                                                 const EmbedPeers& p, EmbedCache c) {
    if (c.slots == 0) {
        stage_row(smem, src, row_bytes);
        return;
    }
    const int slot = id & (c.slots - 1);
    unsigned char* cached = c.rows + (long)slot * c.stride;
    const bool hit = __ldcg(c.tags + slot) == id;
    stage_row(smem, hit ? cached : src, row_bytes);  // ends with a barrier
    if (hit || p.clash) return;
    if ((row_bytes & 15) == 0) {
        for (long i = threadIdx.x; i < row_bytes / 16; i += blockDim.x) ((uint4*)cached)[i] = ((const uint4*)smem)[i];
    } else {
        for (long i = threadIdx.x; i < row_bytes; i += blockDim.x) cached[i] = smem[i];
    }
    __threadfence();  // the row before its tag, for the launches after this one
    __syncthreads();
    if (threadIdx.x == 0) c.tags[slot] = id;
}

// A block's row through the cache and its peers: stage(smem-staging
// source) then write(row) for a leader or a launch too large to share
// rows; a follower copies its leader's output.
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
    const EmbedPeers p = embed_peers(ids, row, id, table_rows, c.slots);
    if (p.lead != row) {
        embed_follow(out, row, p.lead, cols, c.ready);
        return;
    }
    embed_cached_row(smem, src, row_bytes, id, p, c);
    write();
    if (p.follow) embed_lead_done(row, p.follow, c.ready);
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
