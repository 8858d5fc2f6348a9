// out[t] = the greedy choice of token t (argmax.cuh's rules) from the
// output product's per-group bests (qmmo_{format}_4_0's best: [token][group]
// int4s of value bits, row, non-finite seen). grid = tokens, a block a
// token; the pairs merge in any order to the same (value, first index).
// host_out (or null): mapped page-locked memory the choices also go to (as
// argmax_rows writes them).
extern "C" __global__ void __launch_bounds__(256) qmmo_greedy_merge(const int4* best, int groups, int cols, int* out,
                                                                    int* host_out) {
    pdl_launch_dependents();
    pdl_wait();
    const int4* bests = best + (long)blockIdx.x * groups;
    float bv = -INFINITY;
    int bi = 0x7fffffff, bad = 0;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        const int4 b = __ldcg(bests + g);
        argmax_merge(bv, bi, __int_as_float(b.x), b.y);
        bad |= b.z;
    }
    argmax_block(bv, bi, bad);
    if (threadIdx.x == 0) {
        const int chosen = bad ? (cols > 5 ? 5 : 0) : bi;
        out[blockIdx.x] = chosen;
        if (host_out) host_out[blockIdx.x] = chosen;
    }
}
