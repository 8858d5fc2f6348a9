// What the decode attention kernels share (attention.cu's CUDA-core kernel
// and decode_mma.cu's tensor-core one): head size, how a token's context is
// split over the grid, L2 prefetch of cache rows, and the end of a block —
// merging its 4 warps, then (with several splits) the last block of each
// (token, group, head slice) merging the splits.
#define DEC_D 128
#define DEC_SLICE 128

// Starts key `k`'s row and its value row (group g of `layer`, f16, head size
// 128: two 128-byte lines each) towards L2; `table` is the sequence's block table.
__device__ __forceinline__ void prefetch_kv_row(const u64* table, int k, int block_tokens, int layer, int n_groups,
                                                int g) {
    const u16* blk = (const u16*)table[k / block_tokens];
    const long per_group = (long)block_tokens * DEC_D, row = (long)(k % block_tokens) * DEC_D;
    const u16* kr = blk + ((long)(layer * 2 + 0) * n_groups + g) * per_group + row;
    const u16* vr = blk + ((long)(layer * 2 + 1) * n_groups + g) * per_group + row;
    prefetch_l2(kr);
    prefetch_l2(kr + 64);
    prefetch_l2(vr);
    prefetch_l2(vr + 64);
}

// A token's splits for context `ctx`: its 128-key slices shared evenly over
// at most n_grid splits (the grid is sized for the step's longest context,
// or for the longest possible one when the launch is replayed from a graph).
// Returns the token's split count; [k_begin, k_end) is split `split`'s keys.
__device__ __forceinline__ int decode_split(int ctx, int n_grid, int split, int* k_begin, int* k_end) {
    const int slices = (ctx + DEC_SLICE - 1) / DEC_SLICE;
    const int n_even = min(n_grid, slices);
    const int chunk = (slices + n_even - 1) / n_even * DEC_SLICE;
    *k_begin = split * chunk;
    *k_end = min(ctx, *k_begin + chunk);
    return (ctx + chunk - 1) / chunk;
}

// Shared memory of a decode block's end: 4 warps' running max and sum
// (natural-log domain) and unnormalised output per head of the block (a
// block of more warps merges them down to 4 first).
template <int HB>
struct DecodeReduce {
    float m[4][HB], l[4][HB];
    __align__(16) float o[4][HB * DEC_D];
    int is_last;
};

// The end of a decode block (warps 0-3 have written their parts of `red` and
// the block has not synchronised since; any block size that is a multiple of 32): merges the 4 warps; with one split
// writes the normalised output of heads h0..h0+HB of group g, otherwise this
// split's partials, and the last split of the (token, group, head slice) to
// finish merges them all. The merge order is fixed (split order), so the
// result does not depend on which block came last; the counter is re-armed
// for the next launch.
template <int HG, int HB>
__device__ __forceinline__ void decode_finish(DecodeReduce<HB>& red, float* out, int out_width, int t, int wt, int g,
                                              int h0, int sub, int split, int n_grid, int n_splits, int n_groups,
                                              float* part_o, float* part_ml, int* counters) {
    constexpr int NSUB = HG / HB;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, nt = blockDim.x;
    __syncthreads();
    const long part = ((long)wt * n_groups + g) * n_grid + split;
    for (int i = tid; i < HB * DEC_D; i += nt) {
        const int hh = i / DEC_D, d = i % DEC_D, h = h0 + hh;
        float M = -INFINITY;
#pragma unroll
        for (int k = 0; k < 4; k++) M = fmaxf(M, red.m[k][hh]);
        float L = 0.f, O = 0.f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (red.m[k][hh] == -INFINITY) continue;  // a warp with no keys
            const float f = expf(red.m[k][hh] - M);
            L += red.l[k][hh] * f;
            O += red.o[k][i] * f;
        }
        if (n_splits == 1) {
            out[(long)t * out_width + (long)(g * HG + h) * DEC_D + d] = O / L;
        } else {
            part_o[(part * HG + h) * DEC_D + d] = O;
            if (d == 0) {
                part_ml[part * 2 * HG + h] = M;
                part_ml[part * 2 * HG + HG + h] = L;
            }
        }
    }
    if (n_splits == 1) return;
    // Each split's weight exp(m_s − M)/L is computed once into shared memory
    // (reusing red.o), then every output sums its n_splits partials with
    // independent L2 loads.
    __threadfence();
    __syncthreads();
    int* counter = counters + ((long)wt * n_groups + g) * NSUB + sub;
    if (tid == 0) red.is_last = atomicAdd(counter, 1) == n_splits - 1;
    __syncthreads();
    if (!red.is_last) return;
    __threadfence();
    const long base = ((long)wt * n_groups + g) * n_grid;
    float* wts = &red.o[0][0];  // [n_splits][HB], n_splits·HB ≤ 4·HB·DEC_D
    for (int hh = w; hh < HB; hh += nt / 32) {
        const int h = h0 + hh;
        float M = -INFINITY;
        for (int k = lane; k < n_splits; k += 32) M = fmaxf(M, __ldcg(&part_ml[(base + k) * 2 * HG + h]));
        M = warp_max(M);
        float L = 0.f;
        for (int k = lane; k < n_splits; k += 32) {
            const float mk = __ldcg(&part_ml[(base + k) * 2 * HG + h]);
            const float f = mk == -INFINITY ? 0.f : expf(mk - M);
            wts[k * HB + hh] = f;
            L += __ldcg(&part_ml[(base + k) * 2 * HG + HG + h]) * f;
        }
        L = warp_sum(L);
        for (int k = lane; k < n_splits; k += 32) wts[k * HB + hh] /= L;
    }
    __syncthreads();
    for (int i = tid; i < HB * DEC_D / 4; i += nt) {
        const int hh = i * 4 / DEC_D, d = i * 4 % DEC_D, h = h0 + hh;
        const float4* po = (const float4*)(part_o + (base * HG + h) * DEC_D + d);
        const long stride = (long)HG * DEC_D / 4;
        // 32 partials in flight at a time (a loop of dependent L2 round trips
        // would serialise the merge, which ends the step's attention); the
        // summation order is fixed.
        float4 O = make_float4(0.f, 0.f, 0.f, 0.f);
        int k = 0;
        for (; k + 32 <= n_splits; k += 32) {
            float4 v[32];
#pragma unroll
            for (int j = 0; j < 32; j++) v[j] = __ldcg(po + (k + j) * stride);
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const float f = wts[(k + j) * HB + hh];
                O.x += v[j].x * f; O.y += v[j].y * f; O.z += v[j].z * f; O.w += v[j].w * f;
            }
        }
        for (; k < n_splits; k++) {
            const float4 v = __ldcg(po + k * stride);
            const float f = wts[k * HB + hh];
            O.x += v.x * f; O.y += v.y * f; O.z += v.z * f; O.w += v.w * f;
        }
        *(float4*)(out + (long)t * out_width + (long)(g * HG + h) * DEC_D + d) = O;
    }
    if (tid == 0) *counter = 0;
}
