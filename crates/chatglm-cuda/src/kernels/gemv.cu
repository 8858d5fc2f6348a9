// Matrix-vector products for decode (1 to 8 tokens): out = x · wᵀ.
//
// Batch-1 decode is a pure weight stream (11.95 GB per token for ChatGLM2-6B
// in f16), so the kernel exists to keep enough bytes in flight: one warp owns
// two weight rows, each lane issues 16-byte streaming loads of both rows,
// UNROLL deep, before the first use. x (f32, at most 8 rows of `cols`) is
// small and stays in L1/L2; the weights bypass L1.
//
// Launch: blockDim = 128 (4 warps: small blocks even out the load over the
// SMs); gridDim = ceil(warps / 4) where warps =
// ceil(out_rows / 2) (MODE 0, 1) or half_rows (MODE 2).
// With `nw` (non-null), x is first RMS-normalised per token with weights nw
// (the RMSNorm before the product, fused): each block computes the token's
// 1/rms itself (x is small and in L2), the norm weights are folded into the
// weights as they stream, and 1/rms scales the finished dot product.
// MODE 0: out[t, r] = x[t]·w[r] + bias[r] (bias may be null).
// MODE 1: out[t, r] += x[t]·w[r] (the residual add, fused).
// MODE 2: SwiGLU fused: out[t, r] = silu(x[t]·w[r]) · (x[t]·w[r + half_rows]),
//         for r < half_rows; out has half_rows columns.
// Needs cols % (16 / sizeof(weight)) == 0 and 16-byte aligned rows (checked
// on the host); gemv_scalar handles any shape.

#define GEMV_UNROLL 4

__device__ __forceinline__ float silu(float a) { return a / (1.0f + expf(-a)); }

// 1/rms of each of the NT rows of x, computed by the whole block (every
// thread must call it: it synchronises).
template <int NT>
__device__ __forceinline__ void block_inv_rms(const float* __restrict__ x, int cols, float eps, float* inv_s) {
    const int lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    for (int t = threadIdx.x >> 5; t < NT; t += nwarps) {
        const float4* xr = (const float4*)(x + (long)t * cols);
        float ss = 0.f;
        for (int c = lane; c < cols / 4; c += WARP) {
            const float4 v = xr[c];
            ss = fmaf(v.x, v.x, ss); ss = fmaf(v.y, v.y, ss); ss = fmaf(v.z, v.z, ss); ss = fmaf(v.w, v.w, ss);
        }
        ss = warp_sum(ss);
        if (lane == 0) inv_s[t] = 1.0f / sqrtf(ss / (float)cols + eps);
    }
    __syncthreads();
}

template <int T, int NT, int MODE>
__device__ __forceinline__ void gemv_body(const void* __restrict__ w, const float* __restrict__ x,
                                          const float* __restrict__ bias, float* __restrict__ out,
                                          int out_rows, int cols, int half_rows,
                                          const float* __restrict__ nw, float eps) {
    __shared__ float inv_s[NT];
    if (nw) block_inv_rms<NT>(x, cols, eps, inv_s);
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int V = Vec16<T>::N;
    const int row_bytes = cols * (T == 0 ? 4 : 2);
    int ra, rb;
    bool has_b = true;
    if (MODE == 2) {
        if (warp >= half_rows) return;
        ra = warp;
        rb = warp + half_rows;
    } else {
        ra = 2 * warp;
        if (ra >= out_rows) return;
        rb = ra + 1;
        if (rb >= out_rows) { rb = ra; has_b = false; }
    }
    const char* pa = (const char*)w + (long)ra * row_bytes;
    const char* pb = (const char*)w + (long)rb * row_bytes;
    const int nvec = cols / V;
    float acc_a[NT], acc_b[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) { acc_a[t] = 0.f; acc_b[t] = 0.f; }

    for (int base = 0; base < nvec; base += WARP * GEMV_UNROLL) {
        uint4 wa[GEMV_UNROLL], wb[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int v = base + u * WARP + lane;
            if (v < nvec) {
                wa[u] = ld_stream(pa + (long)v * 16);
                wb[u] = ld_stream(pb + (long)v * 16);
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int v = base + u * WARP + lane;
            if (v < nvec) {
                float fa[V], fb[V];
                Vec16<T>::unpack(wa[u], fa);
                Vec16<T>::unpack(wb[u], fb);
                if (nw) {
                    const float4* np = (const float4*)(nw + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 g = np[q];
                        fa[4 * q] *= g.x; fa[4 * q + 1] *= g.y; fa[4 * q + 2] *= g.z; fa[4 * q + 3] *= g.w;
                        fb[4 * q] *= g.x; fb[4 * q + 1] *= g.y; fb[4 * q + 2] *= g.z; fb[4 * q + 3] *= g.w;
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4* xp = (const float4*)(x + (long)t * cols + (long)v * V);
#pragma unroll
                    for (int q = 0; q < V / 4; q++) {
                        const float4 xv = xp[q];
                        acc_a[t] = fmaf(fa[4 * q + 0], xv.x, acc_a[t]);
                        acc_a[t] = fmaf(fa[4 * q + 1], xv.y, acc_a[t]);
                        acc_a[t] = fmaf(fa[4 * q + 2], xv.z, acc_a[t]);
                        acc_a[t] = fmaf(fa[4 * q + 3], xv.w, acc_a[t]);
                        acc_b[t] = fmaf(fb[4 * q + 0], xv.x, acc_b[t]);
                        acc_b[t] = fmaf(fb[4 * q + 1], xv.y, acc_b[t]);
                        acc_b[t] = fmaf(fb[4 * q + 2], xv.z, acc_b[t]);
                        acc_b[t] = fmaf(fb[4 * q + 3], xv.w, acc_b[t]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc_a[t]);
        float b = warp_sum(acc_b[t]);
        if (nw) { a *= inv_s[t]; b *= inv_s[t]; }
        if (lane == 0) {
            if (MODE == 0) {
                out[(long)t * out_rows + ra] = a + (bias ? bias[ra] : 0.f);
                if (has_b) out[(long)t * out_rows + rb] = b + (bias ? bias[rb] : 0.f);
            } else if (MODE == 1) {
                out[(long)t * out_rows + ra] += a;
                if (has_b) out[(long)t * out_rows + rb] += b;
            } else {
                out[(long)t * half_rows + ra] = silu(a) * b;
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
