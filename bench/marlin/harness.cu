// Times Marlin (IST-DASLab's int4 × f16 kernel, the one vLLM and others ship
// for small batches) on ChatGLM2-6B's product shapes, as a peer for our
// grouped and one-token quantized products (qmma_bench) on the same card.
//
// Built by bench/marlin/build.sh against a Marlin checkout outside this
// repository (MARLIN_SRC): its kernel file is #included here, never copied in.
//
// Weights are random 4-bit codes with groups of 128 (Marlin's finest: q4_0's
// groups of 32 carry 8% more scale bytes), 4 copies rotated so L2 (50 MB)
// cannot hold a layer between calls; CUDA events around 200 calls a case,
// median of 5 rounds. Prints one line a (shape, tokens): µs a call and the
// weight bytes (codes + scales) streamed per second. MARLIN_SHAPES (names,
// comma-separated) limits the shapes, for a profiler.
#include MARLIN_KERNEL

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CHECK(x)                                                                                     \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "error: %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_)); \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

__global__ void fill_bytes(unsigned char* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        p[i] = (unsigned char)(h >> 16);
    }
}

// Small f16 values (scales and activations): random mantissas, exponent of ~2^-6.
__global__ void fill_half(half* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2246822519u ^ seed;
        h ^= h >> 15;
        p[i] = __float2half(((h & 0xffff) / 65536.0f - 0.5f) * 0.03f);
    }
}

struct Shape {
    const char* name;
    int n, k;  // output rows (Marlin's n), input columns (k)
};

int main(int argc, char** argv) {
    const Shape shapes[] = {
        {"qkv", 4608, 4096},
        {"dense", 4096, 4096},
        {"h_to_4h", 27392, 4096},
        {"4h_to_h", 4096, 13696},
        {"logits", 65024, 4096},
    };
    std::vector<int> tokens = {1, 8, 16, 32};
    if (argc > 1) {
        tokens.clear();
        for (int i = 1; i < argc; i++) {
            char* end = nullptr;
            const long m = strtol(argv[i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || m < 1 || m > 64) {
                fprintf(stderr, "error: token count %s: expected 1..64\n", argv[i]);
                return 2;
            }
            tokens.push_back((int)m);
        }
    }
    const int groupsize = 128, copies = 4, calls = 200, rounds = 5;
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs; Marlin int4, groups of %d, %d weight copies, %d calls x %d rounds (median)\n",
           prop.name, sms, groupsize, copies, calls, rounds);
    printf("%-8s %6s %10s %9s\n", "matrix", "tokens", "us/call", "TB/s");
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    // ",a,b," so that a name matches whole, never as part of another.
    const char* names = getenv("MARLIN_SHAPES");
    const std::string only = names && *names ? std::string(",") + names + "," : "";
    for (const Shape& s : shapes) {
        if (!only.empty() && only.find(std::string(",") + s.name + ",") == std::string::npos) continue;
        const size_t wbytes = (size_t)s.n * s.k / 2, sbytes = (size_t)s.k / groupsize * s.n * 2;
        std::vector<void*> w(copies), sc(copies);
        for (int c = 0; c < copies; c++) {
            CHECK(cudaMalloc(&w[c], wbytes));
            CHECK(cudaMalloc(&sc[c], sbytes));
            fill_bytes<<<1024, 256>>>((unsigned char*)w[c], wbytes, 17u + c);
            fill_half<<<1024, 256>>>((half*)sc[c], sbytes / 2, 91u + c);
        }
        const int max_m = *std::max_element(tokens.begin(), tokens.end());
        void *a, *out, *ws;
        CHECK(cudaMalloc(&a, (size_t)max_m * s.k * 2));
        CHECK(cudaMalloc(&out, (size_t)max_m * s.n * 2));
        const size_t ws_ints = (size_t)s.n / 128 * 16;
        CHECK(cudaMalloc(&ws, ws_ints * 4));
        CHECK(cudaMemset(ws, 0, ws_ints * 4));
        fill_half<<<1024, 256>>>((half*)a, (size_t)max_m * s.k, 5u);
        CHECK(cudaDeviceSynchronize());
        for (int m : tokens) {
            auto call = [&](int c) {
                const int err = marlin_cuda(a, w[c], out, sc[c], m, s.n, s.k, ws, groupsize, 0, stream, -1, -1, sms, 16);
                if (err) {
                    fprintf(stderr, "error: marlin_cuda(%s, m=%d) returned %d\n", s.name, m, err);
                    exit(1);
                }
            };
            for (int c = 0; c < 2 * copies; c++) call(c % copies);
            CHECK(cudaStreamSynchronize(stream));
            std::vector<float> us;
            for (int r = 0; r < rounds; r++) {
                CHECK(cudaEventRecord(t0, stream));
                for (int i = 0; i < calls; i++) call(i % copies);
                CHECK(cudaEventRecord(t1, stream));
                CHECK(cudaEventSynchronize(t1));
                float ms = 0.f;
                CHECK(cudaEventElapsedTime(&ms, t0, t1));
                us.push_back(ms * 1e3f / calls);
            }
            CHECK(cudaGetLastError());
            std::sort(us.begin(), us.end());
            const float med = us[rounds / 2];
            printf("%-8s %6d %10.2f %9.2f\n", s.name, m, med, (wbytes + sbytes) / (med * 1e-6) / 1e12);
            fflush(stdout);
        }
        for (int c = 0; c < copies; c++) {
            CHECK(cudaFree(w[c]));
            CHECK(cudaFree(sc[c]));
        }
        CHECK(cudaFree(a));
        CHECK(cudaFree(out));
        CHECK(cudaFree(ws));
    }
    return 0;
}
