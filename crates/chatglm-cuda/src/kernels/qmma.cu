// Weight-only quantized products on tensor cores: 4- or 8-bit weight codes
// against 8-bit activation codes (q8_0 blocks of 32, as the CPU quantizes
// its activations). One mma.sync m16n8k32 is exactly one 32-weight block of
// 16 rows against 8 tokens, so every block's integer dot product is exact
// and is scaled in f32 the way the CPU reference does (Σ isum·(dw·dx)).
// Decode (1 token) wastes 7 of the 8 token columns of each mma; the tensor
// cores are so far from busy that this costs nothing, and the same kernel
// then serves steps of up to 64 tokens.
//
// Weight layout (built on the host by chatglm_cuda::quant): tiles of 16 rows;
// a tile is a run of 512-byte units, one 16-byte vector per lane, holding
// exactly the A-fragment words that lane needs (lane = 4·g + t):
//   4-bit (2 blocks per unit): {row g word t, row g+8 word t} of block 2p,
//     then the same of block 2p+1. Word t = bytes 4t..4t+3 in ggml's nibble
//     order: low nibbles are weights 4t.., high nibbles weights 16+4t.. —
//     precisely the fragment's k order, so unpacking is two masks.
//   8-bit (1 block per unit): {row g word t, row g+8 word t, row g word
//     t+4, row g+8 word t+4}.
// A warp's load is 512 contiguous bytes. Scales (and offsets) are f16 laid
// out per unit as each lane needs them: [tile][unit][g][block i][row g, g+8]
// (8 bytes a lane for 4-bit units, 4 for 8-bit), loaded with the codes. Formats (F): 0 = codes 0..15, x = d·(q−8) (q4_0
// and the official int4); 1 = codes 0..15, x = d·q + m (q4_1); 2 = int8,
// x = d·q (q8_0, and q5_0 as q−16); 3 = int8 codes 0..31, x = d·q + m (q5_1).
//
// Activations: int8 codes [token][cols] and (dx, Σq) per block and token,
// float2 [block][8·token tiles]; quantize_x's for products of codes with an
// offset (q4_0's 8) hold X_MAGIC − 8·Σq in place of Σq, the integer a block's
// sum is added to so that its float bits are 1.5·2²³ + (sum − 8·Σq) (the
// exponent trick without computing the offset once per mma). Batch-1
// decode quantizes x inside every block (shared memory, with the RMSNorm
// before the product fused): x is a few KB read from L2 and a separate
// kernel would cost a launch boundary; larger steps use quantize_x's global
// copy.

// 1: each block's thread 0 records %globaltimer at entry, after the wait
// for the kernel ahead, with the activations quantized, after its first
// batch and at the end, into qmma_stamps (tests/gpu/qmma_phases.cu reads
// them; never in the library's kernels).
#ifndef QMMA_STAMPS
#define QMMA_STAMPS 0
#endif
// With QMMA_STAMPS, what a one-token product's first batch waits on: 1: the
// batch consumed twice (stamp 6 between: the second time its weights are in
// registers and its code has just run); 2: thread 0 first waits for its own
// weight words alone (stamp 6), then consumes them. Run 198: the first
// consume takes 1–2 µs longer than the second, its words already there —
// it waited on the next batch's loads too (session 29: QMMA_TOUCH).
#ifndef QMMA_CONSUME_TWICE
#define QMMA_CONSUME_TWICE 0
#endif
#if QMMA_STAMPS
__device__ u64 qmma_stamps[1 << 22];
__device__ u32 qmma_stamp_count;
__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define QMMA_STAMP(i)                             \
    do {                                          \
        if (threadIdx.x == 0) stamp[i] = global_ns(); \
    } while (0)
#else
#define QMMA_STAMP(i) \
    do {              \
    } while (0)
#endif

// 1.5·2²³ as f32 bits: an integer v (|v| < 2²²) added to it gives the bits
// of 12582912 + v.
#define X_MAGIC 0x4B400000

template <bool C, class A, class B> struct Cond { typedef A type; };
template <class A, class B> struct Cond<false, A, B> { typedef B type; };

template <int F> struct QFmt;
template <> struct QFmt<0> { enum { BLOCKS = 2, MIN = 0, OFF = 8, U4 = 1 }; };
template <> struct QFmt<1> { enum { BLOCKS = 2, MIN = 1, OFF = 0, U4 = 1 }; };
template <> struct QFmt<2> { enum { BLOCKS = 1, MIN = 0, OFF = 0, U4 = 0 }; };
template <> struct QFmt<3> { enum { BLOCKS = 1, MIN = 1, OFF = 0, U4 = 0 }; };

#define QMMA_WARPS 8
// 0: double buffer copied at the end of each batch; 1: ping-pong buffers
// (two batches in flight through each wait), for measurements. Ping-pong
// spills at the 128 registers two blocks a SM allow (200–300 bytes) and
// decodes 20% slower (H200, run 48: q4_0 390 / 406 against 498 / 488 tok/s).
#ifndef QMMA_PINGPONG
#define QMMA_PINGPONG 0
#endif
#define QMMA_THREADS (QMMA_WARPS * 32)
// 1: steps of 17–32 tokens (4 token tiles) hold half the weight units in
// registers per batch, so two blocks fit a SM (16 warps instead of 8 to hide
// the activation loads). H200, 32 int4 sequences: 4,651 / 4,616 tok/s against
// 4,282 / 4,299 with one block a SM (run 68).
#ifndef QMMA_NT4_TWO_BLOCKS
#define QMMA_NT4_TWO_BLOCKS 1
#endif
// 1: one-token products load their activations (and norm weights) for the
// whole block in one round and quantize them from registers
// (block_quantize_one); 0: row_inv_rms, then quantize_tile. H200, run 75:
// q4_0 decode 488 / 475 → 544 / 520 tok/s, q8_0 386 / 397 → 431 / 415.
#ifndef QMMA_ASYNC_X
#define QMMA_ASYNC_X 1
#endif
// 1: steps with quantize_x's activations (SX = 0: more than 8 tokens, or
// rows too long for in-block quantization) run on f16 tensor cores:
// quantize_x writes the (normed) activations as f16 and the products
// dequantize each weight to f16 once for all the step's token tiles, so no
// per-block scaling follows each mma (~7 instructions an f16 mma against
// ~54 an int8 one). Run 79: no faster (h→4h 81.6 → 74.6 µs, QKV 35.2 → 46.0
// at 32 tokens) and not the CPU's arithmetic (q8_0 activations: greedy ids
// differ), so a measurement variant; the qmma test compares it with an f16
// reference.
#ifndef QMMA_F16X
#define QMMA_F16X 0
#endif
// 1: steps with quantize_x's activations (SX = 0) copy each warp's next
// batch of activation codes and scales into shared memory (cp.async) as they
// request its weights, so a unit's mmas read shared memory instead of waiting
// on L2 for every unit (runs 77-79: the 32-token products wait on those loads
// — neither 4× fewer instructions nor L1 prefetches moved them). Units per
// lane per batch then at most QMMA_STAGE_UB, so that the two stage buffers of
// a block stay within 80 KB (the host's qmma_stage_smem mirrors this).
#ifndef QMMA_X_STAGE
#define QMMA_X_STAGE 0
#endif
#define QMMA_STAGE_UB(NT8, SB) (16 / ((NT8) * (SB)) < 1 ? 1 : 16 / ((NT8) * (SB)) > 8 ? 8 : 16 / ((NT8) * (SB)))
#define QMMA_TWO_BLOCKS(NT8) ((NT8) <= 2 || (QMMA_NT4_TWO_BLOCKS && (NT8) == 4))
// One-token products (SX = 2): weight units per lane per batch (halved for
// SwiGLU's two row tiles) and the resident blocks a SM the registers are
// capped for (8 units and 2 blocks: 128 registers).
#ifndef QMMA_ONE_UB
#define QMMA_ONE_UB 8
#endif
#ifndef QMMA_ONE_MINB
#define QMMA_ONE_MINB 2
#endif
// 1: a one-token product runs its first batch once before waiting for the
// kernel ahead — activations quantized from the weights' own bytes (memory
// no kernel writes), sums thrown away, no epilogue — so that the code the
// block runs after the wait (quantizing, the unit products) is already in
// the SM's instruction caches: each layer's five kernels evict each other's
// code, and a product whose weights are all in registers at the wait (the
// dense one) still ends ~5 µs after the attention before it, run 97, with
// the grid-completion wait taken out. A measurement variant.
#ifndef QMMA_WARM
#define QMMA_WARM 0
#endif

// 1: one-token products put a different weight block in each of an mma's 8
// columns (below, one_cols_group), so every lane's four sums are distinct
// and all are used: the per-block scaling is done once per (row, block) and
// not four times over by a quad's lanes, and the activation and scale loads
// shrink alike. ncu, H200, session 16: the one-token products issued ~40
// instructions an mma (half of them index arithmetic and the quad's
// duplicated scaling) and sat at 26–50% of issue slots. 0: the one-token
// column layout of unit_product<ONE> (for measurements).
#ifndef QMMA_ONE_COLS
#define QMMA_ONE_COLS 1
#endif
// 1: with QMMA_ONE_COLS, a one-token product requests its second batch too
// before waiting for the kernel ahead (both register buffers filled), so a
// product of two batches a block (QKV: two tiles) has all its weights on the
// way while it waits and quantizes its activations; 2: only for 4-bit
// weights (8-bit ones spill the second buffer's scales in the prologue:
// H200, runs 103 and 105, q4_0 +5%, q8_0 −5%). Measurement variant.
#ifndef QMMA_ONE_PRELOAD2
#define QMMA_ONE_PRELOAD2 0
#endif
// Chains of accumulating mmas a one-token unit group of one row tile keeps
// (1, 2, 4 or 8; SwiGLU's pairs of tiles keep 2): its 8 mmas write disjoint
// columns, so more chains only shorten the dependent latency, at 4 registers
// a chain. The consume of a batch is bound by those chains (run 222's
// phases): 4 decoded q4_0 at 750.6–752.6 tok/s against 741.5–743.9 with 2,
// q8_0 +0.7%; 8 spill in the 4-bit QKV products (q4_0 −3.8%) and are no
// faster for 8-bit codes; SwiGLU's pairs in 4 spill (q4_0 −2%); two k16
// mmas a 4-bit block, no shifts, −0.3% (2 chains) / +0.5% (4) — runs 224–225.
#ifndef QMMA_ONE_CHAINS
#define QMMA_ONE_CHAINS 4
#endif
// 1: a one-token product waits for batch k's weights before it requests
// batch k + 1's. ptxas puts every weight load of a lane on one scoreboard,
// and the first use of batch k's registers waited for all of it to drain —
// batch k + 1's loads too, issued just before — so batch k was consumed only
// once k + 1 had landed: the stream had one batch a warp in flight, and the
// consume after it (the first batch, long in registers, waited ~2 µs for
// the second; harness, session 29). A use of batch k ahead of the requests
// takes that wait where k has mostly arrived, and the consume overlaps
// k + 1's flight (tests/gpu/sass_scoreboard.py checks the SASS for it).
// 0: as before (a measurement variant).
#ifndef QMMA_TOUCH
#define QMMA_TOUCH 1
#endif
// 1: one-token products read what their epilogue adds (bias, the output
// they accumulate into) into registers ahead (EpiloguePreload, below);
// 0: in the epilogue, as the other paths do (a measurement variant).
#ifndef QMMA_EPI_PRELOAD
#define QMMA_EPI_PRELOAD 1
#endif
// 1: a one-token product with a fused RMSNorm (QKV, h→4h, the output layer;
// rows of at most 4,096) reads each thread's 16 norm weights into registers
// before the wait (NormPreload), so that after it only x is read: the
// weights are constant, but each layer's come from DRAM (the step's stream
// evicts them from L2) and were half the bytes of the activation phase,
// which takes ~2.2 µs of these products against ~0.9 for the ones handed
// their codes (run 137). Run 137's QMMA_NW_SMEM put them in shared memory
// (16 KB more a block: slower); registers cost no shared memory.
#ifndef QMMA_NW_PRELOAD
#define QMMA_NW_PRELOAD 1
#endif
// The one-token QKV product's rotations ((cos, sin) of each thread's row)
// worked out with the biases, before the wait, so that the epilogue after the
// block's last batch has no sincosf left (the grouped products' epilogue took
// ~5 µs with one a value inline, run 188); 0: in the epilogue.
#ifndef QMMA_ROPE_PRELOAD
#define QMMA_ROPE_PRELOAD 1
#endif

// A use of v that the compiler must keep ahead of what follows (a branch on
// it to a trap; `never` is a kernel parameter that is never negative).
__device__ __forceinline__ void touch_word(u32 v, int never) {
    if ((v ^ (u32)never) == 0x9e3779b9u && never < 0) asm volatile("trap;");
}

// C = A·B for one block: unsigned 4-bit codes (as u8) or signed int8 codes.
template <int U4>
__device__ __forceinline__ void mma_block(int* c, const u32* a, u32 b0, u32 b1) {
    if (U4)
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%10,%10,%10};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%10,%10,%10};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

// C += A·B for one block (as mma_block).
template <int U4>
__device__ __forceinline__ void mma_block_acc(int (&c)[4], const u32* a, u32 b0, u32 b1) {
    if (U4)
        asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The A fragment of block i (0 or 1) of a unit.
template <int F>
__device__ __forceinline__ void a_fragment(uint4 v, int i, u32* a) {
    if (QFmt<F>::U4) {
        const u32 lo = i ? v.z : v.x, hi = i ? v.w : v.y;
        a[0] = lo & 0x0f0f0f0fu;
        a[1] = hi & 0x0f0f0f0fu;
        a[2] = (lo >> 4) & 0x0f0f0f0fu;
        a[3] = (hi >> 4) & 0x0f0f0f0fu;
    } else {
        a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
    }
}

__device__ __forceinline__ u32 h2sub(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 h2mul(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
// (a & b) | c in one LOP3 (written as & then |, the compiler spends two
// when b and c are both immediates).
__device__ __forceinline__ u32 and_or(u32 a, u32 b, u32 c) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ u32 h2fma(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The A fragments of block i of a unit for two m16n8k16 steps, each weight
// dequantized to f16 (d·(q − off), or d·q + m). The lane holds physical
// columns 4t..4t+3 and 16+4t..16+4t+3 of rows g and g+8 (mma_block's
// layout); step s's logical columns 16s + {2t, 2t+1, 2t+8, 2t+9} are taken
// to be physical 16s + {4t, 4t+2, 4t+1, 4t+3} — pairs that two masks (or a
// byte permute) pull out of a code word — and quantize_x stores each block
// of 32 activations as lane t's 8 values of both steps in that order
// (4t, 4t+2, 4t+1, 4t+3, 16+4t, 16+4t+2, …), so B is one 16-byte load.
template <int F>
__device__ __forceinline__ void a_fragments_f16(uint4 v, int i, u32 dw, u32 mw, u32 (&a)[2][4]) {
    // [step][row g, g+8][columns (4t, 4t+2), (4t+1, 4t+3)] as f16 1024 + code
    // (4-bit codes of step 1: 1024 + 16·code, the high nibble left in place,
    // so one shift a word instead of three: Marlin's dequantization).
    u32 e[2][2][2];
    if (QFmt<F>::U4) {
        const u32 w[2] = {i ? v.z : v.x, i ? v.w : v.y};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 w8 = w[h] >> 8;
            e[0][h][0] = and_or(w[h], 0x000f000fu, 0x64006400u);
            e[0][h][1] = and_or(w8, 0x000f000fu, 0x64006400u);
            e[1][h][0] = and_or(w[h], 0x00f000f0u, 0x64006400u);
            e[1][h][1] = and_or(w8, 0x00f000f0u, 0x64006400u);
        }
    } else {
        // Signed bytes + 128 under the f16 exponent of 1024.
        const u32 w[2][2] = {{v.x ^ 0x80808080u, v.y ^ 0x80808080u}, {v.z ^ 0x80808080u, v.w ^ 0x80808080u}};
#pragma unroll
        for (int st = 0; st < 2; st++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                e[st][h][0] = __byte_perm(w[st][h], 0x64646464u, 0x4240);
                e[st][h][1] = __byte_perm(w[st][h], 0x64646464u, 0x4341);
            }
    }
    // 1024 plus the code's offset: 8 (q4_0), 0 (q4_1), 128 (the signed bytes).
    constexpr u32 Z = QFmt<F>::U4 ? (QFmt<F>::OFF ? 0x64086408u : 0x64006400u) : 0x64806480u;
    const u32 d[2] = {__byte_perm(dw, 0, 0x1010), __byte_perm(dw, 0, 0x3232)};
    u32 m[2] = {0u, 0u};
    if (QFmt<F>::MIN) {
        m[0] = __byte_perm(mw, 0, 0x1010);
        m[1] = __byte_perm(mw, 0, 0x3232);
    }
    // Step 1's 4-bit codes: (1024 + 16·code) / 16 − (64 + offset), exact.
    constexpr u32 SIXTEENTH = 0x2c002c00u;
    constexpr u32 ZH = QFmt<F>::OFF ? 0xd480d480u : 0xd400d400u;
#pragma unroll
    for (int st = 0; st < 2; st++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int pr = 0; pr < 2; pr++) {
                const u32 q = QFmt<F>::U4 && st ? h2fma(e[st][h][pr], SIXTEENTH, ZH) : h2sub(e[st][h][pr], Z);
                a[st][pr * 2 + h] = QFmt<F>::MIN ? h2fma(q, d[h], m[h]) : h2mul(q, d[h]);
            }
}

// Four activations as q8_0 codes (v·id rounded, as the CPU does), packed
// into a word; their sum is added to `sum`.
__device__ __forceinline__ u32 codes4(const float* v, float id, int& sum) {
    u32 word = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int qi = (int)roundf(v[i] * id);
        sum += qi;
        word |= ((u32)(qi & 0xff)) << (8 * i);
    }
    return word;
}

// Quantizes 32 activations x[k0..k0+32) (times inv·nw when nw is set) to
// q8_0 as the CPU does: d = max|v| / 127, q = round(v / d), d kept as f16.
__device__ __forceinline__ void quantize_block32(const float* x, const float* nw, float inv, int k0, u32* q,
                                                 float2* s) {
    float v[32];
    const float4* xp = (const float4*)(x + k0);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float4 f = xp[i];
        v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
    }
    if (nw) {
        const float4* np = (const float4*)(nw + k0);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 g = np[i];
            v[4 * i] = g.x * (v[4 * i] * inv); v[4 * i + 1] = g.y * (v[4 * i + 1] * inv);
            v[4 * i + 2] = g.z * (v[4 * i + 2] * inv); v[4 * i + 3] = g.w * (v[4 * i + 3] * inv);
        }
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(v[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.f ? 1.0f / d : 0.f;
    int sum = 0;
#pragma unroll
    for (int w = 0; w < 8; w++) q[w] = codes4(v + 4 * w, id, sum);
    *s = make_float2(f16_to_f32(f32_to_f16(d)), __int_as_float(sum));
}

// The warps' sums of squares of n rows (scratch[warp·8 + row], written by
// the caller) into inv[0..n): 1/rms with norm weights, else 1. Every thread
// of the block calls it.
__device__ __forceinline__ void block_inv_rms(const float* scratch, bool norm, int n, int cols, float eps,
                                              float* inv) {
    __syncthreads();
    if (threadIdx.x < n) {
        float ss = 0.f;
        for (int w = 0; w < QMMA_WARPS; w++) ss += scratch[w * 8 + threadIdx.x];
        inv[threadIdx.x] = norm ? 1.0f / sqrtf(ss / (float)cols + eps) : 1.f;
    }
    __syncthreads();
}

// 1/rms of each of the n rows of x (cols wide), into inv[0..n) of shared
// memory; 1 without norm weights. Needs blockDim.x == QMMA_THREADS.
__device__ __forceinline__ void row_inv_rms(const float* x, const float* nw, int n, int cols, float eps, float* inv,
                                            float* scratch) {
    const int wid = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = 0; t < n; t++) {
        float ss = 0.f;
        if (nw) {
            const float4* xp = (const float4*)(x + (long)t * cols);
            for (int i = threadIdx.x; i < cols / 4; i += QMMA_THREADS) {
                const float4 f = xp[i];
                ss = fmaf(f.x, f.x, fmaf(f.y, f.y, fmaf(f.z, f.z, fmaf(f.w, f.w, ss))));
            }
            ss = warp_sum(ss);
        }
        if (lane == 0) scratch[wid * 8 + t] = ss;
    }
    block_inv_rms(scratch, nw != nullptr, n, cols, eps, inv);
}

// Quantizes the n (≤ 8) tokens of x (cols wide) into xq ([n][cols] codes)
// and xs ([nb][xs_stride] scales); tokens n..xs_stride get zero scales.
__device__ __forceinline__ void quantize_tile(const float* x, const float* nw, const float* inv, int t0, int n,
                                              int cols, signed char* xq, float2* xs, int xs_stride) {
    const int nb = cols / 32;
    for (int idx = threadIdx.x; idx < nb * xs_stride; idx += blockDim.x) {
        const int b = idx / xs_stride, tt = idx % xs_stride, t = t0 + tt;
        if (t < n) {
            u32 q[8];
            float2 s;
            quantize_block32(x + (long)t * cols, nw, inv[tt], b * 32, q, &s);
            uint4* dst = (uint4*)(xq + (long)tt * cols + b * 32);
            dst[0] = make_uint4(q[0], q[1], q[2], q[3]);
            dst[1] = make_uint4(q[4], q[5], q[6], q[7]);
            xs[(long)b * xs_stride + t] = s;
        } else {
            xs[(long)b * xs_stride + t] = make_float2(0.f, 0.f);
        }
    }
}

template <int F> struct QScale { typedef typename Cond<QFmt<F>::BLOCKS == 2, uint2, u32>::type type; };

// One unit of RT row tiles (this lane's fragment words cv, scales cs and
// offsets cm) against the activations of its blocks, into acc. ONE: a single
// token in every mma column; each lane scales its c[0], c[2] alone, and the
// epilogue reads column 0 only (c[0], c[2] of lanes t = 0).
// CHECKED: the unit may be the row's last, with fewer blocks than a unit holds.
// KF: xs holds quantize_x's X_MAGIC − OFF·Σq (see above) in place of Σq.
template <int F, int NT8, int RT, bool ONE, bool CHECKED, bool KF = false>
__device__ __forceinline__ void unit_product(float (&acc)[RT][NT8][4], const uint4 (&cv)[RT],
                                             const typename QScale<F>::type (&cs)[RT],
                                             const typename QScale<F>::type (&cm)[RT], int p, int nb, int n, int cols,
                                             const signed char* xq, const float2* xs, int xs_stride, int g, int t) {
    constexpr int SB = QFmt<F>::BLOCKS;
#pragma unroll
    for (int i = 0; i < SB; i++) {
        const int b = p * SB + i;
        if (CHECKED && b >= nb) break;
        // Each token tile's B fragment serves every row tile.
#pragma unroll
        for (int j = 0; j < NT8; j++) {
            // ONE: every column holds the token (the other columns' sums
            // are never read), so the loads need no predicate; otherwise
            // columns past the step's tokens are zero.
            const int tok = ONE ? 0 : j * 8 + g;
            u32 b0 = 0, b1 = 0;
            if (ONE || tok < n) {
                const signed char* xp = xq + (long)tok * cols + b * 32 + 4 * t;
                b0 = *(const u32*)xp;
                b1 = *(const u32*)(xp + 16);
            }
            float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
            if (ONE) {
                // The one token's scale, the same for the whole warp.
                const float2 s2 = xs[(long)b * 2];  // one token: in_block_x strides 2
                s.x = s2.x; s.y = s2.y;
            } else if (2 * t < xs_stride) {
                s = *(const float4*)(xs + (long)b * xs_stride + j * 8 + 2 * t);
            }
            const int sx0 = __float_as_int(s.y), sx1 = __float_as_int(s.w);
#pragma unroll
            for (int r = 0; r < RT; r++) {
                u32 a[4];
                a_fragment<F>(cv[r], i, a);
                int c[4];
                mma_block<QFmt<F>::U4>(c, a, b0, b1);
                float d0, d1;
                if (SB == 2) {
                    const u32 dw = i ? ((const uint2*)&cs[r])->y : ((const uint2*)&cs[r])->x;
                    d0 = f16_to_f32((u16)(dw & 0xffff)); d1 = f16_to_f32((u16)(dw >> 16));
                } else {
                    const u32 dw = *(const u32*)&cs[r];
                    d0 = f16_to_f32((u16)(dw & 0xffff)); d1 = f16_to_f32((u16)(dw >> 16));
                }
                float m0 = 0.f, m1 = 0.f;
                if (QFmt<F>::MIN) {
                    u32 mw;
                    if (SB == 2) mw = i ? ((const uint2*)&cm[r])->y : ((const uint2*)&cm[r])->x;
                    else mw = *(const u32*)&cm[r];
                    m0 = f16_to_f32((u16)(mw & 0xffff)); m1 = f16_to_f32((u16)(mw >> 16));
                }
                if (ONE) {
                    if (QFmt<F>::OFF) { c[0] -= QFmt<F>::OFF * sx0; c[2] -= QFmt<F>::OFF * sx0; }
                    if (QFmt<F>::MIN) {
                        acc[r][j][0] += (float)c[0] * d0 * s.x + m0 * s.x * (float)sx0;
                        acc[r][j][2] += (float)c[2] * d1 * s.x + m1 * s.x * (float)sx0;
                    } else {
                        acc[r][j][0] += (float)c[0] * (d0 * s.x);
                        acc[r][j][2] += (float)c[2] * (d1 * s.x);
                    }
                    continue;
                }
                if (QFmt<F>::OFF && KF) {
                    c[0] += sx0 - X_MAGIC; c[1] += sx1 - X_MAGIC;
                    c[2] += sx0 - X_MAGIC; c[3] += sx1 - X_MAGIC;
                } else if (QFmt<F>::OFF) {
                    c[0] -= QFmt<F>::OFF * sx0; c[1] -= QFmt<F>::OFF * sx1;
                    c[2] -= QFmt<F>::OFF * sx0; c[3] -= QFmt<F>::OFF * sx1;
                }
                if (QFmt<F>::MIN) {
                    acc[r][j][0] += (float)c[0] * d0 * s.x + m0 * s.x * (float)sx0;
                    acc[r][j][1] += (float)c[1] * d0 * s.z + m0 * s.z * (float)sx1;
                    acc[r][j][2] += (float)c[2] * d1 * s.x + m1 * s.x * (float)sx0;
                    acc[r][j][3] += (float)c[3] * d1 * s.z + m1 * s.z * (float)sx1;
                } else {
                    acc[r][j][0] += (float)c[0] * (d0 * s.x);
                    acc[r][j][1] += (float)c[1] * (d0 * s.z);
                    acc[r][j][2] += (float)c[2] * (d1 * s.x);
                    acc[r][j][3] += (float)c[3] * (d1 * s.z);
                }
            }
        }
    }
}

// One token, QMMA_ONE_COLS: group q of a warp's batch — CPG blocks (UG =
// CPG / SB units) — with block m in mma column m: lane (g, t) gives the B
// fragment of column g only (zeros in the others), so after the group's
// mmas its four sums are distinct — rows g and g + 8 of the blocks in
// columns 2t and 2t + 1 — and it scales those alone (sc, mn: their scales
// and offsets, .x column 2t, .y column 2t + 1, each (row g, row g + 8) f16).
// xqb, xsb: the activation codes and (dx, Σq) of the batch's unit 0 (unit u
// at u·QMMA_WARPS); ubase: the batch's unit 0 in the row. Each block's sum
// is scaled as unit_product's (Σ isum·(dw·dx)); the quad's lanes hold
// partial sums the caller adds before the epilogue.
// CHECKED: blocks past the row (units ≥ units, blocks ≥ nb) are skipped.
template <int F, int RT, int UB, int CPG, bool CHECKED>
__device__ __forceinline__ void one_cols_group(float (&acc)[RT][1][4], const uint4 (&buf)[RT][UB], int q,
                                               const uint2 (&sc)[RT], const uint2 (&mn)[RT],
                                               const signed char* xqb, const float2* xsb, int ubase, int units,
                                               int nb, int g, int t) {
    constexpr int SB = QFmt<F>::BLOCKS, UG = CPG / SB;
    auto valid = [&](int u, int i) {
        const int unit = ubase + u * QMMA_WARPS;
        return !CHECKED || (unit < units && unit * SB + i < nb);
    };
    u32 bx0 = 0u, bx1 = 0u;
    {
        const int u = q * UG + g / SB, i = g % SB;
        if (g < CPG && valid(u, i)) {
            const signed char* xp = xqb + (u * QMMA_WARPS * SB + i) * 32 + 4 * t;
            bx0 = *(const u32*)xp;
            bx1 = *(const u32*)(xp + 16);
        }
    }
    // QMMA_ONE_CHAINS chains of accumulating mmas (columns m mod CH) to cut
    // the dependent latency; each column gets one block's sum.
    constexpr int CH = RT == 1 ? QMMA_ONE_CHAINS : 2;  // SwiGLU's two tiles: 2 (4 spill)
    int c[RT][CH][4];
#pragma unroll
    for (int r = 0; r < RT; r++)
#pragma unroll
        for (int h = 0; h < CH; h++) c[r][h][0] = c[r][h][1] = c[r][h][2] = c[r][h][3] = 0;
#pragma unroll
    for (int m = 0; m < CPG; m++) {
        const int u = q * UG + m / SB, i = m % SB;
        if (CHECKED && !valid(u, i)) continue;
        const u32 b0 = g == m ? bx0 : 0u, b1 = g == m ? bx1 : 0u;
#pragma unroll
        for (int r = 0; r < RT; r++) {
            u32 a[4];
            a_fragment<F>(buf[r][u], i, a);
            mma_block_acc<QFmt<F>::U4>(c[r][m % CH], a, b0, b1);
        }
    }
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const int col = 2 * t + k, u = q * UG + col / SB, i = col % SB;
        if (col >= CPG || !valid(u, i)) continue;
        const float2 s2 = xsb[(u * QMMA_WARPS * SB + i) * 2];
        const int sq = __float_as_int(s2.y);
#pragma unroll
        for (int r = 0; r < RT; r++) {
            const u32 dw = k ? sc[r].y : sc[r].x;
            const float d0 = f16_to_f32((u16)(dw & 0xffff)), d1 = f16_to_f32((u16)(dw >> 16));
            // Written so that CH = 2 compiles to the SASS it had before the
            // define (a loop from 0 or 1 moved its registers: these kernels'
            // speed follows their SASS, run 221), for measurements of it.
            int v0 = c[r][0][k] + c[r][CH > 1][k], v1 = c[r][0][2 + k] + c[r][CH > 1][2 + k];
            if (CH == 1) v0 = c[r][0][k], v1 = c[r][0][2 + k];
#pragma unroll
            for (int h = 2; h < CH; h++) {
                v0 += c[r][h][k];
                v1 += c[r][h][2 + k];
            }
            if (QFmt<F>::OFF) {
                v0 -= QFmt<F>::OFF * sq;
                v1 -= QFmt<F>::OFF * sq;
            }
            if (QFmt<F>::MIN) {
                const u32 mw = k ? mn[r].y : mn[r].x;
                const float m0 = f16_to_f32((u16)(mw & 0xffff)), m1 = f16_to_f32((u16)(mw >> 16));
                acc[r][0][0] += (float)v0 * d0 * s2.x + m0 * s2.x * (float)sq;
                acc[r][0][2] += (float)v1 * d1 * s2.x + m1 * s2.x * (float)sq;
            } else {
                acc[r][0][0] += (float)v0 * (d0 * s2.x);
                acc[r][0][2] += (float)v1 * (d1 * s2.x);
            }
        }
    }
}

// unit_product with f16 activations xh ([tokens][cols], groups of 4 in
// a_fragments_f16's order) and weights dequantized to f16 (QMMA_F16X).
template <int F, int NT8, int RT, bool CHECKED>
__device__ __forceinline__ void unit_product_hx(float (&acc)[RT][NT8][4], const uint4 (&cv)[RT],
                                                const typename QScale<F>::type (&cs)[RT],
                                                const typename QScale<F>::type (&cm)[RT], int p, int nb, int n,
                                                int cols, const u16* xh, int g, int t) {
    constexpr int SB = QFmt<F>::BLOCKS;
#pragma unroll
    for (int i = 0; i < SB; i++) {
        const int b = p * SB + i;
        if (CHECKED && b >= nb) break;
        uint2 bx[NT8][2];
#pragma unroll
        for (int j = 0; j < NT8; j++) {
            const int tok = j * 8 + g;
            bx[j][0] = bx[j][1] = make_uint2(0u, 0u);
            if (tok < n) {
                const uint4 v = *(const uint4*)(xh + (long)tok * cols + b * 32 + 8 * t);
                bx[j][0] = make_uint2(v.x, v.y);
                bx[j][1] = make_uint2(v.z, v.w);
            }
        }
#pragma unroll
        for (int r = 0; r < RT; r++) {
            u32 dw, mw = 0u;
            if (SB == 2) dw = i ? ((const uint2*)&cs[r])->y : ((const uint2*)&cs[r])->x;
            else dw = *(const u32*)&cs[r];
            if (QFmt<F>::MIN) {
                if (SB == 2) mw = i ? ((const uint2*)&cm[r])->y : ((const uint2*)&cm[r])->x;
                else mw = *(const u32*)&cm[r];
            }
            u32 a[2][4];
            a_fragments_f16<F>(cv[r], i, dw, mw, a);
#pragma unroll
            for (int st = 0; st < 2; st++)
#pragma unroll
                for (int j = 0; j < NT8; j++) {
                    // f16 tensor cores, f32 sums: the C layout of mma_block's.
                    const u32 bf[2] = {bx[j][st].x, bx[j][st].y};
                    mma16816(acc[r][j], a[st], bf);
                }
        }
    }
}

// Unit u of a batch held in registers (codes, scales, offsets), at unit p
// of the tile.
template <int F, int NT8, int RT, bool ONE, bool CHECKED, int UB, bool HX, bool KF>
__device__ __forceinline__ void batch_unit(float (&acc)[RT][NT8][4], const uint4 (&buf)[RT][UB],
                                           const typename QScale<F>::type (&sv)[RT][UB],
                                           const typename QScale<F>::type (&mv)[RT][UB], int u, int p, int nb, int n,
                                           int cols, const signed char* xq, const float2* xs, int xs_stride, int g,
                                           int t) {
    uint4 cv[RT];
    typename QScale<F>::type cs[RT], cm[RT];
#pragma unroll
    for (int r = 0; r < RT; r++) {
        cv[r] = buf[r][u];
        cs[r] = sv[r][u];
        cm[r] = mv[r][u];
    }
    if (HX) unit_product_hx<F, NT8, RT, CHECKED>(acc, cv, cs, cm, p, nb, n, cols, (const u16*)xq, g, t);
    else unit_product<F, NT8, RT, ONE, CHECKED, KF>(acc, cv, cs, cm, p, nb, n, cols, xq, xs, xs_stride, g, t);
}

// Barriers of the block-wide helpers below: the whole block, or (a Sync of
// the caller's) only the warps that take part — in mlp_stream.cu's
// warp-specialized kernel a group of QMMA_WARPS compute warps.
struct SyncBlock {
    static __device__ __forceinline__ void sync() { __syncthreads(); }
};

// An item is done: the warps' partial sums meet in shared memory, one token
// tile at a time, and its rows (from row0) are written. Resets acc. PRE (one
// token): thread r < 16 already holds what its row adds, p0 — the bias
// (MODE 0, 3; 0 without), the output before (MODE 1) — and p1, MODE 3's
// bias of row r ^ 1, and (QMMA_ROPE_PRELOAD) the row's rotation (pc, ps)
// (EpiloguePreload).
template <int NT8, int MODE, int RT, bool ONE, class Sync = SyncBlock, bool PRE = false>
__device__ __forceinline__ void item_epilogue(float (&acc)[RT][NT8][4], float (*red)[RT * 16][9], int row0, int n,
                                              const float* __restrict__ bias, float* __restrict__ out, int out_rows,
                                              int half_rows, const RopeCtx& rc, const TokenSlot* slots,
                                              float p0 = 0.f, float p1 = 0.f, float pc = 1.f, float ps = 0.f) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < NT8; j++) {
        if (j * 8 >= n) break;
#pragma unroll
        for (int r = 0; r < RT; r++) {
            red[warp][r * 16 + g][2 * t] = acc[r][j][0];
            red[warp][r * 16 + g][2 * t + 1] = acc[r][j][1];
            red[warp][r * 16 + g + 8][2 * t] = acc[r][j][2];
            red[warp][r * 16 + g + 8][2 * t + 1] = acc[r][j][3];
            acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0.f;
        }
        Sync::sync();
        if (threadIdx.x < (ONE ? 16 : 128)) {
            const int rr = threadIdx.x % 16, tt = threadIdx.x / 16, tok = j * 8 + tt;
            const int row = row0 + rr;
            float a = 0.f;
#pragma unroll
            for (int v = 0; v < QMMA_WARPS; v++) a += red[v][rr][tt];
            if (tok < n) {
                if (MODE == 2) {
                    if (row < half_rows) {
                        float b = 0.f;
#pragma unroll
                        for (int v = 0; v < QMMA_WARPS; v++) b += red[v][RT * 16 - 16 + rr][tt];
                        out[(long)tok * half_rows + row] = silu(a) * b;
                    }
                } else if (MODE == 3) {
                    if (row < out_rows) {
                        float b = 0.f;
#pragma unroll
                        for (int v = 0; v < QMMA_WARPS; v++) b += red[v][rr ^ 1][tt];
                        const float ba = PRE ? p0 : bias ? bias[row] : 0.f;
                        const float bb = PRE ? p1 : bias ? bias[row ^ 1] : 0.f;
                        if (PRE && QMMA_ROPE_PRELOAD) {
                            // (pc, ps) = (1, 0) on rows that do not turn; ps
                            // carries the sign of the row's half of the pair.
                            const float v = (a + ba) * pc + (b + bb) * ps;
                            out[(long)tok * out_rows + row] = v;
                            kv_store1(rc, slots[tok], row, v);
                        } else {
                            qkv_epilogue_at(rc, slots[tok], out, out_rows, tok, row, a + ba, b + bb);
                        }
                    }
                } else if (row < out_rows) {
                    if (MODE == 0) out[(long)tok * out_rows + row] = a + (PRE ? p0 : bias ? bias[row] : 0.f);
                    else if (PRE) out[(long)tok * out_rows + row] = p0 + a;
                    else out[(long)tok * out_rows + row] += a;
                }
            }
        }
        Sync::sync();
    }
}

// A q8_0 block (as quantize_block32) held by a lane quad, 8 values a lane:
// the quad's max and code sum meet by shuffles (every lane of the warp must
// call it). Writes this lane's two code words; returns (d as f16, Σq).
__device__ __forceinline__ float2 quad_quantize8(const float (&v)[8], u32 (&w)[2]) {
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f;
    const float id = d != 0.f ? 1.0f / d : 0.f;
    int sum = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) w[h] = codes4(v + 4 * h, id, sum);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    return make_float2(f16_to_f32(f32_to_f16(d)), __int_as_float(sum));
}

// Thread's norm weights read ahead (QMMA_NW_PRELOAD): those of blocks
// r·64 + q, values 8t..8t+7, r = 0, 1 — block_quantize_one's whole row in
// its two rounds (cols ≤ 4,096); zeros past the row.
struct NormPreload {
    float4 g[2][2];
    bool on = false;
    __device__ __forceinline__ void load(const float* nw, int cols) {
        const int q = threadIdx.x >> 2, t = threadIdx.x & 3, nb = cols / 32;
        on = QMMA_NW_PRELOAD && nw && cols <= 2 * 32 * QMMA_THREADS / 4;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int b = k * (QMMA_THREADS / 4) + q;
            g[k][0] = g[k][1] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (on && b < nb) {
                g[k][0] = *(const float4*)(nw + b * 32 + 8 * t);
                g[k][1] = *(const float4*)(nw + b * 32 + 8 * t + 4);
            }
        }
    }
};

// One token's activations for the whole block in one round of loads: lane
// quad q of the block takes block q of every 64, lane t its values 8t..8t+7
// (x — and with NORM the norm weights — of up to 4 rounds requested at once,
// so the reads queued behind the weights the block has just asked for cost
// one latency, not the 2–4 of row_inv_rms + quantize_tile: run 74 measured
// 2.7–5.8 µs from the wait to quantized activations). Codes and scales as
// quantize_block32, into xq / xs (stride 2). NORM needs the whole row in 2
// rounds (cols ≤ 4,096); without a norm, 4 rounds at a time.
// Sync: the barrier of the warps taking part; L2: x read from L2 (a kernel
// whose blocks wrote and read x before may hold stale lines in L1).
template <bool NORM, class Sync = SyncBlock, bool L2 = false>
__device__ __forceinline__ void block_quantize_one(const float* x, const float* nw, float eps, int cols,
                                                   signed char* xq, float2* xs, float* scratch,
                                                   const NormPreload* pre = nullptr) {
    constexpr int R = NORM ? 2 : 4;  // rounds of 64 blocks in flight
    const int q = threadIdx.x >> 2, t = threadIdx.x & 3, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int nb = cols / 32;
    const int rounds = (nb + QMMA_THREADS / 4 - 1) / (QMMA_THREADS / 4);
    for (int r0 = 0; r0 < rounds; r0 += R) {
        float v[R][8], g[NORM ? R : 1][8];
#pragma unroll
        for (int k = 0; k < R; k++) {
            const int b = (r0 + k) * (QMMA_THREADS / 4) + q;
#pragma unroll
            for (int i = 0; i < 8; i++) v[k][i] = g[NORM ? k : 0][i] = 0.f;
            if (r0 + k < rounds && b < nb) {
                const float4* xp = (const float4*)(x + b * 32 + 8 * t);
                const float4 x0 = L2 ? __ldcg(xp) : xp[0], x1 = L2 ? __ldcg(xp + 1) : xp[1];
                v[k][0] = x0.x; v[k][1] = x0.y; v[k][2] = x0.z; v[k][3] = x0.w;
                v[k][4] = x1.x; v[k][5] = x1.y; v[k][6] = x1.z; v[k][7] = x1.w;
                if (NORM) {
                    const bool ahead = pre && pre->on && r0 == 0;
                    const float4 n0 = ahead ? pre->g[k][0] : *(const float4*)(nw + b * 32 + 8 * t),
                                 n1 = ahead ? pre->g[k][1] : *(const float4*)(nw + b * 32 + 8 * t + 4);
                    g[NORM ? k : 0][0] = n0.x; g[NORM ? k : 0][1] = n0.y; g[NORM ? k : 0][2] = n0.z;
                    g[NORM ? k : 0][3] = n0.w; g[NORM ? k : 0][4] = n1.x; g[NORM ? k : 0][5] = n1.y;
                    g[NORM ? k : 0][6] = n1.z; g[NORM ? k : 0][7] = n1.w;
                }
            }
        }
        if (NORM) {
            // The whole row is in registers (the caller checked rounds ≤ R): its 1/rms first.
            float ss = 0.f;
#pragma unroll
            for (int k = 0; k < R; k++)
#pragma unroll
                for (int i = 0; i < 8; i++) ss = fmaf(v[k][i], v[k][i], ss);
            ss = warp_sum(ss);
            if (lane == 0) scratch[wid] = ss;
            Sync::sync();
            float tot = 0.f;
#pragma unroll
            for (int w = 0; w < QMMA_WARPS; w++) tot += scratch[w];
            const float inv = 1.0f / sqrtf(tot / (float)cols + eps);
#pragma unroll
            for (int k = 0; k < R; k++)
#pragma unroll
                for (int i = 0; i < 8; i++) v[k][i] = g[NORM ? k : 0][i] * (v[k][i] * inv);
        }
#pragma unroll
        for (int k = 0; k < R; k++) {
            const int b = (r0 + k) * (QMMA_THREADS / 4) + q;
            u32 w[2];
            const float2 ds = quad_quantize8(v[k], w);
            if (r0 + k < rounds && b < nb) {
                *(uint2*)(xq + b * 32 + 8 * t) = make_uint2(w[0], w[1]);
                if (t == 0) {
                    xs[b * 2] = ds;
                    xs[b * 2 + 1] = make_float2(0.f, 0.f);
                }
            }
        }
    }
    Sync::sync();
}

// The activations of an in-block (SX) product, after `before` bytes of
// dynamic shared memory: quantized (RMS-normalised first with nw) there.
template <int NT8, int SX, int SB>
__device__ __forceinline__ int in_block_x(const float* x, const float* nw, float eps, int n, int cols,
                                          unsigned char* smem, const signed char*& xq, const float2*& xs,
                                          float* inv, float* scratch, const NormPreload* pre = nullptr) {
    if (!SX) return NT8 * 8;
    const int nb = cols / 32;
    const int xs_stride = n <= 2 ? 2 : 8;
    xs = (const float2*)smem;
    xq = (const signed char*)(smem + (long)nb * xs_stride * sizeof(float2));
    if (QMMA_ASYNC_X && SX == 2 && (!nw || cols <= 2 * 32 * QMMA_THREADS / 4)) {
        if (nw) block_quantize_one<true>(x, nw, eps, cols, (signed char*)xq, (float2*)xs, scratch, pre);
        else block_quantize_one<false>(x, nw, eps, cols, (signed char*)xq, (float2*)xs, scratch);
        return xs_stride;
    }
    row_inv_rms(x, nw, n, cols, eps, inv, scratch);
    quantize_tile(x, nw, inv, 0, n, cols, (signed char*)xq, (float2*)xs, xs_stride);
    __syncthreads();
    return xs_stride;
}

// One-token activations handed over already quantized (xq set): the
// producer's epilogue wrote them as in_block_x leaves them — (dx, Σq) of
// block b at float2 2b (16 bytes a block), then the codes — so they are
// copied into shared memory in one round of 16-byte loads (6–20 KB a block
// where in_block_x reads and quantizes 16–55 KB of floats, queued behind the
// weights this block has just requested: run 143 measured the one-token
// products of a step 18% shorter, q4_0). Else as in_block_x. Returns the
// scales' stride.
template <int NT8, int SX, int SB>
__device__ __forceinline__ int one_token_x(const float* x, const float* nw, float eps, int n, int cols,
                                           unsigned char* smem, const signed char*& xq, const float2*& xs,
                                           float* inv, float* scratch, const NormPreload* pre = nullptr) {
    if (SX != 2 || !xq) return in_block_x<NT8, SX, SB>(x, nw, eps, n, cols, smem, xq, xs, inv, scratch, pre);
    const int nb = cols / 32, n16 = nb + cols / 16;
    const uint4* src = (const uint4*)xq;
    uint4* dst = (uint4*)smem;
    constexpr int K = 6;  // loads a thread has in flight
    for (int k0 = 0; k0 < n16; k0 += K * QMMA_THREADS) {
        uint4 v[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int i = k0 + k * QMMA_THREADS + threadIdx.x;
            if (i < n16) v[k] = __ldcg(src + i);  // L2: written by the kernel before
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int i = k0 + k * QMMA_THREADS + threadIdx.x;
            if (i < n16) dst[i] = v[k];
        }
    }
    __syncthreads();
    xs = (const float2*)smem;
    xq = (const signed char*)(smem + nb * 16);
    return 2;
}

// Where quantize_x's f16 form puts column c (0..31) of a block: the
// position, in f16 values from the block's start, the f16 products read it at.
__device__ __forceinline__ int f16_activation_slot(int c) {
    const int i = c >> 2, pr = c & 1 ? 1 : 0, r = (c >> 1) & 1;  // float4 i; x, z: pair 0; y, w: pair 1
    // c mod 4 = 0, 1, 2, 3 (x, y, z, w): the word (x, z) or (y, w), x and y its low halves.
    return ((i & 3) * 2 + (i >> 2)) * 4 + pr * 2 + r;
}

// 32 values, one a lane of a warp, as a q8_0 block exactly as
// quantize_block32 makes it: this lane's code; (dx rounded to f16, Σq) to
// every lane.
__device__ __forceinline__ float2 warp_q8_block(float v, int& q) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = d != 0.f ? 1.0f / d : 0.f;
    q = (int)roundf(v * id);
    const int sum = __reduce_add_sync(0xffffffffu, q);
    return make_float2(f16_to_f32(f32_to_f16(d)), __int_as_float(sum));
}

// warp_q8_block's codes at `codes` (32 bytes), its (dx, Σq) returned.
__device__ __forceinline__ float2 warp_quantize_code(float v, signed char* codes) {
    int q;
    const float2 sc = warp_q8_block(v, q);
    codes[threadIdx.x & 31] = (signed char)q;
    return sc;
}

// warp_q8_block written where one_token_x reads block b: (dx, Σq) at float2
// 2b of `codes`, the codes from byte 16·nb + 32b.
__device__ __forceinline__ void warp_quantize_block(float v, unsigned char* codes, int nb, int b) {
    const int lane = threadIdx.x & 31;
    int q;
    const float2 sc = warp_q8_block(v, q);
    const u32 byte = (u32)(q & 0xff);
    const u32 word = byte | (__shfl_down_sync(0xffffffffu, byte, 1) << 8) |
                     (__shfl_down_sync(0xffffffffu, byte, 2) << 16) | (__shfl_down_sync(0xffffffffu, byte, 3) << 24);
    if ((lane & 3) == 0) *(u32*)(codes + nb * 16 + b * 32 + lane) = word;
    if (lane == 0) ((float2*)codes)[b * 2] = sc;
}

// Activations for steps too large for in-block quantization, one block
// of QX_THREADS a token (grid: 8·token tiles; the padding tokens' blocks
// only zero their scales): the row's sum of squares, then each warp's q8_0
// blocks quantized as quantize_block32 does (warp_q8_block, a value a
// lane). xq: [8·tiles][cols] codes; xs: [cols/32][8·tiles] (dx, Σq, with
// q4_0's offset folded where off). hx: f16 activations instead (xq: [n][cols]
// f16 in a_fragments_f16's order; xs untouched), for the grouped f16
// products (qmmh_*). Where blocks of 8 tokens each read their tokens' whole
// rows for the norms and then quantized a quarter of them (16 blocks for 32
// tokens of 4,096), the step's timeline had each normed quantize_x ending
// ~9 µs after the product before it (run 158).
#define QX_THREADS 512
extern "C" __global__ void __launch_bounds__(QX_THREADS) quantize_x(const float* x, const float* nw, float eps, int n,
                                                                     int cols, int off, int hx, signed char* xq,
                                                                     float2* xs) {
    __shared__ float part[QX_THREADS / 32];
    __shared__ float inv_s;
    pdl_launch_dependents();
    pdl_wait();
    const int t = blockIdx.x, stride = gridDim.x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = cols / 32;
    if (t >= n) {
        if (!(QMMA_F16X || hx))
            for (int b = threadIdx.x; b < nb; b += QX_THREADS)
                xs[b * stride + t] = make_float2(0.f, __int_as_float(off ? X_MAGIC : 0));
        return;
    }
    const float* xr = x + (long)t * cols;
    float inv = 1.f;
    if (nw) {
        float ss = 0.f;
        for (int i = threadIdx.x; i < cols / 4; i += QX_THREADS) {
            const float4 f = ((const float4*)xr)[i];
            ss = fmaf(f.x, f.x, fmaf(f.y, f.y, fmaf(f.z, f.z, fmaf(f.w, f.w, ss))));
        }
        ss = warp_sum(ss);
        if (lane == 0) part[warp] = ss;
        __syncthreads();
        if (threadIdx.x == 0) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < QX_THREADS / 32; w++) s += part[w];
            inv_s = 1.0f / sqrtf(s / (float)cols + eps);
        }
        __syncthreads();
        inv = inv_s;
    }
#pragma unroll 4
    for (int b = warp; b < nb; b += QX_THREADS / 32) {
        float v = xr[b * 32 + lane];
        if (nw) v = nw[b * 32 + lane] * (v * inv);
        if (QMMA_F16X || hx) {
            ((u16*)xq)[(long)t * cols + b * 32 + f16_activation_slot(lane)] = f32_to_f16(v);
        } else {
            const float2 sc = warp_quantize_code(v, xq + (long)t * cols + b * 32);
            if (lane == 0)
                xs[b * stride + t] = make_float2(sc.x, off ? __int_as_float(X_MAGIC - off * __float_as_int(sc.y)) : sc.y);
        }
    }
}

// item_epilogue of a one-token SwiGLU product that also quantizes its
// output for the next product (one_token_x's form at `codes`): items come
// to a block in pairs (2p, 2p + 1), whose 32 outputs are q8_0 block p —
// the first's 16 wait in `pair` (shared memory) for the second's. Warp 0
// sums the rows in item_epilogue's order, so the floats written are the
// same. Resets acc.
template <int RT, class Sync = SyncBlock>
__device__ __forceinline__ void swiglu_epilogue_q8(float (&acc)[RT][1][4], float (*red)[RT * 16][9], int item,
                                                   float* __restrict__ out, int half_rows, unsigned char* codes,
                                                   float* pair) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < RT; r++) {
        if (t == 0) {
            red[warp][r * 16 + g][0] = acc[r][0][0];
            red[warp][r * 16 + g + 8][0] = acc[r][0][2];
        }
        acc[r][0][0] = acc[r][0][1] = acc[r][0][2] = acc[r][0][3] = 0.f;
    }
    Sync::sync();
    if (warp == 0) {
        const int rr = lane & 15;
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int v = 0; v < QMMA_WARPS; v++) a += red[v][rr][0];
#pragma unroll
        for (int v = 0; v < QMMA_WARPS; v++) b += red[v][RT * 16 - 16 + rr][0];
        const float y = silu(a) * b;
        if (lane < 16) out[item * 16 + rr] = y;
        if (item & 1) warp_quantize_block(lane < 16 ? pair[lane] : y, codes, half_rows / 32, item >> 1);
        else if (lane < 16) pair[lane] = y;
    }
    Sync::sync();
}

// The product. Blocks are persistent: block i takes tiles i, i + gridDim.x,
// … of 16 output rows (SwiGLU: a gate tile with its up tile), its 8 warps
// splitting each tile's units, so the activations are quantized once per
// block and the next tile's weights are on their way while a tile ends.
// NT8 token tiles of 8. MODE as gemv.cu: 0 store (+bias), 1 accumulate,
// 2 SwiGLU, 3 QKV + RoPE + KV append. SX: quantize x (n ≤ 8 tokens) in
// shared memory (2: exactly one token, whose mma column alone is scaled and
// summed — half the f32 work of a decode step); else xq/xs are quantize_x's.
// Dynamic shared memory: SX ? nb·xs_stride·8 + n·cols : 0 bytes, xs_stride =
// n ≤ 2 ? 2 : 8.
//
// Decode is a weight stream: each lane asks for a batch of units (codes and
// scales) and for the next batch before working on the current one.
template <int F, int NT8, int MODE, int SX>
__device__ __forceinline__ void qmma_body(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                          const u16* __restrict__ mins, int units, int tiles,
                                          const float* __restrict__ x, const float* __restrict__ nw, float eps,
                                          const signed char* xq, const float2* xs, int n, int cols,
                                          const float* __restrict__ bias, float* __restrict__ out, int out_rows,
                                          int half_rows, const RopeCtx& rc, const char* next_w, long next_bytes,
                                          unsigned char* qout, const ChainSync& chain) {
    constexpr int RT = MODE == 2 ? 2 : 1;  // row tiles per work item
    constexpr bool ONE = SX == 2;
    constexpr bool HX = QMMA_F16X && SX == 0;
    constexpr int SB = QFmt<F>::BLOCKS;
    // Activations staged in shared memory (int8 codes only: not with F16X).
    constexpr bool XS = QMMA_X_STAGE && SX == 0 && !QMMA_PINGPONG && !QMMA_F16X;
    constexpr int UB0 = (ONE ? QMMA_ONE_UB : QMMA_NT4_TWO_BLOCKS && NT8 == 4 ? 4 : 8) / RT;
    constexpr int UB = XS && QMMA_STAGE_UB(NT8, SB) < UB0 ? QMMA_STAGE_UB(NT8, SB) : UB0;  // units per lane per batch
    // Staged bytes a unit: codes [NT8·8 tokens][SB·32], then scales [SB][NT8·8] (dx, Σq).
    constexpr int UXB = NT8 * 8 * SB * 32 + SB * NT8 * 8 * 8;
    constexpr int STEP = UB * QMMA_WARPS;  // units per batch of the block
    typedef typename QScale<F>::type ScaleVec;
    extern __shared__ __align__(16) unsigned char qmma_smem[];
    __shared__ float red[QMMA_WARPS][RT * 16][9];
    __shared__ float inv[8], scratch[QMMA_WARPS * 8];
    __shared__ TokenSlot slots[MODE == 3 ? NT8 * 8 : 1];
    __shared__ float pair[MODE == 2 && ONE ? 16 : 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nb = cols / 32;
    const int items = MODE == 2 ? half_rows / 16 : tiles;
    const int per_item = (units + STEP - 1) / STEP;
    // A one-token SwiGLU product quantizing its output (qout) deals its items
    // in pairs (2p, 2p + 1: block i takes pairs i, i + gridDim.x, …), each
    // pair one q8_0 block of the next product's input (swiglu_epilogue_q8).
    const bool pairs = MODE == 2 && ONE && qout != nullptr;
    const int npairs = items / 2;
    const int mine = pairs ? (blockIdx.x < npairs ? 2 * ((npairs - 1 - blockIdx.x) / gridDim.x + 1) : 0)
                           : blockIdx.x < items ? (items - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    const int first_item = pairs ? 2 * blockIdx.x : blockIdx.x;
    const int total = mine * per_item;
#if QMMA_STAMPS
    // entry, waited, activations, first batch, end, then (one-token
    // products) the second batch requested, the second batch done.
    u64 stamp[7] = {0, 0, 0, 0, 0, 0, 0};
    struct Flush {
        u64* s;
        __device__ ~Flush() {
            if (threadIdx.x != 0) return;
            s[4] = global_ns();
            const u32 i = atomicAdd(&qmma_stamp_count, 1u) % ((1u << 22) / 8);
            u64* r = qmma_stamps + 8ull * i;
            r[0] = ((u64)(F * 1000 + NT8 * 100 + MODE * 10 + SX) << 32) | blockIdx.x;
            for (int k = 0; k < 7; k++) r[1 + k] = s[k];
        }
    } flush{stamp};
#endif
    QMMA_STAMP(0);

    uint4 wa[RT][UB], wb[RT][UB];
    ScaleVec sa[RT][UB], sb[RT][UB], ma[RT][UB], mb[RT][UB];
    // Batch (item, base) of this block: units base.. of item (a row tile;
    // SwiGLU: a gate tile with its up tile). Addresses from one base pointer
    // a row tile, the units at constant offsets: index arithmetic for every
    // unit was half of a one-token product's instructions (ncu, session 16).
    auto load_at = [&](int item, int base, uint4 (*buf)[UB], ScaleVec (*sv)[UB], ScaleVec (*mv)[UB]) {
        const bool full = base + STEP <= units;
#pragma unroll
        for (int r = 0; r < RT; r++) {
            const long u0 = (long)(r ? item + half_rows / 16 : item) * units + base + warp;
            const uint4* wp = w + u0 * 32 + lane;
            const ScaleVec* sp = (const ScaleVec*)scales + u0 * 8 + g;
            const ScaleVec* mp = (const ScaleVec*)mins + u0 * 8 + g;
#pragma unroll
            for (int u = 0; u < UB; u++) {
                if (full || base + u * QMMA_WARPS + warp < units) {
                    buf[r][u] = ld_stream(wp + u * QMMA_WARPS * 32);
                    sv[r][u] = sp[u * QMMA_WARPS * 8];
                    if (QFmt<F>::MIN) mv[r][u] = mp[u * QMMA_WARPS * 8];
                }
            }
        }
    };
    // Batch `it` of this block: item it / per_item, units from (it % per_item)·STEP.
    auto item_of = [&](int k) {  // this block's k-th item
        return pairs ? 2 * (blockIdx.x + (k >> 1) * gridDim.x) + (k & 1) : blockIdx.x + k * gridDim.x;
    };
    auto load = [&](int it, uint4 (*buf)[UB], ScaleVec (*sv)[UB], ScaleVec (*mv)[UB]) {
        load_at(item_of(it / per_item), (it % per_item) * STEP, buf, sv, mv);
    };
    // The batch after (item, base).
    auto advance = [&](int& item, int& base) {
        base += STEP;
        if (base >= units) {
            base = 0;
            item = !pairs ? item + gridDim.x : item & 1 ? item - 1 + 2 * gridDim.x : item + 1;
        }
    };
    // An item is done: its epilogue (and, quantizing, the pair's q8_0 block).
    auto finish_item = [&](float (&acc)[RT][NT8][4], int item) {
        if constexpr (MODE == 2 && ONE && NT8 == 1) {
            if (pairs) {
                swiglu_epilogue_q8<RT>(acc, red, item, out, half_rows, qout, pair);
                return;
            }
        }
        item_epilogue<NT8, MODE, RT, ONE>(acc, red, item * 16, n, bias, out, out_rows, half_rows, rc, slots);
    };
    // This warp's activations of batch `it` into its stage buffer k (2 a warp).
    auto stage_x = [&](int it, int k) {
        if (!XS) return;
        unsigned char* wbuf = qmma_smem + (long)((warp * 2 + k) * UB) * UXB;
        const int base = (it % per_item) * STEP;
#pragma unroll
        for (int u = 0; u < UB; u++) {
            const int p = base + u * QMMA_WARPS + warp;
            if (p >= units) break;
            unsigned char* dst = wbuf + u * UXB;
            const int nblk = min(SB, nb - p * SB);  // a row's last unit may hold fewer blocks
            const int cpt = nblk * 2;               // 16-byte chunks a token
            for (int c = lane; c < n * cpt; c += 32) {
                const int tok = c / cpt, q = c - tok * cpt;
                cp_async16(dst + tok * (SB * 32) + q * 16, xq + (long)tok * cols + p * SB * 32 + q * 16, true);
            }
            const char* src = (const char*)(xs + (long)p * SB * NT8 * 8);
            for (int c = lane; c < nblk * NT8 * 4; c += 32)
                cp_async16(dst + NT8 * 8 * SB * 32 + c * 16, src + c * 16, true);
        }
    };
    // The next product's weights towards L2, once this block's last batch is
    // requested: the DRAM time of the step's kernel boundaries (where a block
    // waits for the next kernel's first bytes) goes to bytes it needs anyway.
    auto prefetch_next = [&]() {
        if (next_bytes <= 0) return;
        const long chunk = ((next_bytes + gridDim.x - 1) / gridDim.x + 127) / 128 * 128;
        const long end = min(next_bytes, (long)(blockIdx.x + 1) * chunk);
        for (long b = blockIdx.x * chunk + threadIdx.x * 128L; b < end; b += QMMA_THREADS * 128L)
            prefetch_l2(next_w + b);
    };
    constexpr bool WARM = QMMA_WARM && SX == 2 && !XS && !QMMA_PINGPONG;
    constexpr bool COLS = QMMA_ONE_COLS && ONE && !XS && !QMMA_PINGPONG && !WARM;
    if constexpr (COLS) {
        // One token, blocks in mma columns (one_cols_group): each lane loads
        // its batch's codes as above and, per group of CPG blocks, only the
        // scales of its own two columns.
        constexpr int NCOL = UB * SB, CPG = NCOL < 8 ? NCOL : 8, GPB = NCOL / CPG, UG = CPG / SB;
        uint2 sa1[RT][GPB], sb1[RT][GPB], ma1[RT][GPB], mb1[RT][GPB];
        auto load_one = [&](int item, int base, uint4 (&buf)[RT][UB], uint2 (&sv)[RT][GPB], uint2 (&mv)[RT][GPB]) {
            const bool full = base + STEP <= units;
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const int u0 = (r ? item + half_rows / 16 : item) * units + base + warp;
                const uint4* wp = w + (long)u0 * 32 + lane;
#pragma unroll
                for (int u = 0; u < UB; u++)
                    if (full || base + u * QMMA_WARPS + warp < units) buf[r][u] = ld_stream(wp + u * QMMA_WARPS * 32);
#pragma unroll
                for (int q = 0; q < GPB; q++) {
                    sv[r][q] = mv[r][q] = make_uint2(0u, 0u);
                    if (SB == 2) {
                        const int u = q * UG + t;  // the lane's unit: both its blocks
                        if (full || base + u * QMMA_WARPS + warp < units) {
                            sv[r][q] = ((const uint2*)scales)[((long)u0 + u * QMMA_WARPS) * 8 + g];
                            if (QFmt<F>::MIN) mv[r][q] = ((const uint2*)mins)[((long)u0 + u * QMMA_WARPS) * 8 + g];
                        }
                    } else {
#pragma unroll
                        for (int k = 0; k < 2; k++) {
                            const int u = q * UG + 2 * t + k;  // the lane's two units
                            if (2 * t + k < CPG && (full || base + u * QMMA_WARPS + warp < units)) {
                                const u32 v = ((const u32*)scales)[((long)u0 + u * QMMA_WARPS) * 8 + g];
                                if (k) sv[r][q].y = v; else sv[r][q].x = v;
                                if (QFmt<F>::MIN) {
                                    const u32 m = ((const u32*)mins)[((long)u0 + u * QMMA_WARPS) * 8 + g];
                                    if (k) mv[r][q].y = m; else mv[r][q].x = m;
                                }
                            }
                        }
                    }
                }
            }
        };
        // EpiloguePreload: what each row of an item's epilogue adds — the
        // bias (MODE 0, 3), the output it accumulates into (MODE 1) — read
        // into registers of threads 0..15 a batch or more ahead, so that the
        // block's last act is not a dependent L2 (or DRAM) round trip: the
        // bias is constant (read before the wait), the output is written by
        // kernels before (read after it).
        float pre0 = 0.f, pre1 = 0.f, pre_c = 1.f, pre_s = 0.f;
        constexpr bool PRELOAD = QMMA_EPI_PRELOAD && MODE != 2;
        auto preload = [&](int item) {
            if (!PRELOAD || threadIdx.x >= 16) return;
            const int row = item * 16 + threadIdx.x;
            if (row >= out_rows) return;
            if (MODE == 1) {
                pre0 = __ldcg(out + row);
            } else if (bias) {
                pre0 = bias[row];
                if (MODE == 3) pre1 = bias[row ^ 1];
            }
            if (MODE == 3 && QMMA_ROPE_PRELOAD) {
                const int h = row / rc.head_dim, d = row % rc.head_dim;
                pre_c = 1.f;
                pre_s = 0.f;
                if (rope_turns(rc, h, d)) {
                    sincosf((float)rc.positions[0] * rc.inv_freq[d >> 1], &pre_s, &pre_c);
                    if (!(d & 1)) pre_s = -pre_s;
                }
            }
        };
        pdl_launch_dependents();
        int ci = first_item, cb = 0, li = first_item, lb = 0;
        advance(li, lb);
        if (total > 0) load_one(first_item, 0, wa, sa1, ma1);
        if (MODE != 1 && total > 0) preload(first_item);
        // (The residual products, MODE 1, have no norm. q4_1's SwiGLU
        // product holds its mins too: with 16 more registers across the wait,
        // ptxas put its consume back behind the next batch's loads, the wait
        // QMMA_TOUCH removes — tests/gpu/sass_scoreboard.py.)
        constexpr bool NPRE = MODE != 1 && !(MODE == 2 && QFmt<F>::MIN && QFmt<F>::U4);
        NormPreload npre;
        if (NPRE) npre.load(SX == 2 && QMMA_ASYNC_X && !xq && total > 0 ? nw : nullptr, cols);
        // QMMA_ONE_PRELOAD2: the second batch too before the wait.
        const bool pre2 = (QMMA_ONE_PRELOAD2 == 1 || (QMMA_ONE_PRELOAD2 == 2 && QFmt<F>::U4)) && total > 1;
        if (pre2) load_one(li, lb, wb, sb1, mb1);
        if (MODE == 3) preload_token_slots(rc, n, NT8 * 8, slots);
        chain_wait(chain);
        QMMA_STAMP(1);
        if (total == 0) return;
        if (MODE == 1) preload(first_item);
        if (total == 1) prefetch_next();
        one_token_x<NT8, SX, QFmt<F>::BLOCKS>(x, nw, eps, n, cols, qmma_smem, xq, xs, inv, scratch,
                                              NPRE ? &npre : nullptr);
        QMMA_STAMP(2);
        float acc[RT][1][4];
#pragma unroll
        for (int r = 0; r < RT; r++) acc[r][0][0] = acc[r][0][1] = acc[r][0][2] = acc[r][0][3] = 0.f;
        auto consume_one = [&](int item, int base, const uint4 (&buf)[RT][UB], const uint2 (&sv)[RT][GPB],
                               const uint2 (&mv)[RT][GPB]) {
            const int ubase = base + warp;
            const signed char* xqb = xq + ubase * SB * 32;
            const float2* xsb = xs + ubase * SB * 2;  // one token: in_block_x strides 2
            const bool full = (base + STEP) * SB <= nb;
#pragma unroll
            for (int q = 0; q < GPB; q++) {
                uint2 sq[RT], mq[RT];
#pragma unroll
                for (int r = 0; r < RT; r++) {
                    sq[r] = sv[r][q];
                    mq[r] = mv[r][q];
                }
                if (full) one_cols_group<F, RT, UB, CPG, false>(acc, buf, q, sq, mq, xqb, xsb, ubase, units, nb, g, t);
                else one_cols_group<F, RT, UB, CPG, true>(acc, buf, q, sq, mq, xqb, xsb, ubase, units, nb, g, t);
            }
            if (base + STEP < units) return;
            // The quad's partial sums of rows g, g + 8 into lane t = 0's.
#pragma unroll
            for (int r = 0; r < RT; r++)
#pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    acc[r][0][e] += __shfl_xor_sync(0xffffffffu, acc[r][0][e], 1);
                    acc[r][0][e] += __shfl_xor_sync(0xffffffffu, acc[r][0][e], 2);
                }
            if constexpr (PRELOAD && NT8 == 1) {
                item_epilogue<NT8, MODE, RT, ONE, SyncBlock, true>(acc, red, item * 16, n, bias, out, out_rows,
                                                                   half_rows, rc, slots, pre0, pre1, pre_c, pre_s);
            } else {
                finish_item(acc, item);
            }
            // The block's next item, if any (its first batch is on its way).
            if (PRELOAD) {
                int ni = item, nb0 = base;
                advance(ni, nb0);
                if (ni < (MODE == 2 ? half_rows / 16 : tiles)) preload(ni);
            }
        };
        // Two buffers whose roles alternate (the loop unrolled by two), so no
        // batch is copied from one to the other.
        auto step = [&](int it, const uint4 (&cur)[RT][UB], const uint2 (&cs)[RT][GPB], const uint2 (&cm)[RT][GPB],
                        uint4 (&nxt)[RT][UB], uint2 (&ns)[RT][GPB], uint2 (&nm)[RT][GPB]) {
            // Unconditionally: a touch on one path only leaves ptxas waiting
            // again after the paths join (the SASS of a conditional form).
            if (QMMA_TOUCH) touch_word(cur[0][0].x, units);
            if (it + 1 < total && !(pre2 && it == 0)) load_one(li, lb, nxt, ns, nm);
            if (it == 0) QMMA_STAMP(5);
            if (it + 2 == total) prefetch_next();
#if QMMA_STAMPS && QMMA_CONSUME_TWICE == 1
            if (it == 0) {
                consume_one(ci, cb, cur, cs, cm);
                QMMA_STAMP(6);
            }
#elif QMMA_STAMPS && QMMA_CONSUME_TWICE == 2
            if (it == 0 && threadIdx.x == 0) {
                u32 h = 0;
#pragma unroll
                for (int r = 0; r < RT; r++) {
#pragma unroll
                    for (int u = 0; u < UB; u++) h ^= cur[r][u].x ^ cur[r][u].y ^ cur[r][u].z ^ cur[r][u].w;
#pragma unroll
                    for (int q = 0; q < GPB; q++) h ^= cs[r][q].x ^ cs[r][q].y;
                }
                u64 t;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) : "r"(h));
                stamp[6] = t;
            }
#endif
            consume_one(ci, cb, cur, cs, cm);
            advance(ci, cb);
            advance(li, lb);
        };
        for (int it = 0; it < total; it += 2) {
            step(it, wa, sa1, ma1, wb, sb1, mb1);
            if (it == 0) QMMA_STAMP(3);
            if (it + 1 < total) step(it + 1, wb, sb1, mb1, wa, sa1, ma1);
            if (it == 0 && !QMMA_CONSUME_TWICE) QMMA_STAMP(6);
        }
        return;
    }
    pdl_launch_dependents();
    // The weights do not depend on the kernel before: request the first two
    // batches before waiting for it.
    if (total > 0) load(0, wa, sa, ma);
    if (QMMA_PINGPONG && total > 1) load(1, wb, sb, mb);
    if (MODE == 3) preload_token_slots(rc, n, NT8 * 8, slots);
    // The one-token path's first pass through its loop may run dry, before
    // the wait (QMMA_WARM, above).
    if (WARM && total == 0) {
        chain_wait(chain);
        return;
    }
    int xs_stride = NT8 * 8;
    if (!WARM) {
        chain_wait(chain);
        QMMA_STAMP(1);
        if (total == 0) return;
        if (total == 1 || (QMMA_PINGPONG && total == 2)) prefetch_next();
        xs_stride = one_token_x<NT8, SX, QFmt<F>::BLOCKS>(x, nw, eps, n, cols, qmma_smem, xq, xs, inv, scratch);
    }
    if (XS) {
        stage_x(0, 0);
        cp_async_commit();
    }
    QMMA_STAMP(2);

    float acc[RT][NT8][4];
#pragma unroll
    for (int r = 0; r < RT; r++)
#pragma unroll
        for (int j = 0; j < NT8; j++) acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0.f;

    // Batch `it` (weights in buf) into acc; at an item's last batch, its epilogue.
    // Unit slot u (unit p) of stage buffer k, addressed as the activations
    // of the whole row are (rebased by the unit's first column and block).
    auto staged = [&](int k, int u, int p, const signed char*& uq, const float2*& us) {
        const unsigned char* ub = qmma_smem + (long)((warp * 2 + k) * UB + u) * UXB;
        uq = (const signed char*)ub - p * SB * 32;
        us = (const float2*)(ub + NT8 * 8 * SB * 32) - (long)p * SB * xs_stride;
    };
    auto consume_at = [&](int it, int item, int base, const uint4 (&buf)[RT][UB], const ScaleVec (&sv)[RT][UB],
                          const ScaleVec (&mv)[RT][UB], bool dry) {
        const int xcols = XS ? SB * 32 : cols;  // row stride of the activation codes
        // A batch of whole units only (all but a row's last, mostly) runs
        // without the bounds checks.
        if ((base + STEP) * QFmt<F>::BLOCKS <= nb) {
#pragma unroll
            for (int u = 0; u < UB; u++) {
                const int p = base + u * QMMA_WARPS + warp;
                const signed char* uq = xq;
                const float2* us = xs;
                if (XS) staged(it & 1, u, p, uq, us);
                batch_unit<F, NT8, RT, ONE, false, UB, HX, SX == 0>(acc, buf, sv, mv, u, p, nb, n, xcols, uq, us, xs_stride, g,
                                                           t);
            }
        } else {
#pragma unroll
            for (int u = 0; u < UB; u++) {
                const int p = base + u * QMMA_WARPS + warp;
                if (p >= units) break;
                const signed char* uq = xq;
                const float2* us = xs;
                if (XS) staged(it & 1, u, p, uq, us);
                batch_unit<F, NT8, RT, ONE, true, UB, HX, SX == 0>(acc, buf, sv, mv, u, p, nb, n, xcols, uq, us, xs_stride, g, t);
            }
        }
        if (dry || base + STEP < units) return;
        finish_item(acc, item);
    };
    auto consume = [&](int it, const uint4 (&buf)[RT][UB], const ScaleVec (&sv)[RT][UB],
                       const ScaleVec (&mv)[RT][UB], bool dry) {
        consume_at(it, item_of(it / per_item), (it % per_item) * STEP, buf, sv, mv, dry);
    };
    if (QMMA_PINGPONG) {
        // Two batches in flight through every wait (see gemv.cu).
        for (int it = 0; it < total; it += 2) {
            consume(it, wa, sa, ma, false);
            if (it + 2 < total) load(it + 2, wa, sa, ma);
            if (it + 1 < total) {
                consume(it + 1, wb, sb, mb, false);
                if (it + 3 < total) load(it + 3, wb, sb, mb);
            }
            if (it + 2 == total - 1 || it + 3 == total - 1) prefetch_next();
        }
    } else {
        // Cursors of the batch consumed (ci, cb) and of the one after it (li, lb).
        int ci = first_item, cb = 0, li = first_item, lb = 0;
        advance(li, lb);
        for (int it = WARM ? -1 : 0; it < total; it++) {
            if (WARM && it <= 0) {
                // it = -1: activations from the (never written) weights, a
                // throwaway batch; it = 0: the real ones, after the wait.
                if (it == 0) {
                    __syncthreads();  // the dry batch is done with shared memory
                    chain_wait(chain);
                    if (total == 1) prefetch_next();
                }
                xs_stride = in_block_x<NT8, SX, QFmt<F>::BLOCKS>(it < 0 ? (const float*)w : x, nw, eps, n, cols,
                                                                 qmma_smem, xq, xs, inv, scratch);
            }
            if (it >= 0 && it + 1 < total) {
                load_at(li, lb, wb, sb, mb);
                stage_x(it + 1, (it + 1) & 1);
            }
            if (XS) {
                // Batch it's copies have landed (it + 1's may still be in flight).
                cp_async_commit();
                cp_async_wait<1>();
                __syncwarp();
            }
            if (it >= 0 && it + 2 == total) prefetch_next();
            consume_at(it < 0 ? 0 : it, ci, cb, wa, sa, ma, it < 0);
            if (XS) __syncwarp();  // buffer it & 1 is refilled next iteration
            if (it >= 0) {
                advance(ci, cb);
                advance(li, lb);
            }
            if (it == 0) QMMA_STAMP(3);
            if (WARM && it < 0) {
#pragma unroll
                for (int r = 0; r < RT; r++)
#pragma unroll
                    for (int j = 0; j < NT8; j++) acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0.f;
                continue;
            }
#pragma unroll
            for (int r = 0; r < RT; r++)
#pragma unroll
                for (int u = 0; u < UB; u++) {
                    wa[r][u] = wb[r][u];
                    sa[r][u] = sb[r][u];
                    if (QFmt<F>::MIN) ma[r][u] = mb[r][u];
                }
        }
    }
}

// Two resident blocks per SM (≤ 128 registers) for steps of up to 16 tokens.
#define QMMA_KERNEL(F, NT8, MODE, SX)                                                                   \
    extern "C" __global__ void __launch_bounds__(QMMA_THREADS,                                         \
                                                 (SX) == 2 ? QMMA_ONE_MINB : QMMA_TWO_BLOCKS(NT8) ? 2 : 1) \
        qmma_##F##_##NT8##_##MODE##_##SX(                                                               \
        const uint4* w, const u16* scales, const u16* mins, int units, int tiles, const float* x,         \
        const float* nw, float eps, const signed char* xq, const float2* xs, int n, int cols,             \
        const float* bias, float* out, int out_rows, int half_rows, RopeCtx rc, const char* next_w,      \
        long next_bytes, unsigned char* qout, ChainSync chain) {                                        \
        qmma_body<F, NT8, MODE, SX>(w, scales, mins, units, tiles, x, nw, eps, xq, xs, n, cols, bias, out, \
                                    out_rows, half_rows, rc, next_w, next_bytes, qout, chain);           \
        chain_signal(chain);                                                                            \
    }

#define QMMA_MODES(F, NT8, SX) \
    QMMA_KERNEL(F, NT8, 0, SX) QMMA_KERNEL(F, NT8, 1, SX) QMMA_KERNEL(F, NT8, 2, SX) QMMA_KERNEL(F, NT8, 3, SX)
#define QMMA_FORMAT(F) \
    QMMA_MODES(F, 1, 2) QMMA_MODES(F, 1, 1) QMMA_MODES(F, 1, 0) QMMA_MODES(F, 2, 0) QMMA_MODES(F, 4, 0) \
    QMMA_MODES(F, 8, 0)

#ifndef QMMG_X_MODULE
QMMA_FORMAT(0)
QMMA_FORMAT(1)
QMMA_FORMAT(2)
QMMA_FORMAT(3)
#endif

// Rows [r0, r0 + nrows) of a tiled matrix as row-major f16 (the input of a
// cuBLAS product for large steps). grid-stride over (row, block).
template <int F>
__device__ __forceinline__ void dequant_body(const u32* w, const u16* scales, const u16* mins, int units,
                                             int r0, int nrows, int cols, u16* out) {
    pdl_launch_dependents();
    pdl_wait();
    const int nb = cols / 32;
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < (long)nrows * nb;
         idx += (long)gridDim.x * blockDim.x) {
        const int r = r0 + (int)(idx / nb), b = (int)(idx % nb);
        const int tile = r / 16, rr = r % 16, g = rr & 7, hi = rr >> 3;
        const int p = b / QFmt<F>::BLOCKS, i = b % QFmt<F>::BLOCKS;
        const long si = (((long)tile * units + p) * 8 + g) * (2 * QFmt<F>::BLOCKS) + i * 2 + hi;
        const float d = f16_to_f32(scales[si]);
        const float m = QFmt<F>::MIN ? f16_to_f32(mins[si]) : 0.f;
        u16* o = out + (long)(r - r0) * cols + b * 32;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            const u32* v = w + (((long)tile * units + p) * 32 + g * 4 + t) * 4;
            const u32 lo = v[hi + 2 * i];  // 4-bit: i = block in unit; 8-bit: i = 0
            const u32 up = QFmt<F>::U4 ? (lo >> 4) : v[hi + 2];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                int q0, q1;
                if (QFmt<F>::U4) {
                    q0 = (int)((lo >> (8 * k)) & 0xf);
                    q1 = (int)((up >> (8 * k)) & 0xf);
                } else {
                    q0 = (int)(signed char)((lo >> (8 * k)) & 0xff);
                    q1 = (int)(signed char)((up >> (8 * k)) & 0xff);
                }
                o[4 * t + k] = f32_to_f16(d * (float)(q0 - QFmt<F>::OFF) + m);
                o[16 + 4 * t + k] = f32_to_f16(d * (float)(q1 - QFmt<F>::OFF) + m);
            }
        }
    }
}

#define DEQUANT_KERNEL(F)                                                                              \
    extern "C" __global__ void qdequant_##F(const u32* w, const u16* scales, const u16* mins, int units, \
                                            int r0, int nrows, int cols, u16* out) {                   \
        dequant_body<F>(w, scales, mins, units, r0, nrows, cols, out);                                 \
    }
DEQUANT_KERNEL(0)
DEQUANT_KERNEL(1)
DEQUANT_KERNEL(2)
DEQUANT_KERNEL(3)

// Synthetic weights for benchmarks: random code bytes, constant scales.
extern "C" __global__ void fill_bytes(u32* p, long n_words, u64 seed) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n_words; i += (long)gridDim.x * blockDim.x) {
        u64 z = seed + (u64)i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        p[i] = (u32)(z ^ (z >> 31));
    }
}
extern "C" __global__ void fill_u16(u16* p, long n, int value) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) p[i] = (u16)value;
}
