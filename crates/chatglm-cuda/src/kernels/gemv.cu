// Matrix-vector products for decode (1 to 8 tokens): out = x · wᵀ.
//
// Batch-1 decode is a pure weight stream (11.95 GB per token for ChatGLM2-6B
// in f16), so the kernel exists to keep enough bytes in flight: each lane
// issues four 16-byte streaming loads and requests the next four before
// using the current ones. x (f32, at most 8 rows of `cols`) is small and
// stays in L1/L2; the weights bypass L1.
//
// Launch: blockDim = 128 (4 warps: small blocks even out the load over the
// SMs); gridDim = ceil(warps / 4), warps = out_rows (MODE 0, 1) or
// half_rows (MODE 2).
// With `nw` (non-null), x is first RMS-normalised per token with weights nw
// (the RMSNorm before the product, fused): each warp sums the squares of x
// from the loads it makes anyway, the norm weights are folded into the
// weights as they stream, and 1/rms scales the finished dot product.
// MODE 0: out[t, r] = x[t]·w[r] + bias[r] (bias may be null).
// MODE 1: out[t, r] += x[t]·w[r] (the residual add, fused).
// MODE 2: SwiGLU fused: out[t, r] = silu(x[t]·w[r]) · (x[t]·w[r + half_rows]),
//         for r < half_rows; out has half_rows columns.
// Needs cols % (16 / sizeof(weight)) == 0 and 16-byte aligned rows (checked
// on the host); gemv_scalar handles any shape.


__device__ __forceinline__ float silu(float a) { return a / (1.0f + expf(-a)); }

template <int T, int NT, int R, int U>
__device__ __forceinline__ void gemv_load(const char* const* p, int base, int lane, int nvec, uint4 (*wv)[U]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int v = base + u * WARP + lane;
#pragma unroll
        for (int r = 0; r < R; r++)
            if (v < nvec) wv[r][u] = ld_stream(p[r] + (long)v * 16);
    }
}

template <int T, int NT, int MODE>
__device__ __forceinline__ void gemv_body(const void* __restrict__ w, const float* __restrict__ x,
                                          const float* __restrict__ bias, float* __restrict__ out,
                                          int out_rows, int cols, int half_rows,
                                          const float* __restrict__ nw, float eps) {
    // One weight row per warp (two for SwiGLU: gate and up), 4 loads of 16
    // bytes per lane per batch, double-buffered: the next batch is requested
    // before the current one is used. 64 registers (launch bounds) let 8
    // blocks share an SM, so a 4096-row matrix runs in one wave.
    constexpr int R = MODE == 2 ? 2 : 1;
    constexpr int U = 4 / R;
    constexpr int V = Vec16<T>::N;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const long row_bytes = (long)cols * (T == 0 ? 4 : 2);
    const bool active = MODE == 2 ? warp < half_rows : warp < out_rows;
    const int r0 = active ? warp : 0;
    const char* p[R];
    p[0] = (const char*)w + r0 * row_bytes;
    if (R == 2) p[R - 1] = (const char*)w + (long)(r0 + half_rows) * row_bytes;
    const int nvec = cols / V;
    const int step = WARP * U;

    uint4 cur[R][U], nxt[R][U];
    pdl_launch_dependents();
    if (!active) return;
    // Weights do not depend on the kernel before: stream the first batch
    // before waiting for it to finish writing x.
    gemv_load<T, NT, R, U>(p, 0, lane, nvec, cur);
    pdl_wait();

    // With a norm, the sum of squares of x accumulates from the same x loads
    // (no extra pass, no block barrier); 1/rms scales the dot products at the
    // end, the norm weights are folded into the weights as they stream.
    float acc[R][NT], ssq[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        ssq[t] = 0.f;
#pragma unroll
        for (int r = 0; r < R; r++) acc[r][t] = 0.f;
    }

    for (int base = 0; base < nvec; base += step) {
        if (base + step < nvec) gemv_load<T, NT, R, U>(p, base + step, lane, nvec, nxt);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = base + u * WARP + lane;
            if (v < nvec) {
                float f[R][V];
#pragma unroll
                for (int r = 0; r < R; r++) Vec16<T>::unpack(cur[r][u], f[r]);
                if (nw) {
                    const float4* np = (const float4*)(nw + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 g = np[q];
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            f[r][4 * q] *= g.x; f[r][4 * q + 1] *= g.y; f[r][4 * q + 2] *= g.z; f[r][4 * q + 3] *= g.w;
                        }
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4* xp = (const float4*)(x + (long)t * cols + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 xv = xp[q];
                        if (nw) {
                            ssq[t] = fmaf(xv.x, xv.x, ssq[t]); ssq[t] = fmaf(xv.y, xv.y, ssq[t]);
                            ssq[t] = fmaf(xv.z, xv.z, ssq[t]); ssq[t] = fmaf(xv.w, xv.w, ssq[t]);
                        }
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            acc[r][t] = fmaf(f[r][4 * q + 0], xv.x, acc[r][t]);
                            acc[r][t] = fmaf(f[r][4 * q + 1], xv.y, acc[r][t]);
                            acc[r][t] = fmaf(f[r][4 * q + 2], xv.z, acc[r][t]);
                            acc[r][t] = fmaf(f[r][4 * q + 3], xv.w, acc[r][t]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int u = 0; u < U; u++) cur[r][u] = nxt[r][u];
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc[0][t]);
        float b = warp_sum(acc[R - 1][t]);
        if (nw) {
            const float inv = 1.0f / sqrtf(warp_sum(ssq[t]) / (float)cols + eps);
            a *= inv;
            b *= inv;
        }
        if (lane == 0) {
            if (MODE == 0) {
                out[(long)t * out_rows + r0] = a + (bias ? bias[r0] : 0.f);
            } else if (MODE == 1) {
                out[(long)t * out_rows + r0] += a;
            } else {
                out[(long)t * half_rows + r0] = silu(a) * b;
            }
        }
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
    extern "C" __global__ void __launch_bounds__(128, ((NT) <= 2 ? 8 : 4))                          \
        gemv_##T##_##NT##_##MODE(const void* w, const float* x, const float* bias, float* out,     \
                                 int out_rows, int cols, int half_rows, const float* nw, float eps) {\
        gemv_body<T, NT, MODE>(w, x, bias, out, out_rows, cols, half_rows, nw, eps);                \
    }

#define GEMV_MODES(T, NT) GEMV_KERNEL(T, NT, 0) GEMV_KERNEL(T, NT, 1) GEMV_KERNEL(T, NT, 2)
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
