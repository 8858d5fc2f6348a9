// Matrix-vector products for decode (1 to 8 tokens): out = x · wᵀ.
//
// Batch-1 decode is a pure weight stream (11.95 GB per token for ChatGLM2-6B
// in f16), so the kernel exists to have every block's bytes requested at
// once and to keep blocks short (a kernel's last wave and first bytes are
// what a small matrix loses). A block of 4 warps owns 4 weight rows and
// splits their columns between its warps (each warp a 512-byte-interleaved
// quarter); a lane requests 2 vectors of all 4 rows per batch, and the next
// batch before using the current one, so a 4096-wide f16 row is one round
// trip. Partial sums meet in shared memory.
//
// Launch: blockDim = 128; gridDim = ceil(out_rows / ROWS) (MODE 0, 1) or
// ceil(half_rows / (ROWS/2)) (MODE 2: gate rows and their half_rows partners).
// gemv_* take ROWS = 4 with 2 vectors per batch, gemv8_* ROWS = 8 with 1:
// fewer, longer blocks, for matrices whose 4-row blocks would not fit in one
// wave.
// With `nw` (non-null), x is first RMS-normalised per token with weights nw
// (the RMSNorm before the product, fused): the sums of squares come from the
// x loads the product makes anyway, the norm weights are folded into the
// weights as they stream, and 1/rms scales the finished dot products.
// MODE 0: out[t, r] = x[t]·w[r] + bias[r] (bias may be null).
// MODE 1: out[t, r] += x[t]·w[r] (the residual add, fused).
// MODE 2: SwiGLU fused: out[t, r] = silu(x[t]·w[r]) · (x[t]·w[r + half_rows]),
//         for r < half_rows; out has half_rows columns.
// MODE 3: the attention's QKV projection: MODE 0, then RoPE on the query and
//         key rows (the partner row of a rotated pair is in the same block:
//         blocks start at multiples of 4 rows) and the key and value rows
//         appended to the paged cache (RopeCtx). Saves a launch and a pass
//         over the rows per layer of a decode step.
// Needs cols % (16 / sizeof(weight)) == 0 and 16-byte aligned rows (checked
// on the host); gemv_scalar handles any shape.


// 0: double buffer copied at the end of each batch (the copy waits for the
// next batch's loads, so one batch is in flight through each wait, with 8
// rows and 4 resident blocks a SM: 16 KB a block); 1: ping-pong buffers (two
// batches in flight), for measurements (CHATGLM_NVRTC_DEFINES=GEMV_PINGPONG=1).
// Measured on the H200 (6B f16, run 48): ping-pong takes more registers (the
// 4-row kernel 96 → 128: 4 blocks a SM instead of 5, lean QKV 91 → 96) and
// decodes 1% slower (297.2 / 285.7 against 299.4 / 289.1 tok/s alternating).
#ifndef GEMV_PINGPONG
#define GEMV_PINGPONG 0
#endif

template <int GEMV_ROWS, int GEMV_U>
__device__ __forceinline__ void gemv_load(const char* const* p, const bool* ok, int base, int nvec,
                                          uint4 (*wv)[GEMV_U]) {
#pragma unroll
    for (int u = 0; u < GEMV_U; u++) {
        const int v = base + u * 128;
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
            if (v < nvec && ok[r]) wv[r][u] = ld_stream(p[r] + (long)v * 16);
    }
}

// GEMV_ROWS weight rows per block, GEMV_U vectors of each per lane per batch.
template <int T, int NT, int MODE, int GEMV_ROWS, int GEMV_U>
__device__ __forceinline__ void gemv_body(const void* __restrict__ w, const float* __restrict__ x,
                                          const float* __restrict__ bias, float* __restrict__ out,
                                          int out_rows, int cols, int half_rows,
                                          const float* __restrict__ nw, float eps, int prefetch,
                                          const RopeCtx& rc) {
    constexpr int V = Vec16<T>::N;
    __shared__ float red[4][GEMV_ROWS + 1][NT];
    __shared__ TokenSlot slots[MODE == 3 ? NT : 1];
    const int wid = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long row_bytes = (long)cols * (T == 0 ? 4 : 2);
    // The block's weight rows and which of them exist.
    int row[GEMV_ROWS];
    bool ok[GEMV_ROWS];
    if (MODE == 2) {
        // Gate rows q0.. and their up partners half_rows later.
        constexpr int H = GEMV_ROWS / 2;
        const int q0 = blockIdx.x * H;
#pragma unroll
        for (int i = 0; i < H; i++) {
            row[i] = q0 + i;
            row[i + H] = q0 + i + half_rows;
            ok[i] = ok[i + H] = q0 + i < half_rows;
        }
    } else {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            row[r] = blockIdx.x * GEMV_ROWS + r;
            ok[r] = row[r] < out_rows;
        }
    }
    const char* p[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) p[r] = (const char*)w + (ok[r] ? row[r] : 0) * row_bytes;
    const int nvec = cols / V;
    const int first = wid * 32 + lane;  // this lane's first vector; then every 128

    constexpr int STRIDE = 128 * GEMV_U;  // vectors of a row per block batch
    uint4 wa[GEMV_ROWS][GEMV_U], wb[GEMV_ROWS][GEMV_U];
    pdl_launch_dependents();
    // Weights do not depend on the kernel before: request them before
    // waiting for it to finish writing x — the first two batches into
    // registers, and up to `prefetch` bytes of each row after them towards
    // L2, so a block made resident early streams its weights while the
    // kernel before runs.
    gemv_load<GEMV_ROWS, GEMV_U>(p, ok, first, nvec, wa);
    if (GEMV_PINGPONG && first + STRIDE < nvec) gemv_load<GEMV_ROWS, GEMV_U>(p, ok, first + STRIDE, nvec, wb);
    if (MODE == 3) preload_token_slots(rc, NT, NT, slots);
    if (prefetch > 0) {
        const long lim = min(row_bytes, (long)prefetch);
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
            if (ok[r])
                for (long b = (GEMV_PINGPONG ? 2 : 1) * 128 * 16 * GEMV_U + threadIdx.x * 128L; b < lim; b += 128 * 128)
                    prefetch_l2(p[r] + b);
    }
    pdl_wait();

    float acc[GEMV_ROWS][NT], ssq[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        ssq[t] = 0.f;
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[r][t] = 0.f;
    }
    // The batch at `base` (this lane's vectors base, base + 128, …) into acc.
    auto consume = [&](const uint4 (&wv)[GEMV_ROWS][GEMV_U], int base) {
#pragma unroll
        for (int u = 0; u < GEMV_U; u++) {
            const int v = base + u * 128;
            if (v < nvec) {
                float g[V];
                if (nw) {
                    const float4* np = (const float4*)(nw + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 n4 = np[q];
                        g[4 * q] = n4.x; g[4 * q + 1] = n4.y; g[4 * q + 2] = n4.z; g[4 * q + 3] = n4.w;
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    float xs[V];
                    const float4* xp = (const float4*)(x + (long)t * cols + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 xv = xp[q];
                        xs[4 * q] = xv.x; xs[4 * q + 1] = xv.y; xs[4 * q + 2] = xv.z; xs[4 * q + 3] = xv.w;
                    }
                    if (nw) {
#pragma unroll
                        for (int i = 0; i < V; i++) {
                            ssq[t] = fmaf(xs[i], xs[i], ssq[t]);
                            xs[i] *= g[i];
                        }
                    }
#pragma unroll
                    for (int r = 0; r < GEMV_ROWS; r++) {
                        float f[V];
                        Vec16<T>::unpack(wv[r][u], f);
#pragma unroll
                        for (int i = 0; i < V; i++) acc[r][t] = fmaf(f[i], xs[i], acc[r][t]);
                    }
                }
            }
        }
    };
    if (GEMV_PINGPONG) {
        // Two batches in flight through every wait: while the lane waits
        // for wa, wb's loads are already out, and each buffer is reloaded
        // as soon as it is used (a copy nxt → cur would wait for nxt's
        // loads, leaving one batch in flight).
        for (int base = first; base < nvec; base += 2 * STRIDE) {
            consume(wa, base);
            if (base + 2 * STRIDE < nvec) gemv_load<GEMV_ROWS, GEMV_U>(p, ok, base + 2 * STRIDE, nvec, wa);
            if (base + STRIDE < nvec) {
                consume(wb, base + STRIDE);
                if (base + 3 * STRIDE < nvec) gemv_load<GEMV_ROWS, GEMV_U>(p, ok, base + 3 * STRIDE, nvec, wb);
            }
        }
    } else {
        for (int base = first; base < nvec; base += STRIDE) {
            if (base + STRIDE < nvec) gemv_load<GEMV_ROWS, GEMV_U>(p, ok, base + STRIDE, nvec, wb);
            consume(wa, base);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
                for (int u = 0; u < GEMV_U; u++) wa[r][u] = wb[r][u];
        }
    }
    // Warp sums, then the 4 warps' quarters meet in shared memory.
#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            const float a = warp_sum(acc[r][t]);
            if (lane == 0) red[wid][r][t] = a;
        }
        const float q = warp_sum(ssq[t]);
        if (lane == 0) red[wid][GEMV_ROWS][t] = q;
    }
    __syncthreads();
    if (threadIdx.x >= NT * (MODE == 2 ? GEMV_ROWS / 2 : GEMV_ROWS)) return;
    const int t = threadIdx.x % NT;
    const int r = threadIdx.x / NT;
    float inv = 1.f;
    if (nw) inv = 1.0f / sqrtf((red[0][GEMV_ROWS][t] + red[1][GEMV_ROWS][t] + red[2][GEMV_ROWS][t] +
                                red[3][GEMV_ROWS][t]) / (float)cols + eps);
    const float a = (red[0][r][t] + red[1][r][t] + red[2][r][t] + red[3][r][t]) * inv;
    if (MODE == 2) {
        if (!ok[r]) return;
        const int u = r + GEMV_ROWS / 2;
        const float b = (red[0][u][t] + red[1][u][t] + red[2][u][t] + red[3][u][t]) * inv;
        out[(long)t * half_rows + row[r]] = silu(a) * b;
    } else if (MODE == 3) {
        if (!ok[r]) return;
        const int pr = r ^ 1;
        const float b = (red[0][pr][t] + red[1][pr][t] + red[2][pr][t] + red[3][pr][t]) * inv;
        qkv_epilogue_at(rc, slots[t], out, out_rows, t, row[r], a + (bias ? bias[row[r]] : 0.f),
                        b + (bias ? bias[row[pr]] : 0.f));
    } else {
        if (!ok[r]) return;
        if (MODE == 0) out[(long)t * out_rows + row[r]] = a + (bias ? bias[row[r]] : 0.f);
        else out[(long)t * out_rows + row[r]] += a;
    }
}

// Any shape, any alignment: one warp per output row, element loads.
template <int T, int MODE>
__device__ __forceinline__ void gemv_scalar_body(const void* __restrict__ w_, const float* __restrict__ x,
                                                 const float* __restrict__ bias, float* __restrict__ out,
                                                 int n_tokens, int out_rows, int cols, int half_rows,
                                                 const float* __restrict__ nw, float eps) {
    pdl_launch_dependents();
    pdl_wait();
    typedef typename Elem<T>::storage S;
    const S* w = (const S*)w_;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int n_out = MODE == 2 ? half_rows : out_rows;
    if (warp >= n_out) return;
    for (int t = 0; t < n_tokens; t++) {
        float inv = 1.f;
        if (nw) {
            float ss = 0.f;
            for (int c = lane; c < cols; c += WARP) ss = fmaf(x[(long)t * cols + c], x[(long)t * cols + c], ss);
            inv = 1.0f / sqrtf(warp_sum(ss) / (float)cols + eps);
        }
        float a = 0.f, b = 0.f;
        for (int c = lane; c < cols; c += WARP) {
            const float xv = nw ? x[(long)t * cols + c] * inv * nw[c] : x[(long)t * cols + c];
            a = fmaf(Elem<T>::load(w, (long)warp * cols + c), xv, a);
            if (MODE == 2) b = fmaf(Elem<T>::load(w, (long)(warp + half_rows) * cols + c), xv, b);
        }
        a = warp_sum(a);
        b = warp_sum(b);
        if (lane == 0) {
            if (MODE == 0) out[(long)t * out_rows + warp] = a + (bias ? bias[warp] : 0.f);
            else if (MODE == 1) out[(long)t * out_rows + warp] += a;
            else out[(long)t * half_rows + warp] = silu(a) * b;
        }
    }
}

#define GEMV_KERNEL(T, NT, MODE)                                                                   \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv_##T##_##NT##_##MODE(const void* w, const float* x, const float* bias, float* out,     \
                                 int out_rows, int cols, int half_rows, const float* nw, float eps, int pf) {\
        gemv_body<T, NT, MODE, 4, 2>(w, x, bias, out, out_rows, cols, half_rows, nw, eps, pf, RopeCtx()); \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv8_##T##_##NT##_##MODE(const void* w, const float* x, const float* bias, float* out,    \
                                  int out_rows, int cols, int half_rows, const float* nw, float eps, int pf) {\
        gemv_body<T, NT, MODE, 8, 1>(w, x, bias, out, out_rows, cols, half_rows, nw, eps, pf, RopeCtx()); \
    }

// The QKV projection with RoPE and the cache append (MODE 3).
#define GEMV_QKV(T, NT)                                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv_qkv_##T##_##NT(const void* w, const float* x, const float* bias, float* out,          \
                            int out_rows, int cols, const float* nw, float eps, int pf, RopeCtx rc) {\
        gemv_body<T, NT, 3, 4, 2>(w, x, bias, out, out_rows, cols, 0, nw, eps, pf, rc);             \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv8_qkv_##T##_##NT(const void* w, const float* x, const float* bias, float* out,         \
                             int out_rows, int cols, const float* nw, float eps, int pf, RopeCtx rc) {\
        gemv_body<T, NT, 3, 8, 1>(w, x, bias, out, out_rows, cols, 0, nw, eps, pf, rc);             \
    }

// One-token 8-row kernels held to 5 blocks per SM (91 registers, no spills;
// the gemv8 kernels take 128, 4 per SM): the 6B QKV product's 576 blocks then
// fit in one wave of 660 instead of 1.09 waves of 528, whose last 48 blocks
// ran alone, latency-bound.
#define GEMV_LEAN_MODE(T, MODE)                                                                     \
    extern "C" __global__ void __launch_bounds__(128, 5)                                            \
        gemv8l_##T##_1_##MODE(const void* w, const float* x, const float* bias, float* out, int out_rows, \
                              int cols, int half_rows, const float* nw, float eps, int pf) {        \
        gemv_body<T, 1, MODE, 8, 1>(w, x, bias, out, out_rows, cols, half_rows, nw, eps, pf, RopeCtx()); \
    }
#define GEMV_LEAN(T)                                                                                \
    GEMV_LEAN_MODE(T, 0) GEMV_LEAN_MODE(T, 1) GEMV_LEAN_MODE(T, 2)                                  \
    extern "C" __global__ void __launch_bounds__(128, 5)                                            \
        gemv8l_qkv_##T##_1(const void* w, const float* x, const float* bias, float* out, int out_rows, \
                           int cols, const float* nw, float eps, int pf, RopeCtx rc) {              \
        gemv_body<T, 1, 3, 8, 1>(w, x, bias, out, out_rows, cols, 0, nw, eps, pf, rc);              \
    }

GEMV_LEAN(1)
GEMV_LEAN(2)

#define GEMV_MODES(T, NT) GEMV_KERNEL(T, NT, 0) GEMV_KERNEL(T, NT, 1) GEMV_KERNEL(T, NT, 2) GEMV_QKV(T, NT)
#define GEMV_TOKENS(T)                                                                              \
    GEMV_MODES(T, 1) GEMV_MODES(T, 2) GEMV_MODES(T, 3) GEMV_MODES(T, 4) GEMV_MODES(T, 5)            \
    GEMV_MODES(T, 6) GEMV_MODES(T, 7) GEMV_MODES(T, 8)

GEMV_TOKENS(0)
GEMV_TOKENS(1)
GEMV_TOKENS(2)

#define GEMV_SCALAR(T, MODE)                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        gemv_scalar_##T##_##MODE(const void* w, const float* x, const float* bias, float* out,     \
                                 int n_tokens, int out_rows, int cols, int half_rows,               \
                                 const float* nw, float eps) {                                      \
        gemv_scalar_body<T, MODE>(w, x, bias, out, n_tokens, out_rows, cols, half_rows, nw, eps);   \
    }

GEMV_SCALAR(0, 0) GEMV_SCALAR(0, 1) GEMV_SCALAR(0, 2)
GEMV_SCALAR(1, 0) GEMV_SCALAR(1, 1) GEMV_SCALAR(1, 2)
GEMV_SCALAR(2, 0) GEMV_SCALAR(2, 1) GEMV_SCALAR(2, 2)
