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
#define EMBED_CACHE_MAX_ROWS 256
struct EmbedCache {
    unsigned char* rows;
    int* tags;
    int slots;
    int stride;
};

// Stages row `id` (at `src` in the table, row_bytes bytes) in `smem`: from
// the cache where it holds it, else from the table, then cached where this
// block may (above).
__device__ __forceinline__ void embed_cached_row(unsigned char* smem, const unsigned char* src, long row_bytes, int id,
                                                 const int* ids, int table_rows, EmbedCache c) {
    if (c.slots == 0 || (int)gridDim.x > EMBED_CACHE_MAX_ROWS) {
        stage_row(smem, src, row_bytes);
        return;
    }
    const int slot = id & (c.slots - 1);
    unsigned char* cached = c.rows + (long)slot * c.stride;
    const bool hit = __ldcg(c.tags + slot) == id;
    int clash = 0;
    if (!hit)
        for (int j = threadIdx.x; j < (int)gridDim.x; j += blockDim.x) {
            int other = ids[j];
            if (other < 0 || other >= table_rows) other = 0;  // as its block clamps it
            clash |= other != id && (other & (c.slots - 1)) == slot;
        }
    clash = __syncthreads_or(clash);
    stage_row(smem, hit ? cached : src, row_bytes);  // ends with a barrier
    if (hit || clash) return;
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
    embed_cached_row(embed_cached_smem, (const unsigned char*)src, (long)cols * sizeof(S), id, ids, table_rows, cache);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)row * cols + c] = Elem<T>::load((const S*)embed_cached_smem, c);
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
    embed_cached_row(embed_cached_smem, table + (long)id * row_bytes, row_bytes, id, ids, table_rows, cache);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(long)row * cols + c] = ggml_value<K>(embed_cached_smem + (c / 32) * BB, c % 32);
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
