// The greedy choice's arithmetic, shared by the argmax over written logits
// (elementwise.cu's argmax_rows) and the one folded into the output layer's
// product (qmmo.cu): the host's rules (chatglm_engine::sampling::argmax) —
// the first index of the largest value; a non-finite value anywhere in the
// row chooses token 5 instead (the official InvalidScoreLogitsProcessor).

// (value, index) pairs: the larger value, the first of equal ones.
__device__ __forceinline__ void argmax_merge(float& bv, int& bi, float ov, int oi) {
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
}

// The block's best (value, index) over its threads' and whether any thread
// met a non-finite value, valid in thread 0.
__device__ __forceinline__ void argmax_block(float& bv, int& bi, int& bad) {
    __shared__ float sv[32];
    __shared__ int si[32];
    bad = __syncthreads_or(bad);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w != 0) return;
    const int nw = (blockDim.x + 31) >> 5;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// A warp's best (value, index) and whether any of its lanes met a
// non-finite value, valid in every lane.
__device__ __forceinline__ void argmax_warp(float& bv, int& bi, int& bad) {
    bad = __any_sync(0xffffffffu, bad);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// Whether v is not finite (NaN or ±inf).
__device__ __forceinline__ int argmax_bad(float v) { return !(fabsf(v) <= 3.402823466e38f); }

