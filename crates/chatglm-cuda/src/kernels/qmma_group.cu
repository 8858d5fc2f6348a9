// Grouped quantized products for steps of 9..64 tokens over quantize_x's
// activations: the products of batched decode (many sequences, one token
// each) and of short prompts.
//
// Why not qmma_body: its warps split one 16-row tile's units, so every tile
// reads the step's activations from L2 again — at 32 tokens 2.5 bytes of
// activations for each byte of int4 weights (runs 77–79: those products
// wait on the activation loads, and issue ~54 instructions an mma). Here a
// block takes a group of row tiles (8 of two warps each, 128 rows; the
// SwiGLU products' wide groups 16 of one warp) and stages each chunk of
// activations in shared memory once for all of them; weights, scales and
// activations move by cp.async through a ring of stages (Marlin's shape),
// and a block's int32 sums become f32 by the exponent trick instead of I2F.
//
// Groups are cut into chunks of QgDims::CU units, and the chunks of all groups
// dealt to the blocks in equal contiguous runs (stream-K), so that every SM
// has the same work whatever the shape. A group whose chunks went to several
// blocks is summed in block order — deterministic — by the block holding
// its first chunk, whose run ends in it: the others' runs start in it, so
// they publish their parts (workspace, one slot a block: only a block's
// first run can be another block's part) without waiting and go on, and a counter a group (reset
// by the summing block for the next launch) tells the summing block when
// all are in — by then, as its own part is the last to finish, in practice
// no wait. The summing block keeps its own part in shared memory. (Before
// run 171 the block whose part finished last summed them, after every
// thread's fence and a counter round trip a part: 32 int4 sequences 8% (q8)
// and 16% (f16 activations) slower.)

// 1: the kernel after this one may launch as soon as every block has
// started (as qmma_body does); 0: once every block has requested its last
// chunk, so its blocks do not sit on SMs for this kernel's whole length.
// Run 82: the same time either way.
#ifndef QMMG_EARLY_DEPENDENTS
#define QMMG_EARLY_DEPENDENTS 0
#endif

// Measurement only (results meaningless): bit 1 skips the chunks'
// arithmetic, 2 every load after the first stages, 4 the activation loads
// after them, 8 the split groups' sums and the epilogue.
#ifndef QMMG_DRY
#define QMMG_DRY 0
#endif

// Measurement only: per-block phase stamps (globaltimer ns at the block's
// start, then clock64 cycles after it) printed by every block of one launch
// (QMMG_STAMP_LAUNCH, below) of each (format, MODE, form).
#ifndef QMMG_STAMPS
#define QMMG_STAMPS 0
#endif
#if QMMG_STAMPS
__device__ unsigned qmmg_seen[4 * 4 * 2][256];
#endif
// Which launch of each kernel the stamps are of (in a decode step the
// residual form alternates dense, 4h→h: an odd launch is a dense product).
#ifndef QMMG_STAMP_LAUNCH
#define QMMG_STAMP_LAUNCH 20
#endif

// 1: a block starts its share of the next product's weights towards L2
// (prefetch_next) after its last run's part is published or its epilogue
// written, not as its last run's chunks end (0). A part was published
// 2.4 µs (QKV) and 3.2 µs (4h→h) after its chunks — its stores, and the
// release that orders them, queued behind ~70 KB of prefetches a block —
// and 1.9–2.1 µs this way; 32 int4 sequences +0.9% (session 34's stamps and
// run 236).
#ifndef QMMG_PREFETCH_AT_END
#define QMMG_PREFETCH_AT_END 1
#endif

// 1: the stream-K deal's boundaries rounded up (block b's run starts at
// ⌈b·W/P⌉), so where a group's chunks do not divide evenly the block that
// sums it — the one holding its first chunks — gets the larger share and the
// last part block the smaller, instead of the other way round. With every
// run inside one group (4h→h: 27 chunks over 4 blocks, 6/7/7/7), the summing
// block otherwise finishes a chunk early and waits for the parts' (~2 µs a
// chunk, plus their publishing; session 34's stamps: 6.75 µs waiting and adding).
// Run 259: 32 int4 sequences 10,501 / 10,502 tok/s against 10,445 / 10,447 (+0.5%).
#ifndef QMMG_SPLIT_CEIL
#define QMMG_SPLIT_CEIL 1
#endif

// 1: a split group's parts carry no counter. The workspace holds a
// sentinel (QG_PART_EMPTY, a signalling NaN no arithmetic makes) wherever
// no part is waiting; a part block stores its sums and goes on — no fence
// or count after them — and the summing block reads each element until it
// is not the sentinel, then writes the sentinel back. A part was counted
// ~2.3 µs after its chunks (its release waits for all its stores), on the
// critical path wherever a part block has as many chunks as the summing
// block (dense; 4h→h and QKV's groups of 7/7/7/6 and 3/3/2 chunks).
#ifndef QMMG_SENTINEL_PARTS
#define QMMG_SENTINEL_PARTS 0
#endif
#define QG_PART_EMPTY 0x7fbadbadu  // the host fills the workspace with it (quant_group::PART_EMPTY)

// A whole chunk's weight copies unrolled at constant offsets (0: the
// general loop, for A/B measurements).
#ifndef QMMG_FAST_COPY
#define QMMG_FAST_COPY 1
#endif

// Floats a token's staged outputs take (a group's rows, padded so that a
// warp's 32 rows of one token and a thread's 16-byte reads meet no
// conflicts): QgDims::KV_ROW.
// The QKV epilogue's cache rows as 16-byte vectors (0: one 2-byte store a
// value, for A/B measurements).
#ifndef QMMG_KV_VEC
#define QMMG_KV_VEC 1
#endif
// The QKV epilogue's rotations from a (token, pair) table its block fills
// while a split group's parts are on their way (0: a sincosf a value).
#ifndef QMMG_ROPE_TABLE
#define QMMG_ROPE_TABLE 1
#endif
// Weight units of a chunk (4: half the shared memory, two blocks an SM;
// the host reads the same define, quant_group::group_cu).
#ifndef QMMG_CU
#define QMMG_CU 8
#endif
// Warps a row tile (1 or 2, each taking half of a chunk's units): 2 puts 16
// warps on an SM, where 8 issued an instruction every 3.5 cycles a
// scheduler (run 83; run 85: 32 int4 sequences 5,069 tok/s against 4,291);
// the host reads the same define (quant_group::group_threads).
#ifndef QMMG_KW
#define QMMG_KW 2
#endif
// 1: the SwiGLU products (MODE 2: h→4h) on wide groups — 16 row tiles (8
// gate/up pairs) of one warp each, chunks of QMMG_WIDE_CU units (8; 4 where
// two stages of 8 do not fit in 220 KiB: q4_1 over f16 activations at 32
// tokens, every 4-bit format at 64). Each chunk's activations are staged once
// for twice the rows (half the activation bytes from L2 a weight byte) and a
// warp takes 8 units of its tile between barriers, twice the default's.
// Run 261: h→4h at 32 int4 tokens 44.7 against 46.2 µs, 32 int4 sequences
// +1.8%; with chunks of 4 (the default's share a warp, 4 stages) it was no
// faster (run 260). The host reads the same defines (quant_group::GroupShape).
#ifndef QMMG_WIDE_SWIGLU
#define QMMG_WIDE_SWIGLU 1
#endif
#ifndef QMMG_WIDE_CU
#define QMMG_WIDE_CU 8
#endif
// (gate, up) pairs of row tiles a wide group (8: 16 tiles). An odd count
// (7: 14 tiles of 448 threads, ChatGLM2-6B's 856 pairs as 123 groups where
// 8 make 107, on 132 SMs) only over f16 activations, whose hand-off is
// written a value at a time (a q8_0 block of the hand-off must lie in one
// group); the q8 kernels keep the narrow groups then. The host reads the
// same define (quant_group::GroupShape).
#ifndef QMMG_WIDE_PAIRS
#define QMMG_WIDE_PAIRS 8
#endif
// The same at 4 token tiles (17–32 tokens) over f16 activations alone.
#ifndef QMMG_WIDE_PAIRS_4
#define QMMG_WIDE_PAIRS_4 QMMG_WIDE_PAIRS
#endif
// 1: a wide group of fewer than 8 pairs still runs 16 warps, its last
// 16 − 2·PAIRS tiles on two warps each (each warp half of a chunk's units),
// so that every scheduler of the SM holds the same share of the group
// (7 pairs: three whole tiles and a half a scheduler, 28 units of 112 a
// chunk). With one warp a tile (0) 14 warps leave two schedulers four
// warps of whole tiles: a 7-pair group took as long as an 8-pair one, and
// 123 groups on 132 SMs bought 1.1% instead of the ~12% fewer units a
// scheduler would (run 274). The host reads the same define
// (quant_group::GroupShape).
#ifndef QMMG_WIDE_XT
#define QMMG_WIDE_XT 0
#endif
// 1 (set by qmmx.cuh for its module): a chunk's copies from one 64-bit
// address each (weights: a warp's units at constant offsets from it, which
// LDGSTS takes as immediates; activations: a thread's token rows from an
// address worked out once a launch). The compiler otherwise folds the
// parameter base into a three-input 64-bit add a copy and recomputes the
// token rows' 64-bit products every chunk: ~125 of the ~270 instructions
// a warp spends on a chunk outside its mmas (run 316's per-instruction counts:
// the copy code ~24% of the 32-token h→4h product's instructions).
#ifndef QMMG_COPY_BASE
#define QMMG_COPY_BASE 0
#endif
// The ring's stages: in the qmma module as many as fit in 220 KiB, up to
// QMMG_STAGES = 4, and up to QMMG_HX2_STAGES = 3 for the 9–16-token f16
// products (QgLayout; 0: QMMG_STAGES for them too — 16 sequences −1%,
// runs 326–327): the shapes with room for a fourth take it — q8_0
// weights' at 17–64 tokens, among them 32 sequences' output layer (+1%),
// the q8_0-code products of 17–64 tokens. With it the module's code placement reads
// batch-1 q4_0 decode at 754.1–757.0 tok/s where the shapes' own counts
// read 749.2–753.7 (runs 325–327: the one-token products' SASS unchanged).
// In the qmmx module the shapes' own counts (STAGES0) unless a measurement
// sets QMMG_STAGES.
#if !defined(QMMG_STAGES) && !defined(QMMG_X_MODULE)
#define QMMG_STAGES 4
#endif
#ifndef QMMG_HX2_STAGES
#define QMMG_HX2_STAGES 3
#endif
#if QMMG_COPY_BASE
// p, opaque to the compiler: offsets added to it after stay apart.
__device__ __forceinline__ const char* qg_base(const char* p) {
    asm("" : "+l"(p));
    return p;
}
#endif
// Code that runs once a launch, kept compact in the qmmx module (QMMX_EPI, a
// mask): unrolled, it is fetched cold by every block while the whole grid
// waits for the last. 1: the SwiGLU epilogue's loops rolled, the fold's RMSNorm
// applied inside them instead of in a pass of its own (h→4h's epilogue ~380
// instructions shorter: 32 int4 sequences +1.35%, run 292); 2: a row's last,
// partial chunk walked a unit at a time (4h→h's: +0.5%, run 293); 8: QKV
// without the bias loads its RoPE-table epilogue never reads (+0.3%, run 296).
// 16: the odd-pair SwiGLU hand-off loop a row a thread (run 317).
// A residual product's epilogue rolled (its rows' current values staged by
// cp.async, the fold's warp sums in the loop) lost 0.35–0.8% (run 293), in two
// rolled halves 1.4% (run 296): there the stores' overlap counts for more.
#ifndef QMMG_X_EPI
#define QMMG_X_EPI 0
#endif
// 0 (measurements, qmmx.cuh's QMMX_SWIGLU_OUT): an odd-pair SwiGLU product
// handing its output on writes only the hand-off, not its f32 rows.
#ifndef QMMG_X_SWIGLU_OUT
#define QMMG_X_SWIGLU_OUT 1
#endif
#if QMMG_X_EPI & 1
#define QG_EPI_LOOP _Pragma("unroll 1")
#else
#define QG_EPI_LOOP
#endif

// The rows of a group of a residual product's norm fold (the sums of squares
// it hands on, QG_SS_STRIDE floats a group; the host's FOLD_GROUP_ROWS).
#define QG_FOLD_ROWS 128

// A group shape: row tiles, weight units a chunk, warps a tile; XT_: the
// last XT_ tiles on two warps (with one warp a tile: QMMG_WIDE_XT).
template <int TILES_, int CU_, int KW_, int XT_ = 0> struct QgDims {
    enum {
        WIDE = TILES_ > 8,
        TILES = TILES_,
        CU = CU_,
        KW = KW_,
        XT = XT_,
        THREADS = (TILES * KW + XT) * 32,
        // Passes of the sums into shared memory: a tile's warps in turn.
        PHASES = KW + (XT ? 1 : 0),
        KV_ROW = TILES * 16 + 4,
        // Floats of a partial result: the group's rows × 64 tokens.
        WS_SLOT = TILES * 16 * 64,
        // Blocks a SM the registers are capped for: 2 where a block's shared
        // memory leaves room for two (QMMG_CU=4 on one warp a tile halves
        // the stages); QMMG_MINB sets it (2 with two warps a tile: 32 warps a
        // SM at 64 registers each), for measurements.
#ifdef QMMG_MINB
        MIN_BLOCKS = QMMG_MINB,
#else
        MIN_BLOCKS = CU <= 4 && KW == 1 && !WIDE ? 2 : 1,
#endif
    };
    // A chunk's units split evenly between a tile's warps, and its scales (64
    // bytes a 4-bit unit) staged by one warp's 32 lanes of 16 bytes.
    static_assert(CU % KW == 0, "QMMG_CU must be a multiple of QMMG_KW");
    static_assert(XT == 0 || (KW == 1 && CU % 2 == 0 && XT <= TILES), "two-warp tiles halve whole chunks");
    static_assert(CU * 64 / 16 <= 32, "QMMG_CU at most 8: one warp stages a chunk's scales");
};
template <bool C, typename A, typename B> struct QgPick { typedef A type; };
template <typename A, typename B> struct QgPick<false, A, B> { typedef B type; };

// mma_block without `volatile`: the compiler may schedule the mmas of a
// chunk among their scaling arithmetic (their results are pure functions of
// the inputs).
template <int U4>
__device__ __forceinline__ void mma_block_pure(int* c, const u32* a, u32 b0, u32 b1) {
    if (U4)
        asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%10,%10,%10};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
    else
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%10,%10,%10};"
            : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}
// The norm fold's sums of squares: [group of QG_FOLD_ROWS rows][64 tokens] floats
// (the host's quant::FOLD_SUMS_STRIDE).
#define QG_SS_STRIDE 64
// The fold's f16 values are v·g·2⁻³ (the consumer's 1/rms carries the 8
// back, exactly): headroom for a residual at f16's limit — ChatGLM2's own
// f16 inference keeps the residual stream under 65,504 — times norm
// weights up to 8, while values down to ~5e-4 stay normal f16.
#define QG_FOLD_SCALE 0.125f
#define QG_SPIN_LIMIT (1L << 28)           // a split group's summing block's polls (seconds)

// A split group's part counted, after the block's barrier (release at GPU
// scope: cumulative over the writes the barrier ordered before it).
__device__ __forceinline__ void red_add_release(u32* p, u32 v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}


// Shared memory of one stage (bytes, all 16-aligned): the tiles' weight
// units, their scales (and offsets), the chunk's activation codes
// [token][KB·32 + 16] (16 bytes of padding put the 8 token rows of an mma
// fragment load on different banks) and scales [block][8·NT8] (dx, Σq).
template <int F, int NT8, bool HX, typename SH> struct QgLayout {
    typedef SH Shape;
    enum {
        SB = QFmt<F>::BLOCKS,
        KB = SH::CU * SB,  // activation blocks of a chunk
        SCB = SB * 32,    // scale bytes of a unit: [g][block][row g, g+8] f16
        W_OFF = 0,
        SC_OFF = SH::TILES * SH::CU * 512,
        MN_OFF = SC_OFF + SH::TILES * SH::CU * SCB,
        XQ_OFF = MN_OFF + (QFmt<F>::MIN ? SH::TILES * SH::CU * SCB : 0),
        // HX (f16 activations, 2 bytes a value): 64 bytes of padding, so the
        // 16-byte fragment loads of a quarter warp (2 token rows) meet 32 banks.
        XROW = HX ? KB * 64 + 64 : KB * 32 + 16,
        XS_OFF = XQ_OFF + NT8 * 8 * XROW,
        STAGE = XS_OFF + (HX ? 0 : KB * NT8 * 8 * 8),
        STAGES_NARROW = HX ? (NT8 <= 4 ? 3 : 2) : NT8 <= 2 ? 4 : NT8 == 4 ? 3 : 2,
        // Wide groups' stages are small: as many as fit in 220 KiB, up to 4
        // (the host's quant_group::group_smem mirrors this).
        STAGES_WIDE = (220 << 10) / STAGE < 4 ? ((220 << 10) / STAGE < 2 ? 2 : (220 << 10) / STAGE) : 4,
        STAGES0 = SH::WIDE ? STAGES_WIDE : STAGES_NARROW,
#ifdef QMMG_STAGES
        // As many stages as fit in 220 KiB, up to QMMG_STAGES (or, for 9–16
        // f16 tokens, QMMG_HX2_STAGES where set) — the host's
        // quant_group::shaped_smem mirrors this.
        STAGES_FIT = (220 << 10) / STAGE,
        STAGES_CAP = QMMG_HX2_STAGES && HX && NT8 <= 2 ? QMMG_HX2_STAGES : QMMG_STAGES,
        STAGES = STAGES_CAP < STAGES_FIT ? (STAGES_CAP < 2 ? 2 : STAGES_CAP) : (STAGES_FIT < 2 ? 2 : STAGES_FIT),
#else
        STAGES = STAGES0,
#endif
        RED_STRIDE = NT8 * 8 + 1,  // floats: a group's sums [TILES·16 rows][tokens], after the stages
        RED_BYTES = SH::TILES * 16 * RED_STRIDE * 4,
        // The norm fold's per-warp sums of squares, after red (stage memory
        // then free): [warp][a thread's elements].
        FOLD_OFF = (RED_BYTES + 15) / 16 * 16,
        FOLD_BYTES = (SH::THREADS / 32) * (NT8 * 8 * SH::TILES * 16 / SH::THREADS) * 4,
        // MODE 3 (no fold): the staged cache rows there, the group's biases,
        // then the RoPE table of (cos, sin) float2s, ROPE_CAP of them at most.
        QKV_BIAS_OFF = FOLD_OFF + NT8 * 8 * SH::KV_ROW * 4,
        ROPE_OFF = QKV_BIAS_OFF + SH::TILES * 16 * 4,
        SMEM = STAGES * STAGE > RED_BYTES ? STAGES * STAGE : RED_BYTES,
        ROPE_CAP = (STAGES * STAGE - ROPE_OFF) / 8,
    };
};

// The shape of the groups of a MODE product of F weights over NT8 token tiles
// (HX: f16 activations).
template <int MODE, int F, int NT8, bool HX> struct QgShape {
    enum {
        PAIRS = NT8 == 4 && HX ? QMMG_WIDE_PAIRS_4 : QMMG_WIDE_PAIRS,
        XT = QMMG_WIDE_XT && PAIRS < 8 ? 16 - 2 * PAIRS : 0,
    };
    typedef QgDims<8, QMMG_CU, QMMG_KW> Narrow;
    typedef QgDims<2 * PAIRS, QMMG_WIDE_CU, 1, XT> Wide;
    typedef QgDims<2 * PAIRS, (QMMG_WIDE_CU < 4 ? QMMG_WIDE_CU : 4), 1, XT> WideSmall;
    enum { WIDE_FITS = 2 * QgLayout<F, NT8, HX, Wide>::STAGE <= (220 << 10) };
    typedef typename QgPick<MODE == 2 && QMMG_WIDE_SWIGLU && (HX || PAIRS % 2 == 0),
                            typename QgPick<WIDE_FITS, Wide, WideSmall>::type, Narrow>::type type;
};

// A warp's share of its row tile's chunk: the tile, its first unit, and
// whether it takes half the units (two warps a tile) or all of them.
struct QgWarpShare {
    int tile, half;
    bool halved;
};
template <typename SH> __device__ __forceinline__ QgWarpShare qg_warp_share(int warp) {
    QgWarpShare s;
    if (SH::XT && warp >= SH::TILES) {
        s.tile = SH::TILES - SH::XT + (warp - SH::TILES);
        s.half = 1;
    } else {
        s.tile = warp % SH::TILES;
        s.half = warp / SH::TILES;
    }
    s.halved = SH::KW == 2 || (SH::XT && s.tile >= SH::TILES - SH::XT);
    return s;
}

// Walks HU units of a staged chunk of row tile `tile` from unit u0:
// body(wv, i, bl, dw, mw) for block i of each unit (bl: the block in the
// chunk; dw, mw: the f16 scales and offsets of rows g and g+8). CHECKED:
// the row's last chunk, with nu units and nblk blocks.
template <int F, typename L, bool CHECKED, int HU, typename Body>
__device__ __forceinline__ void for_chunk_units(const unsigned char* st, int tile, int u0, int lane, int nu,
                                                int nblk, Body body) {
    typedef typename L::Shape SH;
    typedef typename QScale<F>::type ScaleVec;
    constexpr int SB = QFmt<F>::BLOCKS;
    const int g = lane >> 2;
    const unsigned char* wbase = st + L::W_OFF + tile * SH::CU * 512 + lane * 16;
    const unsigned char* sbase = st + L::SC_OFF + tile * SH::CU * L::SCB + g * (int)sizeof(ScaleVec);
    const unsigned char* mbase = st + L::MN_OFF + tile * SH::CU * L::SCB + g * (int)sizeof(ScaleVec);
#if QMMG_X_EPI & 2
    if (CHECKED) {
        // A row's last chunk: once a launch, so a unit at a time.
#pragma unroll 1
        for (int u = u0; u < min(u0 + HU, nu); u++) {
            const uint4 wv = *(const uint4*)(wbase + u * 512);
            const ScaleVec sc = *(const ScaleVec*)(sbase + u * L::SCB);
            ScaleVec mn;
            if (QFmt<F>::MIN) mn = *(const ScaleVec*)(mbase + u * L::SCB);
#pragma unroll
            for (int i = 0; i < SB; i++) {
                const int bl = u * SB + i;
                if (bl >= nblk) break;
                const u32 dw = SB == 2 ? (i ? ((const uint2*)&sc)->y : ((const uint2*)&sc)->x) : *(const u32*)&sc;
                u32 mw = 0u;
                if (QFmt<F>::MIN)
                    mw = SB == 2 ? (i ? ((const uint2*)&mn)->y : ((const uint2*)&mn)->x) : *(const u32*)&mn;
                body(wv, i, bl, dw, mw);
            }
        }
    } else {
#endif
#pragma unroll
    for (int uu = 0; uu < HU; uu++) {
        const int u = u0 + uu;
        if (CHECKED && u >= nu) break;
        const uint4 wv = *(const uint4*)(wbase + u * 512);
        const ScaleVec sc = *(const ScaleVec*)(sbase + u * L::SCB);
        ScaleVec mn;
        if (QFmt<F>::MIN) mn = *(const ScaleVec*)(mbase + u * L::SCB);
#pragma unroll
        for (int i = 0; i < SB; i++) {
            const int bl = u * SB + i;
            if (CHECKED && bl >= nblk) break;
            const u32 dw = SB == 2 ? (i ? ((const uint2*)&sc)->y : ((const uint2*)&sc)->x) : *(const u32*)&sc;
            u32 mw = 0u;
            if (QFmt<F>::MIN) mw = SB == 2 ? (i ? ((const uint2*)&mn)->y : ((const uint2*)&mn)->x) : *(const u32*)&mn;
            body(wv, i, bl, dw, mw);
        }
    }
#if QMMG_X_EPI & 2
    }
#endif
}

// for_chunk_units over this warp's share of its row tile's chunk.
template <int F, typename L, bool CHECKED, typename Body>
__device__ __forceinline__ void for_chunk_blocks(const unsigned char* st, int warp, int lane, int nu, int nblk,
                                                 Body body) {
    typedef typename L::Shape SH;
    if (SH::XT) {
        const QgWarpShare ws = qg_warp_share<SH>(warp);
        constexpr int HALF = SH::CU / 2 > 0 ? SH::CU / 2 : 1;
        if (ws.halved) for_chunk_units<F, L, CHECKED, HALF>(st, ws.tile, ws.half * HALF, lane, nu, nblk, body);
        else for_chunk_units<F, L, CHECKED, SH::CU>(st, ws.tile, 0, lane, nu, nblk, body);
        return;
    }
    constexpr int HU = SH::CU / SH::KW;  // units of a warp's half of the chunk
    const int u0 = (warp / SH::TILES) * HU;
    warp %= SH::TILES;
    for_chunk_units<F, L, CHECKED, HU>(st, warp, u0, lane, nu, nblk, body);
}

// One chunk of this warp's row tile against the staged activations, into
// acc[token tile][c fragment]. CHECKED: the row's last chunk, with nu units
// and nblk blocks.
template <int F, int NT8, typename SH, bool CHECKED>
__device__ __forceinline__ void chunk_product(float (&acc)[NT8][4], const unsigned char* st, int warp, int lane,
                                              int nu, int nblk) {
    typedef QgLayout<F, NT8, false, SH> L;
    const int g = lane >> 2, t = lane & 3;
    const unsigned char* xbase = st + L::XQ_OFF + g * L::XROW + 4 * t;
    const float4* sxs = (const float4*)(st + L::XS_OFF) + t;
    for_chunk_blocks<F, L, CHECKED>(st, warp, lane, nu, nblk, [&](const uint4& wv, int i, int bl, u32 dw, u32 mw) {
        u32 a[4];
        a_fragment<F>(wv, i, a);
        const float d0 = f16_to_f32((u16)(dw & 0xffff)), d1 = f16_to_f32((u16)(dw >> 16));
        const float m0 = f16_to_f32((u16)(mw & 0xffff)), m1 = f16_to_f32((u16)(mw >> 16));
#pragma unroll
        // Every token tile, padding too (its scales are zero): a branch
        // per tile kept the compiler from overlapping one tile's loads
        // and mma with the last one's scaling (SASS: each tile in turn).
        for (int j = 0; j < NT8; j++) {
            const unsigned char* xr = xbase + j * 8 * L::XROW + bl * 32;
            const u32 b0 = *(const u32*)xr, b1 = *(const u32*)(xr + 16);
            // Tokens 2t, 2t + 1 of tile j: (dx, Σq) each.
            const float4 s = sxs[bl * NT8 * 4 + j * 4];
            int c[4];
            mma_block_pure<QFmt<F>::U4>(c, a, b0, b1);
            const int sx0 = __float_as_int(s.y), sx1 = __float_as_int(s.w);
            if (QFmt<F>::MIN) {
                acc[j][0] += (float)c[0] * d0 * s.x + m0 * s.x * (float)sx0;
                acc[j][1] += (float)c[1] * d0 * s.z + m0 * s.z * (float)sx1;
                acc[j][2] += (float)c[2] * d1 * s.x + m1 * s.x * (float)sx0;
                acc[j][3] += (float)c[3] * d1 * s.z + m1 * s.z * (float)sx1;
            } else {
                // c − off·Σq as f32 exactly: 1.5·2²³ + v has v in its low
                // mantissa bits for |v| < 2²² (|v| ≤ 32·128·128 here).
                // quantize_x's X_MAGIC − OFF·Σq, taken as it is.
                const int k0 = QFmt<F>::OFF ? sx0 : X_MAGIC, k1 = QFmt<F>::OFF ? sx1 : X_MAGIC;
                const float f0 = __int_as_float(c[0] + k0) - 12582912.0f;
                const float f1 = __int_as_float(c[1] + k1) - 12582912.0f;
                const float f2 = __int_as_float(c[2] + k0) - 12582912.0f;
                const float f3 = __int_as_float(c[3] + k1) - 12582912.0f;
                acc[j][0] = fmaf(f0, d0 * s.x, acc[j][0]);
                acc[j][1] = fmaf(f1, d0 * s.z, acc[j][1]);
                acc[j][2] = fmaf(f2, d1 * s.x, acc[j][2]);
                acc[j][3] = fmaf(f3, d1 * s.z, acc[j][3]);
            }
        }
    });
}

// mma16816 without `volatile` (as mma_block_pure).
__device__ __forceinline__ void mma16816_pure(float (&c)[4], const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// chunk_product over f16 activations (quantize_x's f16 form, in
// a_fragments_f16's order): every weight is dequantized to f16 once for all
// NT8 token tiles and the mmas sum in f32 with no scaling after them — 5.4
// instructions an m16n8k16 in the inner loop at 32 tokens (two a q8_0
// block: 10.8 against ~25 for the exact q8_0 arithmetic). Measured (session
// 17, runs 108–110): 18.3 M instructions for the 32-token h→4h product
// against 29.7 M, but 62 against 66.5 µs — with 4 warps a scheduler the
// warps wait on their own chains (issue slots 40% used), so fewer
// instructions buy little; two accumulator chains a tile were no faster.
// Not the CPU's arithmetic: ActivationForm::F16, opt-in.
template <int F, int NT8, typename SH, bool CHECKED>
__device__ __forceinline__ void chunk_product_hx(float (&acc)[NT8][4], const unsigned char* st, int warp, int lane,
                                                 int nu, int nblk) {
    typedef QgLayout<F, NT8, true, SH> L;
    const int g = lane >> 2, t = lane & 3;
    const unsigned char* xbase = st + L::XQ_OFF + g * L::XROW + 16 * t;
    for_chunk_blocks<F, L, CHECKED>(st, warp, lane, nu, nblk, [&](const uint4& wv, int i, int bl, u32 dw, u32 mw) {
        u32 a[2][4];
        a_fragments_f16<F>(wv, i, dw, mw, a);
#pragma unroll
        for (int j = 0; j < NT8; j++) {
            // Token g's physical columns 4t..4t+3 (step 0) and 16+4t.. (step 1).
            const uint4 xv = *(const uint4*)(xbase + j * 8 * L::XROW + bl * 64);
            mma16816_pure(acc[j], a[0], xv.x, xv.y);
            mma16816_pure(acc[j], a[1], xv.z, xv.w);
        }
    });
}


// The norm fold, in a residual product's epilogue: each token's sum of
// squares over group G's rows (sq: a thread's elements, as the epilogue
// deals them — row threadIdx mod 128, tokens threadIdx / 128 + 4k) into
// ss[G][token], summed in a fixed order (warp, then the row quarters).
template <typename SH, int EPT>
__device__ __forceinline__ void fold_sum_squares(const float (&sq)[EPT], int G, int n, float* ss, float* part) {
    constexpr int RPG = SH::TILES * 16, TPP = SH::THREADS / RPG, WPT = RPG / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int k = 0; k < EPT; k++) {
        const float s = warp_sum(sq[k]);
        if (lane == 0) part[warp * EPT + k] = s;
    }
    __syncthreads();
    for (int tok = threadIdx.x; tok < n; tok += SH::THREADS) {
        const int ts = tok % TPP, k = tok / TPP;
        float s = 0.f;
#pragma unroll
        for (int q = 0; q < WPT; q++) s += part[(ts * WPT + q) * EPT + k];
        ss[G * QG_SS_STRIDE + tok] = s;
    }
}

// The product (MODE as qmma_body; NT8 = quantize_x's token tiles). ws:
// gridDim.x partial results of SH::WS_SLOT floats; counters: one a group,
// zero between launches. Dynamic shared memory: QgLayout::SMEM.
//
// The norm fold (f16 activations only; run 174): a residual product (MODE
// 1) with fold_g also writes each output v as the next product's
// activations unnormalised, f16(v·g/8) in quantize_x's f16 form at hq, and
// each token's sum of squares over each group's rows at fold_ss; the next
// product (rms_ss: those sums) multiplies its sums by the tokens'
// 1/√(Σ/cols + eps) — the RMSNorm is linear in the activations — so the
// normed quantize_x launch between the two goes.
template <int F, int NT8, int MODE, bool HX>
__device__ __forceinline__ void qmmg_body(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                          const u16* __restrict__ mins, int units, int tiles,
                                          const signed char* __restrict__ xq, const float2* __restrict__ xs, int n,
                                          int cols, const float* __restrict__ bias, float* __restrict__ out,
                                          int out_rows, int half_rows, const RopeCtx& rc, const char* next_w,
                                          long next_bytes, float* ws, u32* counters, unsigned char* hq,
                                          float2* hs, int hoff, const float* __restrict__ fold_g,
                                          float* __restrict__ fold_ss, const float* __restrict__ rms_ss,
                                          float rms_eps) {
    typedef typename QgShape<MODE, F, NT8, HX>::type SH;
    typedef QgLayout<F, NT8, HX, SH> L;
    static_assert(MODE != 1 || SH::TILES * 16 == QG_FOLD_ROWS, "a fold's groups are its sums' groups");
    static_assert(L::STAGES * L::STAGE >= L::FOLD_OFF + L::FOLD_BYTES, "the fold's sums fit beside red");
    // Whether the QKV epilogue's cache rows can be staged beside red (not
    // with the small stages of QMMG_CU=4 at 64 q8 tokens: one store a value there).
    constexpr bool KV_ROWS_FIT = L::STAGES * L::STAGE >= L::FOLD_OFF + NT8 * 8 * SH::KV_ROW * 4;
    const bool fold = MODE == 1 && HX && fold_g != nullptr;
    const bool normed = HX && rms_ss != nullptr;
    __shared__ float inv_rms[HX ? NT8 * 8 : 1];
    constexpr int S = L::STAGES;
    constexpr int EPT = NT8 * 8 * SH::TILES * 16 / SH::THREADS;  // a group's sums a thread holds
    extern __shared__ __align__(16) unsigned char qg_smem[];
    __shared__ TokenSlot slots[MODE == 3 ? NT8 * 8 : 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const QgWarpShare share = qg_warp_share<SH>(warp);
    // The warp's row tile, its half of a chunk.
    const int tw = SH::XT ? share.tile : warp % SH::TILES, half = SH::XT ? share.half : warp / SH::TILES;
    const int nb = cols / 32;
    const int half_tiles = half_rows / 16;
    // SwiGLU: a group is PAIRS (gate, up) pairs of row tiles.
    constexpr int PAIRS = SH::TILES / 2;
    static_assert(PAIRS == 4 || PAIRS == 8 || (PAIRS % 2 == 1 && HX),
                  "a SwiGLU group's pairs: 4 or 8 (whole hand-off blocks), or odd over f16 activations");
    const int groups = MODE == 2 ? (half_tiles + PAIRS - 1) / PAIRS : (tiles + SH::TILES - 1) / SH::TILES;
    const int C = (units + SH::CU - 1) / SH::CU;  // chunks of a group
    const long W = (long)groups * C, P = gridDim.x;
#if QMMG_SPLIT_CEIL
    const long start = (blockIdx.x * W + P - 1) / P, end = ((blockIdx.x + 1) * W + P - 1) / P;
    // The block whose run holds chunk x: ⌈b·W/P⌉ ≤ x < ⌈(b+1)·W/P⌉ ⇔ b = ⌊x·P/W⌋.
    auto block_of = [&](long x) { return (int)(x * P / W); };
#else
    const long start = blockIdx.x * W / P, end = (blockIdx.x + 1) * W / P;
    // The block whose run holds chunk x.
    auto block_of = [&](long x) { return (int)(((x + 1) * P - 1) / W); };
#endif
    // This warp's row tile of group G (SwiGLU: the first PAIRS tiles the
    // gates of PAIRS pairs, the rest their ups), or -1 past the matrix.
    auto tile_of = [&](int G) -> int {
        if (MODE == 2) {
            const int pair = G * PAIRS + ((PAIRS & (PAIRS - 1)) ? tw % PAIRS : tw & (PAIRS - 1));
            return pair < half_tiles ? (tw < PAIRS ? pair : half_tiles + pair) : -1;
        }
        const int tl = G * SH::TILES + tw;
        return tl < tiles ? tl : -1;
    };
    auto issue_w = [&](int tile, int c, int slot) {
        if (tile < 0) return;
        unsigned char* st = qg_smem + slot * L::STAGE;
        const int p0 = c * SH::CU, nu = min(SH::CU, units - p0);
        const long u0 = (long)tile * units + p0;
        const char* src = (const char*)w + u0 * 512;
        unsigned char* dst = st + L::W_OFF + tw * SH::CU * 512;
        // The warp's half of the units (all of them with one warp a tile).
        constexpr int HU = SH::CU / SH::KW, HALF = SH::CU / 2 > 0 ? SH::CU / 2 : 1;
        if (SH::XT && share.halved) {
            // A two-warp tile of a one-warp shape: each warp half the units.
            if (QMMG_FAST_COPY && nu == SH::CU) {
                const int q0 = half * HALF * 32 + lane;
#if QMMG_COPY_BASE
                const char* sp = qg_base(src + q0 * 16);
#pragma unroll
                for (int i = 0; i < HALF; i++) cp_async16(dst + (q0 + i * 32) * 16, sp + i * 512, true);
#else
#pragma unroll
                for (int i = 0; i < HALF; i++) cp_async16(dst + (q0 + i * 32) * 16, src + (q0 + i * 32) * 16, true);
#endif
            } else {
                const int qend = min(nu, (half + 1) * HALF) * 32;
                for (int q = half * HALF * 32 + lane; q < qend; q += 32) cp_async16(dst + q * 16, src + q * 16, true);
            }
        } else if (QMMG_FAST_COPY && nu == SH::CU) {
            // A whole chunk: a fixed count at constant offsets (the general
            // loop below compiles to a loop unrolled by 4 with its remainder,
            // ~60 instructions of branches and address arithmetic a chunk).
            const int q0 = half * HU * 32 + lane;
#if QMMG_COPY_BASE
            const char* sp = qg_base(src + q0 * 16);
#pragma unroll
            for (int i = 0; i < HU; i++) cp_async16(dst + (q0 + i * 32) * 16, sp + i * 512, true);
#else
#pragma unroll
            for (int i = 0; i < HU; i++) cp_async16(dst + (q0 + i * 32) * 16, src + (q0 + i * 32) * 16, true);
#endif
        } else {
            const int qend = min(nu, (half + 1) * HU) * 32;
            for (int q = half * HU * 32 + lane; q < qend; q += 32) cp_async16(dst + q * 16, src + q * 16, true);
        }
        const int sc_chunks = nu * L::SCB / 16;  // ≤ 32
        if (half == 0 && lane < sc_chunks) {
            cp_async16(st + L::SC_OFF + tw * SH::CU * L::SCB + lane * 16,
                       (const char*)scales + u0 * L::SCB + lane * 16, true);
            if (QFmt<F>::MIN)
                cp_async16(st + L::MN_OFF + tw * SH::CU * L::SCB + lane * 16,
                           (const char*)mins + u0 * L::SCB + lane * 16, true);
        }
    };
#if QMMG_COPY_BASE
    // issue_x's whole-chunk f16 copies: this thread's first token row and the
    // step between its rows (the loop below only where the shapes match).
    const char* x_row0 = nullptr;
    long x_step = 0;
    if (HX) {
        constexpr int CPT = L::KB * 4, TPR = SH::THREADS / CPT > 0 ? SH::THREADS / CPT : 1;
        x_row0 = (const char*)xq + (long)(threadIdx.x / CPT) * cols * 2 + (threadIdx.x % CPT) * 16;
        x_step = (long)TPR * cols * 2;
    }
#endif
    auto issue_x = [&](int c, int slot) {
        unsigned char* st = qg_smem + slot * L::STAGE;
        const int b0 = c * L::KB, nblk = min((int)L::KB, nb - b0);
        if (HX) {
            // f16 rows: 64 bytes a block, no scales.
            const char* xb = (const char*)xq + (long)b0 * 64;
            const long row = (long)cols * 2;
            if (nblk == L::KB) {
                // A thread copies piece r of tokens tok0, tok0 + TPR, …: its
                // addresses step by constants.
                constexpr int CPT = L::KB * 4, TPR = SH::THREADS / CPT;
                static_assert(SH::THREADS % CPT == 0, "a round of copies covers whole token rows");
                const int tok0 = threadIdx.x / CPT, r = threadIdx.x % CPT;
                unsigned char* d = st + L::XQ_OFF + tok0 * L::XROW + r * 16;
#if QMMG_COPY_BASE
                // This thread's first token row (x_row0, once a launch) at the chunk's columns.
                const char* s = qg_base(x_row0 + (long)b0 * 64);
#pragma unroll
                for (int i = 0; i < (NT8 * 8 + TPR - 1) / TPR; i++) {
                    if (tok0 + i * TPR < n) cp_async16(d + i * TPR * L::XROW, s, true);
                    s += x_step;
                }
#else
                const char* s = xb + tok0 * row + r * 16;
#pragma unroll
                for (int i = 0; i < (NT8 * 8 + TPR - 1) / TPR; i++)
                    if (tok0 + i * TPR < n) cp_async16(d + i * TPR * L::XROW, s + i * TPR * row, true);
#endif
            } else {
                const int cpt = nblk * 4;
                for (int q = threadIdx.x; q < n * cpt; q += SH::THREADS) {
                    const int tok = q / cpt, r = q - tok * cpt;
                    cp_async16(st + L::XQ_OFF + tok * L::XROW + r * 16, xb + tok * row + r * 16, true);
                }
            }
            return;
        }
        const char* src = (const char*)(xs + (long)b0 * NT8 * 8);
        if (nblk == L::KB) {
            // A whole chunk (all but a row's last): the pieces a token are a
            // power of two, so no division a copy (the divisions were a fifth
            // of the 32-token products' instructions; ncu, session 16).
            constexpr int CPT = L::KB * 2;
            const signed char* xb = xq + b0 * 32;
            for (int q = threadIdx.x; q < n * CPT; q += SH::THREADS) {
                const int tok = q / CPT, r = q % CPT;
                cp_async16(st + L::XQ_OFF + tok * L::XROW + r * 16, xb + (long)tok * cols + r * 16, true);
            }
#pragma unroll
            for (int q = threadIdx.x; q < L::KB * NT8 * 4; q += SH::THREADS)
                cp_async16(st + L::XS_OFF + q * 16, src + q * 16, true);
            return;
        }
        const int cpt = nblk * 2;  // 16-byte pieces of a token's codes
        for (int q = threadIdx.x; q < n * cpt; q += SH::THREADS) {
            const int tok = q / cpt, r = q - tok * cpt;
            cp_async16(st + L::XQ_OFF + tok * L::XROW + r * 16, xq + (long)tok * cols + b0 * 32 + r * 16, true);
        }
        for (int q = threadIdx.x; q < nblk * NT8 * 4; q += SH::THREADS)
            cp_async16(st + L::XS_OFF + q * 16, src + q * 16, true);
    };
    auto prefetch_next = [&]() {
        if (next_bytes <= 0) return;
        const long chunk = ((next_bytes + gridDim.x - 1) / gridDim.x + 127) / 128 * 128;
        const long e = min(next_bytes, (long)(blockIdx.x + 1) * chunk);
        for (long b = blockIdx.x * chunk + threadIdx.x * 128L; b < e; b += SH::THREADS * 128L) prefetch_l2(next_w + b);
    };

#if QMMG_STAMPS
    long long st_t0 = 0, st_c0 = 0, st_v[16];
    int st_n = 0, st_g[4], st_last[4], st_nr = 0;
    bool st_on = false;
    if (threadIdx.x == 0 && blockIdx.x < 256) {
        unsigned* seen = &qmmg_seen[(F * 4 + MODE) * 2 + (HX ? 1 : 0)][blockIdx.x];
#ifdef QMMG_STAMP_STEP
        // One layer of one decode step for every product (a step's residual
        // launches alternate dense, 4h→h; QKV and SwiGLU once a layer).
        st_on = ++*seen == (MODE == 1 ? QMMG_STAMP_STEP * 56 + 2 * QMMG_STAMP_LAYER + 1
                                      : QMMG_STAMP_STEP * 28 + QMMG_STAMP_LAYER + 1);
#else
        st_on = ++*seen == QMMG_STAMP_LAUNCH;
#endif
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(st_t0));
        st_c0 = clock64();
    }
#define QG_STAMP() if (st_on && st_n < 16) st_v[st_n++] = clock64() - st_c0
#else
#define QG_STAMP()
#endif
    if (QMMG_EARLY_DEPENDENTS) pdl_launch_dependents();
    if (MODE == 3) preload_token_slots(rc, n, NT8 * 8, slots);
    float* red = (float*)qg_smem;
    bool waited = false;
    for (long x = start; x < end;) {
        const int G = (int)(x / C), c0 = (int)(x % C);
        const int c1 = (int)min((long)C, c0 + (end - x));
        const int tile = tile_of(G);
        // Weights do not depend on the kernel ahead: the first stages' are
        // requested before waiting for it.
#pragma unroll
        for (int s = 0; s < S - 1; s++)
            if (c0 + s < c1) issue_w(tile, c0 + s, s);
        const bool first = !waited;
        if (!waited) {
            pdl_wait();
            waited = true;
            QG_STAMP();
        }
#pragma unroll
        for (int s = 0; s < S - 1; s++) {
            if (c0 + s < c1) issue_x(c0 + s, s);
            cp_async_commit();
        }
        if (normed && first) {
            // The fold's sums of squares of the product before (as quantize_x:
            // 1 / √(mean + eps)), read while the first stages land: 8 threads a
            // token, each every 8th group in order, then a fixed butterfly —
            // one L2 round trip, not one a group (run 174: the consumers
            // started ~2 µs late reading them one thread a token).
            const int pg = (cols + QG_FOLD_ROWS - 1) / QG_FOLD_ROWS, j = threadIdx.x & 7;
            for (int t0 = 0; t0 < NT8 * 8; t0 += SH::THREADS / 8) {
                const int tok = t0 + (threadIdx.x >> 3);
                float s = 0.f;
                if (tok < n) {
#pragma unroll 4
                    for (int p = j; p < pg; p += 8) s += rms_ss[p * QG_SS_STRIDE + tok];
                }
                s += __shfl_xor_sync(0xffffffffu, s, 4);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                if (j == 0 && tok < n) inv_rms[tok] = (1.0f / QG_FOLD_SCALE) / sqrtf(s / (float)cols + rms_eps);
            }
        }
        float acc[NT8][4];
#pragma unroll
        for (int j = 0; j < NT8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        for (int c = c0; c < c1; c++) {
            const int k = c - c0;
            cp_async_wait<S - 2>();
            __syncthreads();  // chunk c landed for every warp; slot (k − 1) % S is free
            const int nc = c + S - 1;
            if (nc < c1 && !(QMMG_DRY & 2)) {
                issue_w(tile, nc, (k + S - 1) % S);
                if (!(QMMG_DRY & 4)) issue_x(nc, (k + S - 1) % S);
            }
            cp_async_commit();
            const unsigned char* st = qg_smem + (k % S) * L::STAGE;
            const int nu = min(SH::CU, units - c * SH::CU), nblk = min((int)L::KB, nb - c * L::KB);
            const bool whole = nu == SH::CU && nblk == L::KB;
            if (QMMG_DRY & 1) {
            } else if (HX) {
                if (whole) chunk_product_hx<F, NT8, SH, false>(acc, st, warp, lane, nu, nblk);
                else chunk_product_hx<F, NT8, SH, true>(acc, st, warp, lane, nu, nblk);
            } else if (whole) {
                chunk_product<F, NT8, SH, false>(acc, st, warp, lane, nu, nblk);
            } else {
                chunk_product<F, NT8, SH, true>(acc, st, warp, lane, nu, nblk);
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the stages are free: red takes their place
        QG_STAMP();
#if QMMG_STAMPS
        if (st_on && st_nr < 4) { st_g[st_nr] = G; st_last[st_nr++] = (c0 != 0 || c1 != C) ? 0 : 2; }
#endif
        const long xn = x + (c1 - c0);
        if (xn == end) {
            if (!QMMG_EARLY_DEPENDENTS) pdl_launch_dependents();
            if (!QMMG_PREFETCH_AT_END) prefetch_next();
        }
        if (QMMG_DRY & 8) {
            float keep = 0.f;  // the arithmetic stays live
#pragma unroll
            for (int j = 0; j < NT8; j++) keep += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];
            if (keep == 12345.f) out[threadIdx.x] = keep;
            x = xn;
            continue;
        }
        const bool split = c0 != 0 || c1 != C;
        const int blo = block_of((long)G * C), bhi = block_of((long)G * C + C - 1);
        // This block writes group G's outputs: the rows' current values
        // (accumulate) or biases are requested now, in flight during the
        // sums.
        const bool writes = !split || (int)blockIdx.x == blo;
        float base[EPT], gk[EPT];
#pragma unroll
        for (int k = 0; k < EPT; k++) {
            const int e = threadIdx.x + k * SH::THREADS;
            const int tok = e / (SH::TILES * 16), row = G * SH::TILES * 16 + e % (SH::TILES * 16);
            base[k] = 0.f;
            gk[k] = 0.f;
#if QMMG_X_EPI & 8
            // QKV's RoPE-table epilogue reads its biases from shared memory.
            const bool table = MODE == 3 && QMMG_ROPE_TABLE && n * rc.n_pairs <= L::ROPE_CAP;
            if (MODE != 2 && !table && writes && e < n * SH::TILES * 16 && row < out_rows) {
#else
            if (MODE != 2 && writes && e < n * SH::TILES * 16 && row < out_rows) {
#endif
                if (MODE == 1) base[k] = out[(long)tok * out_rows + row];
                else if (bias) base[k] = bias[row];
                if (fold) gk[k] = fold_g[row] * QG_FOLD_SCALE;
            }
        }
        constexpr int RS = L::RED_STRIDE;
        // The tile's sums: its first warp's, then (two warps a tile) the second's added.
#pragma unroll
        for (int h = 0; h < SH::PHASES; h++) {
            if (half == h) {
#pragma unroll
                for (int j = 0; j < NT8; j++) {
                    float* r0 = red + (tw * 16 + g) * RS + j * 8 + 2 * t;
                    r0[0] = h ? r0[0] + acc[j][0] : acc[j][0];
                    r0[1] = h ? r0[1] + acc[j][1] : acc[j][1];
                    r0[8 * RS] = h ? r0[8 * RS] + acc[j][2] : acc[j][2];
                    r0[8 * RS + 1] = h ? r0[8 * RS + 1] + acc[j][3] : acc[j][3];
                }
            }
            __syncthreads();
        }
        // A writing block's QKV epilogue reads its biases and rotations from
        // shared memory, filled here, before a split group's wait for its
        // parts (the stages past red are free; the wait's barrier, or this
        // one, publishes them): its loop then runs rolled, from a few
        // instructions. Unrolled, with a sincosf a value inline, it took ~5
        // µs at 32 tokens — every block, whatever its loads (run 188's stamps;
        // run 185 moved the loads): the code of a loop that runs once a
        // launch, fetched cold.
        const bool qkv_fast = MODE == 3 && QMMG_ROPE_TABLE && writes && n * rc.n_pairs <= L::ROPE_CAP;
        float2* rope = (float2*)(qg_smem + L::ROPE_OFF);
        float* gbias = (float*)(qg_smem + L::QKV_BIAS_OFF);
        if (qkv_fast) {
            if (threadIdx.x < SH::TILES * 16) {
                const int row = G * SH::TILES * 16 + threadIdx.x;
                gbias[threadIdx.x] = bias && row < out_rows ? bias[row] : 0.f;
            }
            if (G * SH::TILES * 16 < (rc.n_heads + rc.n_groups) * rc.head_dim) {
#pragma unroll 1
                for (int i = threadIdx.x; i < n * rc.n_pairs; i += SH::THREADS) {
                    const int tok = i / rc.n_pairs;
                    float sn, cs;
                    sincosf((float)slots[tok].pos * rc.inv_freq[i - tok * rc.n_pairs], &sn, &cs);
                    rope[i] = make_float2(cs, sn);
                }
            }
            if (!split) __syncthreads();
        }
        if (split && (int)blockIdx.x != blo) {
            // A part of group G for block blo (this block's first run: a later
            // run starts at its group's first chunk): into this block's slot, then
            // counted by thread 0 alone, released (the barrier orders every
            // thread's writes before it; cooperative groups' grid barrier).
            float* mine = ws + (long)blockIdx.x * SH::WS_SLOT;
            for (int e = threadIdx.x; e < n * SH::TILES * 16; e += SH::THREADS)
                mine[e] = red[(e % (SH::TILES * 16)) * RS + e / (SH::TILES * 16)];
            __syncthreads();  // also: red is the next run's stages
            if (!QMMG_SENTINEL_PARTS && threadIdx.x == 0) red_add_release(&counters[G], 1u);
            QG_STAMP();
            x = xn;
            continue;
        }
        if (split) {
#if QMMG_STAMPS
            if (st_on && st_nr > 0) st_last[st_nr - 1] = 1;
#endif
            // The other bhi − blo parts: counted (acquired by thread 0, the
            // barrier passing it on; the parts are read from L2).
            if (!QMMG_SENTINEL_PARTS) {
                if (threadIdx.x == 0) {
                    // Every block of the grid is resident (the host sizes it to a
                    // wave), so the parts come; a grid that is not would hang here:
                    // trapped, a launch error, instead.
                    for (long spins = 0; ld_acquire_gpu((const int*)&counters[G]) != bhi - blo; spins++)
                        if (spins > QG_SPIN_LIMIT) __trap();
                    counters[G] = 0u;
                }
                __syncthreads();
            }
            // A thread's elements of every part requested together, one part
            // at a time: a loop that waited on each L2 load in turn kept the
            // summing block busy for ~50K cycles while the other SMs idled
            // (run 84: SM active a third of the kernel's time; run 85 with
            // this: the 32-token products 1.2–1.6× faster).
            float sum[EPT];
#pragma unroll
            for (int k = 0; k < EPT; k++) {
                const int e = threadIdx.x + k * SH::THREADS;
                sum[k] = e < n * SH::TILES * 16 ? red[(e % (SH::TILES * 16)) * RS + e / (SH::TILES * 16)] : 0.f;
            }
            for (int bb = blo + 1; bb <= bhi; bb++) {
                float* part = ws + (long)bb * SH::WS_SLOT;
                float v[EPT];
#pragma unroll
                for (int k = 0; k < EPT; k++) {
                    const int e = threadIdx.x + k * SH::THREADS;
                    v[k] = e < n * SH::TILES * 16 ? __ldcg(part + e) : 0.f;
                }
                if (QMMG_SENTINEL_PARTS) {
                    // An element still the sentinel is read again until its
                    // part's store lands (the grid is resident: it comes).
#pragma unroll
                    for (int k = 0; k < EPT; k++) {
                        const int e = threadIdx.x + k * SH::THREADS;
                        for (long spins = 0; __float_as_uint(v[k]) == QG_PART_EMPTY; spins++) {
                            if (spins > QG_SPIN_LIMIT) __trap();
                            asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v[k]) : "l"(part + e));
                        }
                    }
#pragma unroll
                    for (int k = 0; k < EPT; k++) {
                        const int e = threadIdx.x + k * SH::THREADS;
                        if (e < n * SH::TILES * 16) __stcg(part + e, __uint_as_float(QG_PART_EMPTY));
                    }
                }
#pragma unroll
                for (int k = 0; k < EPT; k++) sum[k] += v[k];
            }
#pragma unroll
            for (int k = 0; k < EPT; k++) {
                const int e = threadIdx.x + k * SH::THREADS;
                if (e < n * SH::TILES * 16) red[(e % (SH::TILES * 16)) * RS + e / (SH::TILES * 16)] = sum[k];
            }
            __syncthreads();
            QG_STAMP();
        }
#if QMMG_X_EPI & 1
        // The SwiGLU loops below apply it themselves.
        if (normed && MODE != 2) {
#else
        if (normed) {
#endif
            // Activations folded unnormalised by the product before: its
            // RMSNorm applied to the sums (before bias, RoPE, SwiGLU).
            for (int e = threadIdx.x; e < n * SH::TILES * 16; e += SH::THREADS) {
                const int tok = e / (SH::TILES * 16), r = e % (SH::TILES * 16);
                red[r * RS + tok] *= inv_rms[tok];
            }
            __syncthreads();
        }
        if (MODE == 3) QG_STAMP();
        if (MODE == 2 && hq && PAIRS % 2) {
            // An odd count of pairs (f16 hand-off only): a group's outputs
            // end mid-block, so each value goes to its slot alone.
#if QMMG_X_EPI & 16
            // A thread keeps one row for its tokens (every SH::THREADS / R-th):
            // its row's addresses worked out once, the loop a few instructions
            // a value (with e / R and e % R a value, ~70).
            constexpr int R = PAIRS * 16, TPT = SH::THREADS / R;
            static_assert(TPT >= 1, "a thread a row");
            const int r = threadIdx.x % R, hrow = G * R + r;
            if (threadIdx.x < TPT * R && hrow < half_rows) {
                const float* gate = red + r * RS;
                const float* up = red + (R + r) * RS;
                float* o = out + hrow;
                u16* h = (u16*)hq + (hrow & ~31) + f16_activation_slot(hrow & 31);
#pragma unroll 1
                for (int tok = threadIdx.x / R; tok < n; tok += TPT) {
                    // (Without bit 1 the norm was applied to red before.)
                    const float ir = (QMMG_X_EPI & 1) && normed ? inv_rms[tok] : 1.f;
                    const float v = silu(gate[tok] * ir) * (up[tok] * ir);
#if QMMG_X_SWIGLU_OUT
                    o[(long)tok * half_rows] = v;
#endif
                    h[(long)tok * half_rows] = f32_to_f16(v);
                }
            }
#else
            QG_EPI_LOOP
            for (int e = threadIdx.x; e < n * PAIRS * 16; e += SH::THREADS) {
                const int tok = e / (PAIRS * 16), r = e % (PAIRS * 16);
                const int hrow = (G * PAIRS + r / 16) * 16 + r % 16;
                if (hrow >= half_rows) continue;
#if QMMG_X_EPI & 1
                const float v = silu(red[r * RS + tok] * (normed ? inv_rms[tok] : 1.f)) *
                                (red[(PAIRS * 16 + r) * RS + tok] * (normed ? inv_rms[tok] : 1.f));
#else
                const float v = silu(red[r * RS + tok]) * red[(PAIRS * 16 + r) * RS + tok];
#endif
#if QMMG_X_SWIGLU_OUT
                out[(long)tok * half_rows + hrow] = v;
#endif
                ((u16*)hq)[(long)tok * half_rows + (hrow & ~31) + f16_activation_slot(hrow & 31)] = f32_to_f16(v);
            }
#endif
        } else if (MODE == 2 && hq) {
            // The group's PAIRS·16 outputs of each token are BPG q8_0 blocks
            // (or, HX, f16 blocks) of the next product's activations: written
            // as quantize_x would write them (step_codes: codes or f16 at hq,
            // scales at hs), one warp a (token, block), so the next product
            // needs no quantize_x launch.
            constexpr int BPG = PAIRS * 16 / 32, BPG_SHIFT = BPG == 4 ? 2 : 1;
            const int stride = NT8 * 8;
            QG_EPI_LOOP
            for (int pr = warp; pr < stride * BPG; pr += SH::THREADS / 32) {
                const int tok = pr >> BPG_SHIFT, b = G * BPG + (pr & (BPG - 1));
                if (b * 32 >= half_rows) continue;
                if (tok >= n) {
                    if (!HX && lane == 0) hs[b * stride + tok] = make_float2(0.f, __int_as_float(hoff ? X_MAGIC : 0));
                    continue;
                }
                const int r = (pr & (BPG - 1)) * 32 + lane;
#if QMMG_X_EPI & 1
                const float v = silu(red[r * RS + tok] * (normed ? inv_rms[tok] : 1.f)) *
                                (red[(PAIRS * 16 + r) * RS + tok] * (normed ? inv_rms[tok] : 1.f));
#else
                const float v = silu(red[r * RS + tok]) * red[(PAIRS * 16 + r) * RS + tok];
#endif
                out[(long)tok * half_rows + b * 32 + lane] = v;
                if (HX) {
                    ((u16*)hq)[(long)tok * half_rows + b * 32 + f16_activation_slot(lane)] = f32_to_f16(v);
                } else {
                    const float2 sc = warp_quantize_code(v, (signed char*)hq + (long)tok * half_rows + b * 32);
                    if (lane == 0)
                        hs[b * stride + tok] =
                            make_float2(sc.x, hoff ? __int_as_float(X_MAGIC - hoff * __float_as_int(sc.y)) : sc.y);
                }
            }
        } else if (MODE == 2) {
            QG_EPI_LOOP
            for (int e = threadIdx.x; e < n * PAIRS * 16; e += SH::THREADS) {
                const int tok = e / (PAIRS * 16), r = e % (PAIRS * 16);
                const int hrow = (G * PAIRS + r / 16) * 16 + r % 16;
#if QMMG_X_EPI & 1
                const float ir = normed ? inv_rms[tok] : 1.f;
                if (hrow < half_rows) out[(long)tok * half_rows + hrow] = silu(red[r * RS + tok] * ir) * (red[(PAIRS * 16 + r) * RS + tok] * ir);
#else
                if (hrow < half_rows)
                    out[(long)tok * half_rows + hrow] = silu(red[r * RS + tok]) * red[(PAIRS * 16 + r) * RS + tok];
#endif
            }
        } else {
            float sq[EPT];
            // A group with key/value rows stages its outputs [token][row] in
            // the fold's memory (free in MODE 3) and writes the cache rows from
            // there as 16-byte vectors (kv_store8).
            const bool kv_vec = MODE == 3 && QMMG_KV_VEC && KV_ROWS_FIT && (rc.head_dim & 7) == 0 &&
                                (G + 1) * SH::TILES * 16 > rc.n_heads * rc.head_dim;
            float* kv_rows = (float*)(qg_smem + L::FOLD_OFF);
            if (qkv_fast) {
                // A thread's row is the same for each of its tokens (the block's
                // threads a multiple of the group's rows): what depends on the
                // row is worked out once, the loop a few instructions a token.
                static_assert(MODE != 3 || SH::THREADS % (SH::TILES * 16) == 0, "a thread keeps its row");
                const int r = threadIdx.x % (SH::TILES * 16), row = G * SH::TILES * 16 + r;
                const int h = row / rc.head_dim, d = row % rc.head_dim;
                const bool rot = rope_turns(rc, h, d), odd = d & 1;
                const float bv = gbias[r], bb = gbias[r ^ 1];
                const float2* cs = rope + (d >> 1);
                if (row < out_rows) {
#pragma unroll 1
                    for (int tok = threadIdx.x / (SH::TILES * 16); tok < n; tok += SH::THREADS / (SH::TILES * 16)) {
                        const float v = red[r * RS + tok] + bv;
                        float rv = v;
                        if (rot) {
                            const float b = red[(r ^ 1) * RS + tok] + bb;
                            const float2 t = cs[tok * rc.n_pairs];
                            rv = odd ? v * t.x + b * t.y : v * t.x - b * t.y;
                        }
                        out[(long)tok * out_rows + row] = rv;
                        if (kv_vec) kv_rows[tok * SH::KV_ROW + r] = rv;
                        else if (h >= rc.n_heads) kv_store1(rc, slots[tok], row, rv);
                    }
                }
            } else {
#pragma unroll
                for (int k = 0; k < EPT; k++) {
                    const int e = threadIdx.x + k * SH::THREADS;
                    const int tok = e / (SH::TILES * 16), r = e % (SH::TILES * 16);
                    const int row = G * SH::TILES * 16 + r;
                    sq[k] = 0.f;
                    if (e >= n * SH::TILES * 16 || row >= out_rows) continue;
                    const float v = red[r * RS + tok] + base[k];
                    if (MODE != 3) {
                        out[(long)tok * out_rows + row] = v;
                    } else {
                        const float b = red[(r ^ 1) * RS + tok] + (bias ? bias[row ^ 1] : 0.f);
                        const float rv = qkv_rope(rc, slots[tok].pos, row, v, b);
                        out[(long)tok * out_rows + row] = rv;
                        if (kv_vec) kv_rows[tok * SH::KV_ROW + r] = rv;
                        else kv_store1(rc, slots[tok], row, rv);
                    }
                    if (fold) {
                        // Saturated, not infinite, past f16's range.
                        const float a = fminf(fmaxf(v * gk[k], -65504.f), 65504.f);
                        ((u16*)hq)[(long)tok * out_rows + (row & ~31) + f16_activation_slot(row & 31)] =
                            f32_to_f16(a);
                        sq[k] = v * v;
                    }
                }
            }
            if (fold) fold_sum_squares<SH, EPT>(sq, G, n, fold_ss, (float*)(qg_smem + L::FOLD_OFF));
            if (MODE == 3) QG_STAMP();
            if (kv_vec) {
                // A token's 8-row pieces on consecutive threads: 16 of them
                // write its 128 rows' 256 (f16) contiguous bytes.
                __syncthreads();
                for (int p = threadIdx.x; p < n * SH::TILES * 2; p += SH::THREADS) {
                    const int tok = p / (SH::TILES * 2), r = p % (SH::TILES * 2) * 8;
                    const int row = G * SH::TILES * 16 + r;
                    const int h = row / rc.head_dim;
                    if (row >= out_rows || h < rc.n_heads) continue;
                    const float4* src = (const float4*)(kv_rows + tok * SH::KV_ROW + r);
                    const float4 a = src[0], b = src[1];
                    const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                    kv_store8(rc, slots[tok], h - rc.n_heads, row % rc.head_dim, x);
                }
                QG_STAMP();
            }
        }
        __syncthreads();  // red is the next run's stages
        QG_STAMP();
        x = xn;
    }
    if (QMMG_PREFETCH_AT_END) prefetch_next();
#if QMMG_STAMPS
    if (st_on) {
        // Lines: block, start ns, runs (group, 0 part / 1 summed / 2 whole), stamps (cycles).
        printf("QGS F%d M%d H%d b%d t0 %lld runs %d [%d:%d %d:%d %d:%d] st %d: %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n",
               F, MODE, HX ? 1 : 0, blockIdx.x, st_t0, st_nr, st_nr > 0 ? st_g[0] : -1, st_nr > 0 ? st_last[0] : -1,
               st_nr > 1 ? st_g[1] : -1, st_nr > 1 ? st_last[1] : -1, st_nr > 2 ? st_g[2] : -1,
               st_nr > 2 ? st_last[2] : -1, st_n, st_v[0], st_v[1], st_v[2], st_v[3], st_v[4], st_v[5], st_v[6],
               st_v[7], st_v[8], st_v[9], st_v[10], st_v[11], st_v[12], st_v[13], st_v[14], st_v[15]);
    }
#endif
}

// qmmg_*: over q8_0 activation codes; qmmh_*: over f16 activations (xq
// the f16 rows, xs unused).
#define QMMG_KERNEL_AS(KNAME, HX, F, NT8, MODE)                                                               \
    extern "C" __global__ void __launch_bounds__(QgShape<MODE, F, NT8, HX>::type::THREADS,                    \
                                                        QgShape<MODE, F, NT8, HX>::type::MIN_BLOCKS)                 \
        KNAME(const uint4* w, const u16* scales, const u16* mins, int units, int tiles, const signed char* xq,   \
              const float2* xs, int n, int cols, const float* bias, float* out, int out_rows, int half_rows,    \
              RopeCtx rc, const char* next_w, long next_bytes, float* ws, u32* counters, unsigned char* hq,     \
              float2* hs, int hoff, const float* fold_g, float* fold_ss, const float* rms_ss, float rms_eps) {  \
        qmmg_body<F, NT8, MODE, HX>(w, scales, mins, units, tiles, xq, xs, n, cols, bias, out, out_rows,        \
                                    half_rows, rc, next_w, next_bytes, ws, counters, hq, hs, hoff, fold_g,     \
                                    fold_ss, rms_ss, rms_eps);                                                 \
    }
#define QMMG_KERNEL(F, NT8, MODE)                                  \
    QMMG_KERNEL_AS(qmmg_##F##_##NT8##_##MODE, false, F, NT8, MODE) \
    QMMG_KERNEL_AS(qmmh_##F##_##NT8##_##MODE, true, F, NT8, MODE)
#define QMMG_MODES(F, NT8) QMMG_KERNEL(F, NT8, 0) QMMG_KERNEL(F, NT8, 1) QMMG_KERNEL(F, NT8, 2) QMMG_KERNEL(F, NT8, 3)
#define QMMG_FORMAT(F) QMMG_MODES(F, 2) QMMG_MODES(F, 4) QMMG_MODES(F, 8)
#ifdef QMMG_X_MODULE
// The qmmx module (qmmx.cuh): the f16 products of 17–32 tokens of the layers' steps.
#define QMMX_KERNEL(F)                                 \
    QMMG_KERNEL_AS(qmmx_##F##_4_1, true, F, 4, 1)      \
    QMMG_KERNEL_AS(qmmx_##F##_4_2, true, F, 4, 2)      \
    QMMG_KERNEL_AS(qmmx_##F##_4_3, true, F, 4, 3)
QMMX_KERNEL(0)
QMMX_KERNEL(1)
QMMX_KERNEL(2)
QMMX_KERNEL(3)
#else
QMMG_FORMAT(0)
QMMG_FORMAT(1)
QMMG_FORMAT(2)
QMMG_FORMAT(3)
#endif
