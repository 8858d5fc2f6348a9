// What reading a decode step's embedding rows across the bus costs (the row
// cache's misses, kernels/embed_cached.cu): rows of 2,304 bytes (a q4_0 row
// of 4,096 values) read by one block each, from device memory and from
// mapped page-locked host memory, timed inside the kernel (globaltimer: the
// first block's start to the last block's end) and as back-to-back launches.
// Built and run by tests/gpu/session48*.sh on the GPU machine:
//   nvcc -O3 -arch=sm_90 tests/gpu/bus_probe.cu -o bus_probe && ./bus_probe
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(x)                                                                              \
    do {                                                                                      \
        cudaError_t e = (x);                                                                  \
        if (e != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
            exit(1);                                                                          \
        }                                                                                     \
    }                                                                                         \
    while (0)

__device__ __forceinline__ unsigned long long now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// grid = rows, block = 256: block b reads row ids[b] (row_bytes, 16-byte
// loads all in flight) into shared memory and writes it out — from
// `host_table` for blocks b < from_host (rows that miss the cache), else
// from `table`; stamps[2b], stamps[2b+1]: its start and end.
__global__ void read_rows(const uint4* table, const uint4* host_table, int from_host, const int* ids, int row_bytes,
                          uint4* out, unsigned long long* stamps) {
    extern __shared__ uint4 row[];
    const unsigned long long t0 = now();
    const int n = row_bytes / 16;
    const uint4* src = ((int)blockIdx.x < from_host ? host_table : table) + (long)ids[blockIdx.x] * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = src[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(long)blockIdx.x * n + i] = row[i];
    __syncthreads();
    if (threadIdx.x == 0) {
        stamps[2 * blockIdx.x] = t0;
        stamps[2 * blockIdx.x + 1] = now();
    }
}

// One thread, `hops` dependent 4-byte loads (each address from the last
// value): the round trip of one load.
__global__ void chase(const int* p, int hops, int* sink, unsigned long long* ns) {
    int i = 0;
    const unsigned long long t0 = now();
    for (int h = 0; h < hops; h++) i = __ldcv(p + i);
    *ns = now() - t0;
    *sink = i;
}

static double span_us(const unsigned long long* s, int rows) {
    unsigned long long lo = ~0ull, hi = 0;
    for (int b = 0; b < rows; b++) {
        lo = s[2 * b] < lo ? s[2 * b] : lo;
        hi = s[2 * b + 1] > hi ? s[2 * b + 1] : hi;
    }
    return (hi - lo) / 1e3;
}

int main() {
    const int table_rows = 65024, row_bytes = 2304, max_rows = 64, reps = 200;
    const size_t bytes = (size_t)table_rows * row_bytes;
    void* host;
    CHECK(cudaHostAlloc(&host, bytes, cudaHostAllocMapped));
    for (size_t i = 0; i < bytes; i += 4096) ((char*)host)[i] = (char)i;
    void* mapped;
    CHECK(cudaHostGetDevicePointer(&mapped, host, 0));
    void* dev;
    CHECK(cudaMalloc(&dev, bytes));
    CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    int *ids, *hids;
    uint4* out;
    unsigned long long *stamps, *hstamps;
    CHECK(cudaMalloc(&ids, max_rows * 4));
    CHECK(cudaMalloc(&out, max_rows * row_bytes));
    CHECK(cudaMalloc(&stamps, 2 * max_rows * 8));
    CHECK(cudaMallocHost(&hids, max_rows * 4));
    CHECK(cudaMallocHost(&hstamps, 2 * max_rows * 8));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    srand(7);
    for (int rows : {1, 8, 32, 64}) {
        for (int same = 0; same < 2; same++) {
            for (int where = 0; where < 2; where++) {
                const uint4* table = (const uint4*)(where ? mapped : dev);
                double in_kernel = 0;
                CHECK(cudaEventRecord(e0));
                for (int r = 0; r < reps; r++) {
                    for (int b = 0; b < rows; b++) hids[b] = same ? 19392 : rand() % table_rows;
                    CHECK(cudaMemcpyAsync(ids, hids, rows * 4, cudaMemcpyHostToDevice));
                    read_rows<<<rows, 256, row_bytes>>>(table, table, 0, ids, row_bytes, out, stamps);
                    CHECK(cudaMemcpyAsync(hstamps, stamps, 2 * rows * 8, cudaMemcpyDeviceToHost));
                    CHECK(cudaStreamSynchronize(0));
                    in_kernel += span_us(hstamps, rows);
                }
                CHECK(cudaEventRecord(e1));
                CHECK(cudaEventSynchronize(e1));
                printf("rows %2d %s %-6s: in kernel %6.2f us (first block's start to last block's end)\n", rows,
                       same ? "one id " : "random", where ? "mapped" : "device", in_kernel / reps);
            }
        }
    }
    // 32 different rows of which the first k miss (from mapped memory), the
    // rest hit (device memory): a real-text step's few missing rows.
    for (int k : {0, 1, 2, 3, 4, 8, 32}) {
        double in_kernel = 0;
        for (int r = 0; r < reps; r++) {
            for (int b = 0; b < 32; b++) hids[b] = rand() % table_rows;
            CHECK(cudaMemcpyAsync(ids, hids, 32 * 4, cudaMemcpyHostToDevice));
            read_rows<<<32, 256, row_bytes>>>((const uint4*)dev, (const uint4*)mapped, k, ids, row_bytes, out, stamps);
            CHECK(cudaMemcpyAsync(hstamps, stamps, 2 * 32 * 8, cudaMemcpyDeviceToHost));
            CHECK(cudaStreamSynchronize(0));
            in_kernel += span_us(hstamps, 32);
        }
        printf("32 different rows, %2d of them mapped: in kernel %6.2f us\n", k, in_kernel / reps);
    }
    // Back-to-back launches of 32 random rows (no host step between): the
    // launch-to-launch period.
    for (int where = 0; where < 2; where++) {
        const uint4* table = (const uint4*)(where ? mapped : dev);
        for (int b = 0; b < 32; b++) hids[b] = rand() % table_rows;
        CHECK(cudaMemcpy(ids, hids, 32 * 4, cudaMemcpyHostToDevice));
        float ms;
        CHECK(cudaEventRecord(e0));
        for (int r = 0; r < 2000; r++) read_rows<<<32, 256, row_bytes>>>(table, table, 0, ids, row_bytes, out, stamps);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        printf("32 rows %s back to back: %.2f us a launch\n", where ? "mapped" : "device", ms * 1e3 / 2000);
    }
    // One load's round trip: a pointer chase over the mapped table and device memory.
    int* chain_h = (int*)host;
    const int hops = 256, stride = 4096 * 17 / 4;  // a new page each hop
    for (int h = 0; h < hops; h++) chain_h[h * stride] = (h + 1) * stride;
    CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    int* sink;
    unsigned long long* ns;
    CHECK(cudaMalloc(&sink, 4));
    CHECK(cudaMallocManaged(&ns, 8));
    for (int where = 0; where < 2; where++) {
        for (int r = 0; r < 3; r++) {
            chase<<<1, 1>>>((const int*)(where ? mapped : dev), hops, sink, ns);
            CHECK(cudaDeviceSynchronize());
            printf("one load's round trip, %s: %.3f us (%d dependent loads)\n", where ? "mapped" : "device",
                   *ns / 1e3 / hops, hops);
        }
    }
    return 0;
}
