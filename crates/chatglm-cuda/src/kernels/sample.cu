// Sampling on the GPU: each logits row's token is chosen on the device and
// only its id crosses to the host. The choice follows the host's reference
// sampler (chatglm-engine's sampling.rs) step for step: the NaN/inf guard,
// temperature, top-k (ties with the k-th kept), softmax over what top-k kept,
// top-p cut walking down from the most likely token, renormalisation, then
// the token where the running sum first exceeds the host's uniform draw.
// Order is by logit descending, then id ascending, as the host sorts.
//
// One block per row: a 4-pass radix select finds the k-th largest scaled
// logit (k = top-k, else SAMPLE_CANDIDATES), the tokens at or above it are
// gathered and bitonic-sorted in shared memory, and one thread walks the
// sorted list in f64 as the host does. Rows whose top-p nucleus or draw
// reaches past the sorted candidates (a flat distribution), or whose top-k
// exceeds them, are left to the host: out = -1.
//
// Exponentials are f32 results of an f64 exp, so they round as the host's
// correctly rounded expf does (CUDA's expf may differ in the last bit, and a
// tied distribution puts draws exactly on the boundaries).
//
// grid = rows, block = 1024.
#define SAMPLE_THREADS 1024
#define SAMPLE_CANDIDATES 1024
#define SAMPLE_SORT 2048

// Per row; matches the host's #[repr(C)] SampleRow.
struct SampleRow {
    float temperature;  // <= 0: greedy
    float top_p;
    int top_k;          // 0: off
    int pad;
    double uniform;     // the host RNG's draw in [0, 1)
};

// Float bits in an order where larger floats give larger unsigned values.
__device__ __forceinline__ u32 float_order(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float order_float(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ float exp_f32(float x) { return (float)exp((double)x); }

__device__ __forceinline__ double block_sum_f64(double v, double* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    double s = 0.0;
    for (int i = 0; i < SAMPLE_THREADS / 32; i++) s += red[i];
    return s;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* logits, int vocab, const SampleRow* rows, int* out) {
    __shared__ unsigned long long keys[SAMPLE_SORT];
    __shared__ float probs[SAMPLE_SORT];
    __shared__ u32 hist[256];
    __shared__ double red_d[32];
    __shared__ float red_f[32];
    __shared__ u32 sel_prefix;
    __shared__ int sel_rank, n_found;
    pdl_launch_dependents();
    pdl_wait();
    const int r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const float* x = logits + (long)r * vocab;
    const SampleRow p = rows[r];
    const bool greedy = !(p.temperature > 0.f);
    const float t = greedy ? 1.f : fmaxf(p.temperature, 1e-6f);

    // The guard, and the largest scaled logit.
    float mx = -INFINITY;
    int bad = 0;
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
        const float v = x[i];
        bad |= !(fabsf(v) <= 3.402823466e38f);
        mx = fmaxf(mx, v / t);
    }
    bad = __syncthreads_or(bad);
    if (bad) {
        // Zeros with 5e4 at index 5: token 5 (the host's draw over a
        // vocabulary of 5 or fewer zeros is left to the host).
        if (tid == 0) out[r] = vocab > 5 ? 5 : (greedy ? 0 : -1);
        return;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red_f[w] = mx;
    __syncthreads();
    mx = red_f[0];
    for (int i = 1; i < SAMPLE_THREADS / 32; i++) mx = fmaxf(mx, red_f[i]);

    const bool top_k_on = !greedy && p.top_k > 0 && p.top_k < vocab;
    if (top_k_on && p.top_k > SAMPLE_CANDIDATES) {
        if (tid == 0) out[r] = -1;
        return;
    }
    const int k = greedy ? 1 : top_k_on ? p.top_k : min(vocab, SAMPLE_CANDIDATES);

    // Radix select: the key of the k-th largest scaled logit.
    u32 prefix = 0, mask = 0;
    if (tid == 0) sel_rank = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
            const u32 key = float_order(x[i] / t);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            int acc = 0, b = 255;
            for (; b > 0; b--) {
                if (acc + (int)hist[b] >= sel_rank) break;
                acc += hist[b];
            }
            sel_rank -= acc;
            sel_prefix = prefix | ((u32)b << shift);
        }
        __syncthreads();
        prefix = sel_prefix;
        mask |= 255u << shift;
    }
    const u32 kth = prefix;

    // Everything at or above it (ties included), sorted by (logit desc, id asc).
    if (tid == 0) n_found = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
        const u32 key = float_order(x[i] / t);
        if (key >= kth) {
            const int at = atomicAdd(&n_found, 1);
            if (at < SAMPLE_SORT) keys[at] = ((unsigned long long)key << 32) | (u32)~(u32)i;
        }
    }
    __syncthreads();
    const int n = n_found;
    if (n > SAMPLE_SORT) {
        if (tid == 0) out[r] = -1;
        return;
    }
    for (int i = n + tid; i < SAMPLE_SORT; i += SAMPLE_THREADS) keys[i] = 0ull;
    __syncthreads();
    for (int size = 2; size <= SAMPLE_SORT; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            const int i = 2 * tid - (tid & (stride - 1)), j = i + stride;
            const bool desc = (i & size) == 0;
            const unsigned long long a = keys[i], b = keys[j];
            if ((a < b) == desc) {
                keys[i] = b;
                keys[j] = a;
            }
            __syncthreads();
        }
    }
    if (greedy) {
        if (tid == 0) out[r] = (int)~(u32)(keys[0] & 0xffffffffull);
        return;
    }

    // Softmax over what top-k kept (the whole vocabulary without top-k),
    // each term an f32 exponential summed in f64 as the host does.
    double part = 0.0;
    if (top_k_on) {
        for (int i = tid; i < n; i += SAMPLE_THREADS) part += (double)exp_f32(order_float((u32)(keys[i] >> 32)) - mx);
    } else {
        for (int i = tid; i < vocab; i += SAMPLE_THREADS) part += (double)exp_f32(x[i] / t - mx);
    }
    const double total = block_sum_f64(part, red_d);
    for (int i = tid; i < n; i += SAMPLE_THREADS)
        probs[i] = (float)((double)exp_f32(order_float((u32)(keys[i] >> 32)) - mx) / total);
    __syncthreads();
    if (tid != 0) return;
    // `complete`: the sorted candidates are everything kept.
    const bool complete = top_k_on || n == vocab;
    int keep = n;
    double norm = 1.0;
    if (p.top_p < 1.f) {
        const double threshold = 1.0 - (double)p.top_p;
        double below = 1.0;
        int m = 0;
        for (;;) {
            if (below <= threshold && m > 0) break;
            if (m == n) {
                if (complete) break;
                out[r] = -1;
                return;
            }
            below -= (double)probs[m];
            m++;
        }
        keep = m;
        double s = 0.0;
        for (int i = 0; i < keep; i++) s += (double)probs[i];
        norm = s;
    }
    double acc = 0.0;
    for (int i = 0; i < keep; i++) {
        const float pi = p.top_p < 1.f ? (float)((double)probs[i] / norm) : probs[i];
        acc += (double)pi;
        if (p.uniform < acc) {
            out[r] = (int)~(u32)(keys[i] & 0xffffffffull);
            return;
        }
    }
    // Past every kept token: the host takes the last one, if it is here.
    out[r] = (keep == n && !complete) ? -1 : (int)~(u32)(keys[keep - 1] & 0xffffffffull);
}
