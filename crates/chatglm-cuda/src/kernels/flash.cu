// Prefill attention on tensor cores (flash-attention 2 scheme; f16 or q8_0
// cache, the latter dequantized to f16 as its tiles enter shared memory): the score
// matrix is never stored; each warp keeps 16 query rows' scores, softmax
// state and output in registers while 64-key tiles of the f16 cache stream
// through shared memory, two stages deep: the next tile is copied in
// (cp.async) while the current one is computed.
//
// One block = one 64-row query tile of one sequence × one query head; 4 warps
// × 16 rows. Head size 128, f16 cache, 64-token cache blocks (= the key tile),
// host-checked; dynamic shared memory FLASH_SMEM_BYTES. Scores use mma.sync m16n8k16 (f16 in, f32 accumulate) with Q
// pre-scaled by log2(e)/sqrt(D), so softmax runs on exp2. K and V tiles are
// copied row-major into shared memory with 16-byte stores; V's fragments for
// P·V come transposed by ldmatrix.trans. Rows are padded to 136 halves so
// the fragment loads and ldmatrix rows of a warp hit distinct banks. Blocks
// run the query tiles with the most keys first (causal work is uneven).
//
// tiles: n_tiles × 4 ints (seq, first activation row, rows in tile ≤ 64,
// position of the first row). Keys 0..first_pos+rows are already cached.

#define FD 128
#define FTK 64
#define KS_STRIDE 136
#define FLASH_STAGE (2 * FTK * KS_STRIDE)  // halves: K then V

// Starts copying key tile kt of the sequence (group g of `layer`) into
// shared-memory stage `st`: K then V, rows past the context zero-filled
// (stale cache data, possibly NaN, must not reach P·V).
__device__ __forceinline__ void flash_load_tile(u16* stage, const u64* table, int kt, int ctx_end, int layer,
                                                int n_groups, int g) {
    const long per_group = (long)FTK * FD;
    const u16* blk = (const u16*)table[kt];
    const u16* kb = blk + ((long)(layer * 2 + 0) * n_groups + g) * per_group;
    const u16* vb = blk + ((long)(layer * 2 + 1) * n_groups + g) * per_group;
    const int nk = min(FTK, ctx_end - kt * FTK);
    u16* Ks = stage;
    u16* Vs = stage + FTK * KS_STRIDE;
    for (int i = threadIdx.x; i < FTK * FD / 8; i += 128) {
        const int j = i / (FD / 8), c = (i % (FD / 8)) * 8;
        cp_async16(Ks + j * KS_STRIDE + c, kb + (long)j * FD + c, j < nk);
        cp_async16(Vs + j * KS_STRIDE + c, vb + (long)j * FD + c, j < nk);
    }
    cp_async_commit();
}

// Eight values of a q8_0 cache row (128 int8 codes, then 4 f16 scales: 136
// bytes) from dim c on, dequantized to f16.
__device__ __forceinline__ uint4 flash_dequant8(const unsigned char* row, int c) {
    const uint2 q = *(const uint2*)(row + c);
    const float d = f16_to_f32(((const u16*)(row + FD))[c >> 5]);
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u32 word = k < 2 ? q.x : q.y;
        const float lo = (float)(signed char)((word >> (16 * (k & 1))) & 0xffu);
        const float hi = (float)(signed char)((word >> (16 * (k & 1) + 8)) & 0xffu);
        w[k] = pack_f16(lo * d, hi * d);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// flash_load_tile for a q8_0 cache: rows dequantized to f16 on their way into
// shared memory with ordinary loads and stores (in place when it returns).
__device__ __forceinline__ void flash_load_tile_q8(u16* stage, const u64* table, int kt, int ctx_end, int layer,
                                                   int n_groups, int g) {
    constexpr long RB = FD + FD / 16;
    const unsigned char* blk = (const unsigned char*)table[kt];
    const unsigned char* kb = blk + ((long)(layer * 2 + 0) * n_groups + g) * FTK * RB;
    const unsigned char* vb = blk + ((long)(layer * 2 + 1) * n_groups + g) * FTK * RB;
    const int nk = min(FTK, ctx_end - kt * FTK);
    u16* Ks = stage;
    u16* Vs = stage + FTK * KS_STRIDE;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    for (int i = threadIdx.x; i < FTK * FD / 8; i += 128) {
        const int j = i / (FD / 8), c = (i % (FD / 8)) * 8;
        *(uint4*)(Ks + j * KS_STRIDE + c) = j < nk ? flash_dequant8(kb + j * RB, c) : zero;
        *(uint4*)(Vs + j * KS_STRIDE + c) = j < nk ? flash_dequant8(vb + j * RB, c) : zero;
    }
}

template <int KV>
__device__ __forceinline__ void flash_load(u16* stage, const u64* table, int kt, int ctx_end, int layer, int n_groups,
                                           int g) {
    if (KV == 2)
        flash_load_tile_q8(stage, table, kt, ctx_end, layer, n_groups, g);
    else
        flash_load_tile(stage, table, kt, ctx_end, layer, n_groups, g);
}

template <int KV>
__device__ __forceinline__ void attn_flash_body(const float* qkv, int width, float* out, int out_width,
                                                const int* tiles, const u64* block_table, int max_blocks,
                                                int n_heads, int n_groups, int layer, float q_scale) {
    pdl_launch_dependents();
    pdl_wait();
    extern __shared__ __align__(16) u16 fsm[];  // 2 stages
    const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;
    const int seq = tiles[tile * 4], first_row = tiles[tile * 4 + 1];
    const int n_rows = tiles[tile * 4 + 2], first_pos = tiles[tile * 4 + 3];
    const int g = h / (n_heads / n_groups);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    const int r0 = warp * 16 + gr, r1 = r0 + 8;

    u32 qf[8][4];
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = (i & 1) ? r1 : r0;
            const int col = kk * 16 + 2 * tq + ((i & 2) ? 8 : 0);
            if (r < n_rows) {
                const float* q = qkv + (long)(first_row + r) * width + (long)h * FD + col;
                qf[kk][i] = pack_f16(q[0] * q_scale, q[1] * q_scale);
            } else {
                qf[kk][i] = 0u;
            }
        }

    float o[16][4];
#pragma unroll
    for (int nd = 0; nd < 16; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const int pos0 = first_pos + r0, pos1 = first_pos + r1;
    const int ctx_end = first_pos + n_rows;
    const int n_ktiles = (ctx_end + FTK - 1) / FTK;
    const u64* table = block_table + (long)seq * max_blocks;

    flash_load<KV>(fsm, table, 0, ctx_end, layer, n_groups, g);
    for (int kt = 0; kt < n_ktiles; kt++) {
        if (kt + 1 < n_ktiles) {
            flash_load<KV>(fsm + ((kt + 1) & 1) * FLASH_STAGE, table, kt + 1, ctx_end, layer, n_groups, g);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const u16* Ks = fsm + (kt & 1) * FLASH_STAGE;
        const u16* Vs = Ks + FTK * KS_STRIDE;

        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                const u16* kp = Ks + (nt * 8 + gr) * KS_STRIDE + kk * 16 + 2 * tq;
                const u32 b[2] = {*(const u32*)kp, *(const u32*)(kp + 8)};
                mma16816(s[nt], qf[kk], b);
            }
        }
        // Causal mask (and the end of the cached context).
        const int key_base = kt * FTK;
        if (key_base + FTK > first_pos) {
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key_base + nt * 8 + 2 * tq + (e & 1);
                    const int pos = (e < 2) ? pos0 : pos1;
                    if (key > pos || key >= ctx_end) s[nt][e] = -INFINITY;
                }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        // A row with nothing visible yet keeps max -inf; subtract 0 instead
        // so exp2 gives 0, not NaN.
        const float ms0 = mn0 == -INFINITY ? 0.f : mn0, ms1 = mn1 == -INFINITY ? 0.f : mn1;
        const float a0 = exp2f(m0 - ms0), a1 = exp2f(m1 - ms1);
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - ms0);
            s[nt][1] = exp2f(s[nt][1] - ms0);
            s[nt][2] = exp2f(s[nt][2] - ms1);
            s[nt][3] = exp2f(s[nt][3] - ms1);
            rs0 += s[nt][0] + s[nt][1];
            rs1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * a0 + rs0;
        l1 = l1 * a1 + rs1;
#pragma unroll
        for (int nd = 0; nd < 16; nd++) {
            o[nd][0] *= a0;
            o[nd][1] *= a0;
            o[nd][2] *= a1;
            o[nd][3] *= a1;
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const u32 pa[4] = {pack_f16(s[2 * kk][0], s[2 * kk][1]), pack_f16(s[2 * kk][2], s[2 * kk][3]),
                               pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            // Matrices: keys +0..7 / +8..15 of dims 16·nd2 + 0..7, then of + 8..15.
            const u16* vrow = Vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * KS_STRIDE + (lane >> 4) * 8;
#pragma unroll
            for (int nd2 = 0; nd2 < 8; nd2++) {
                u32 b[4];
                ldmatrix_x4_trans(b, vrow + nd2 * 16);
                mma16816(o[2 * nd2], pa, b);
                mma16816(o[2 * nd2 + 1], pa, b + 2);
            }
        }
        // Every warp is done with this stage before it is refilled.
        __syncthreads();
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
    for (int nd = 0; nd < 16; nd++) {
        const int col = h * FD + nd * 8 + 2 * tq;
        if (r0 < n_rows) {
            float* dst = out + (long)(first_row + r0) * out_width + col;
            dst[0] = o[nd][0] * inv0;
            dst[1] = o[nd][1] * inv0;
        }
        if (r1 < n_rows) {
            float* dst = out + (long)(first_row + r1) * out_width + col;
            dst[0] = o[nd][2] * inv1;
            dst[1] = o[nd][3] * inv1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_flash_f16(const float* qkv, int width, float* out, int out_width, const int* tiles,
                   const u64* block_table, int max_blocks, int n_heads, int n_groups, int layer, float q_scale) {
    attn_flash_body<1>(qkv, width, out, out_width, tiles, block_table, max_blocks, n_heads, n_groups, layer, q_scale);
}

// The same over a q8_0 cache (KvRow<2> in attention.cu).
extern "C" __global__ void __launch_bounds__(128)
    attn_flash_q8(const float* qkv, int width, float* out, int out_width, const int* tiles,
                  const u64* block_table, int max_blocks, int n_heads, int n_groups, int layer, float q_scale) {
    attn_flash_body<2>(qkv, width, out, out_width, tiles, block_table, max_blocks, n_heads, n_groups, layer, q_scale);
}
