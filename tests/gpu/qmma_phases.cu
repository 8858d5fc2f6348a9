// Where a one-token quantized product's time goes: the library's qmma
// kernels, compiled with QMMA_STAMPS, run as a decode step runs them (28
// layers of QKV, dense, h→4h with SwiGLU, 4h→h at the ChatGLM2-6B shapes,
// each layer its own weights, launched back to back with programmatic
// dependent launch), and every block's %globaltimer stamps are read back:
// entry, after the wait for the kernel ahead, activations quantized, first
// batch done, end. Printed per product: how long after the kernel ahead
// ended its blocks got past each phase (median and last block).
//
// Build (here or on the GPU machine; `tests/gpu/run.sh build` does it where
// it finds nvcc):
//   nvcc -O2 -std=c++17 -arch=sm_90 -DQMMA_STAMPS=1 tests/gpu/qmma_phases.cu -o qmma_phases
// Run: ./qmma_phases [format: 0 = q4_0 (default), 2 = q8_0] [steps, default 20]
// ONLY=p: each layer runs product p alone (0 QKV, 1 dense, 2 h→4h, 3 4h→h),
// so a launch follows a launch of the same kernel.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../crates/chatglm-cuda/src/kernels/common.cuh"
#include "../../crates/chatglm-cuda/src/kernels/mma.cuh"
#include "../../crates/chatglm-cuda/src/kernels/gemv_epilogue.cuh"
#include "../../crates/chatglm-cuda/src/kernels/qmma.cu"

#define CHECK(x)                                                                              \
    do {                                                                                      \
        cudaError_t e = (x);                                                                  \
        if (e != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

typedef void (*QmmaKernel)(const uint4*, const u16*, const u16*, int, int, const float*, const float*, float,
                           const signed char*, const float2*, int, int, const float*, float*, int, int, RopeCtx,
                           const char*, long, unsigned char*, ChainSync);

struct Product {
    const char* name;
    int rows, cols, mode;  // mode as the kernels: 0 store, 1 accumulate, 2 SwiGLU
    bool norm;
};

int main(int argc, char** argv) {
    const int format = argc > 1 ? atoi(argv[1]) : 0;
    const int steps = argc > 2 ? atoi(argv[2]) : 20;
    const int layers = 28, hidden = 4096, ffn = 13696;
    const Product products[4] = {{"QKV", 4608, hidden, 0, true},
                                 {"dense", hidden, hidden, 1, false},
                                 {"h->4h", 2 * ffn, hidden, 2, true},
                                 {"4h->h", hidden, ffn, 1, false}};
    QmmaKernel kernels[2][3] = {{qmma_0_1_0_2, qmma_0_1_1_2, qmma_0_1_2_2}, {qmma_2_1_0_2, qmma_2_1_1_2, qmma_2_1_2_2}};
    const int fi = format == 2 ? 1 : 0;
    const int blocks_per_unit = format == 2 ? 1 : 2;
    const int scale_bytes_per_unit = format == 2 ? 32 : 64;  // 8 lane groups × (2 or 4) f16
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));

    // Weights: every layer its own, random codes, small constant scales.
    struct Weights {
        char* base;
        int units, tiles;
        size_t code_bytes;
    };
    std::vector<Weights> w(layers * 4);
    size_t total = 0;
    for (int l = 0; l < layers; l++)
        for (int p = 0; p < 4; p++) {
            Weights& m = w[l * 4 + p];
            m.tiles = products[p].rows / 16;
            m.units = (products[p].cols / 32 + blocks_per_unit - 1) / blocks_per_unit;
            m.code_bytes = (size_t)m.tiles * m.units * 512;
            const size_t bytes = m.code_bytes + (size_t)m.tiles * m.units * scale_bytes_per_unit;
            CHECK(cudaMalloc(&m.base, bytes));
            std::vector<unsigned char> host(bytes);
            unsigned long long z = 0x9E3779B97F4A7C15ull * (l * 4 + p + 1);
            for (size_t i = 0; i < m.code_bytes; i++) {
                z ^= z << 13; z ^= z >> 7; z ^= z << 17;
                host[i] = (unsigned char)z;
            }
            for (size_t i = m.code_bytes; i + 1 < bytes; i += 2) { host[i] = 0x00; host[i + 1] = 0x10; }
            CHECK(cudaMemcpy(m.base, host.data(), bytes, cudaMemcpyHostToDevice));
            total += bytes;
        }
    float *x, *nw, *out;
    CHECK(cudaMalloc(&x, ffn * 4));
    CHECK(cudaMalloc(&nw, hidden * 4));
    CHECK(cudaMalloc(&out, 2 * ffn * 4));
    std::vector<float> ones(ffn, 0.01f);
    CHECK(cudaMemcpy(x, ones.data(), ffn * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(nw, ones.data(), hidden * 4, cudaMemcpyHostToDevice));
    printf("format %d: %.2f GB of weights over %d layers, %d steps\n", format, total / 1e9, layers, steps);

    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    int grid[4], smem[4];
    for (int p = 0; p < 4; p++) {
        const Product& pr = products[p];
        smem[p] = pr.cols / 32 * 2 * 8 + pr.cols;
        QmmaKernel k = kernels[fi][pr.mode];
        CHECK(cudaFuncSetAttribute((const void*)k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem[p]));
        int per_sm = 0;
        CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, QMMA_THREADS, smem[p]));
        const int items = pr.mode == 2 ? pr.rows / 2 / 16 : pr.rows / 16;
        const int resident = std::max(1, per_sm * prop.multiProcessorCount);
        const int per_block = (items + resident - 1) / resident;
        grid[p] = (items + per_block - 1) / per_block;
        printf("%-6s %5d×%-5d grid %d (%d a SM)\n", pr.name, pr.rows, pr.cols, grid[p], per_sm);
    }
    RopeCtx rc;
    memset(&rc, 0, sizeof rc);
    ChainSync chain;  // no chain: griddepcontrol.wait
    memset(&chain, 0, sizeof chain);
    // HANDOFF=1: the q8_0 hand-off as a decode step runs it — h→4h writes its
    // output's codes, 4h→h reads them, and dense reads codes in place of the
    // attention's (whatever the buffer holds: timing only).
    const bool handoff = getenv("HANDOFF") && atoi(getenv("HANDOFF")) == 1;
    std::vector<int> ps;
    for (int p = 0; p < 4; p++)
        if (!getenv("ONLY") || atoi(getenv("ONLY")) == p) ps.push_back(p);
    unsigned char* hcodes = nullptr;
    CHECK(cudaMalloc(&hcodes, ffn / 32 * 16 + ffn));
    CHECK(cudaMemset(hcodes, 0, ffn / 32 * 16 + ffn));
    printf("q8_0 hand-off: %s\n", handoff ? "on" : "off");
    auto launch = [&](int l, int p) {
        const Product& pr = products[p];
        const Weights& m = w[l * 4 + p];
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(grid[p]);
        cfg.blockDim = dim3(QMMA_THREADS);
        cfg.dynamicSmemBytes = smem[p];
        cfg.stream = stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        const uint4* codes = (const uint4*)m.base;
        const u16* scales = (const u16*)(m.base + m.code_bytes);
        CHECK(cudaLaunchKernelEx(&cfg, kernels[fi][pr.mode], codes, scales, (const u16*)nullptr, m.units, m.tiles,
                                 (const float*)x, pr.norm ? (const float*)nw : (const float*)nullptr, 1e-5f,
                                 (const signed char*)(handoff && (p == 1 || p == 3) ? hcodes : nullptr),
                                 (const float2*)nullptr, 1, pr.cols, (const float*)nullptr, out,
                                 pr.mode == 2 ? pr.rows / 2 : pr.rows, pr.mode == 2 ? pr.rows / 2 : 0, rc,
                                 (const char*)nullptr, 0L, handoff && p == 2 ? hcodes : nullptr, chain));
    };
    for (int s = 0; s < steps; s++)
        for (int l = 0; l < layers; l++)
            for (int p : ps) launch(l, p);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    CHECK(cudaEventRecord(e0, stream));
    for (int l = 0; l < layers; l++)
        for (int p : ps) launch(l, p);
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaStreamSynchronize(stream));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    printf("one step of the 112 products: %.3f ms (%.0f GB/s)\n", ms, total / (ms * 1e6));
    // One more step, the one whose stamps are read.
    const u32 zero = 0;
    CHECK(cudaMemcpyToSymbol(qmma_stamp_count, &zero, sizeof zero));
    for (int l = 0; l < layers; l++)
        for (int p : ps) launch(l, p);
    CHECK(cudaStreamSynchronize(stream));

    // The last stamped step: records by launch order (kernel tag, block).
    u32 count = 0;
    CHECK(cudaMemcpyFromSymbol(&count, qmma_stamp_count, sizeof count));
    std::vector<u64> rec((size_t)count * 8);
    CHECK(cudaMemcpyFromSymbol(rec.data(), qmma_stamps, rec.size() * 8));
    struct Rec {
        int tag, block;
        u64 t[7];
    };
    std::vector<Rec> rs(count);
    for (u32 i = 0; i < count; i++) {
        rs[i].tag = (int)(rec[8 * i] >> 32);
        rs[i].block = (int)(rec[8 * i] & 0xffffffff);
        for (int k = 0; k < 7; k++) rs[i].t[k] = rec[8 * i + 1 + k];
    }
    // Launches in order: every block of a launch passes its wait after the
    // launch ahead has ended, so sorted by wait they come launch by launch.
    std::sort(rs.begin(), rs.end(), [](const Rec& a, const Rec& b) { return a.t[1] < b.t[1]; });
    double sum[4][7] = {}, last[4][7] = {};
    int n_layers = 0;
    size_t at = 0;
    u64 prev_end = 0;
    for (int l = 0; l < layers && at < rs.size(); l++) {
        for (int p : ps) {
            if (at + grid[p] > rs.size()) break;
            std::vector<Rec> launch_recs(rs.begin() + at, rs.begin() + at + grid[p]);
            at += grid[p];
            u64 first_entry = ~0ull, end = 0;
            std::vector<double> ph[7];
            for (const Rec& r : launch_recs) {
                first_entry = std::min(first_entry, r.t[0]);
                end = std::max(end, r.t[4]);
            }
            const u64 ref = prev_end ? prev_end : first_entry;
            for (const Rec& r : launch_recs)
                for (int k = 0; k < 7; k++) ph[k].push_back(r.t[k] ? (double)((long long)(r.t[k] - ref)) : 0.0);
            for (int k = 0; k < 7; k++) {
                std::sort(ph[k].begin(), ph[k].end());
                if (l > 0) {
                    sum[p][k] += ph[k][ph[k].size() / 2];
                    last[p][k] += ph[k].back();
                }
            }
            prev_end = end;
        }
        if (l > 0) n_layers++;
    }
    printf("\nµs after the kernel ahead ended (median block / last block), mean over %d layers:\n", n_layers);
    printf("%-6s %15s %15s %15s %15s %15s %15s %15s\n", "", "entry", "waited", "activations", "first batch", "end",
           "2nd requested", "2nd batch");
    for (int p : ps) {
        printf("%-6s", products[p].name);
        for (int k = 0; k < 7; k++)
            printf(" %7.2f/%7.2f", sum[p][k] / n_layers / 1e3, last[p][k] / n_layers / 1e3);
        printf("\n");
    }
    return 0;
}
