// The rest of a layer after attention for one token — dense (+ residual),
// RMSNorm → h→4h → SwiGLU, 4h→h (+ residual) — as one persistent kernel
// whose weights stream through a shared-memory ring.
//
// Why: as three kernels (qmma's one-token path), DRAM idles at each
// boundary from a product's last bytes to the next one's first batch —
// the wait for the grid ahead, the activations read and quantized, the
// tail of blocks with one item more (run 74: a product's activations are
// ready 3.5–5 µs after the kernel ahead ended; a q4_0 layer takes ~57 µs
// for ~29 µs of weights at 4 TB/s). Here one block a SM and a producer
// warp per block: its lane 0 requests the block's share of all three
// products' weights in order, slot after slot of a ring (TMA bulk copies
// completing on mbarriers), and never waits for anything but a free slot.
// So the weights of the next product arrive while the block waits for the
// other blocks (a counter per product boundary, not a grid boundary) and
// quantizes its activations, and a block with fewer items of one product
// streams the next one's instead of idling.
//
// The 8 compute warps run qmma's one-token arithmetic on each slot exactly
// as qmma_body runs a batch (QMMA_ONE_UB units a lane, unit u·8 + warp of
// the batch, the same groups of mma columns, the same epilogue), items
// dealt to blocks round-robin, so the results equal the three kernels' bit
// for bit. A slot is one such batch: 64 tile-units (SwiGLU: 32 of the gate
// tile, 32 of the up tile) — codes, then scales, then offsets.
//
// Counters (3 ints a launch, zero between launches): [0] blocks done with
// dense, [1] done with h→4h, [2] blocks past both waits; the block that
// brings [2] to the grid size zeroes all three (every block has then
// passed every wait).
//
// Launch: grid = SMs, block = MLPS_THREADS, dynamic shared memory = slots ×
// slot_bytes + the activations (mlp_stream.rs). sm_90 (TMA, mbarriers);
// the body is empty below it and the host never launches it there.

// 1: the compute warps only pass the slots on, no arithmetic, no outputs
// (measurements: the ring and the counters alone).
#ifndef MLPS_DRY
#define MLPS_DRY 0
#endif
#define MLPS_COMPUTE QMMA_THREADS
#define MLPS_THREADS (MLPS_COMPUTE + 32)
#define MLPS_STEP (QMMA_ONE_UB * QMMA_WARPS)  // tile-units a slot
#define MLPS_MAX_SLOTS 8
// Spins of a wait before the kernel traps (a lost signal must fail the
// step, not hang the device): ~seconds, where a real wait takes µs.
#define MLPS_SPIN_LIMIT (1L << 24)

// One product: tiled weights (quant.rs), its input and output.
struct MlpsOp {
    const uint4* w;
    const u16* scales;
    const u16* mins;
    const float* x;   // input row (cols)
    const float* nw;  // RMSNorm weights of x, or null
    float* out;       // accumulated rows (dense, 4h→h) or SwiGLU rows
    long long units, tiles, cols, out_rows;
};

struct MlpsArgs {
    MlpsOp op[3];
    int* counters;
    long long slots, slot_bytes;
};

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    for (long spins = 0;; spins++) {
        u32 done;
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
        if (done) return;
        if (spins > MLPS_SPIN_LIMIT) __trap();
    }
}

// `bytes` (a multiple of 16) from global to shared memory, both 16-byte
// aligned, counted on `bar` when they land.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
}

// The compute warps' barrier (named barrier 1: the producer never joins).
struct SyncCompute {
    static __device__ __forceinline__ void sync() { asm volatile("bar.sync 1, %0;" ::"n"(MLPS_COMPUTE) : "memory"); }
};

// Thread 0: until every block has counted itself at *c.
__device__ __forceinline__ void mlps_wait_count(const int* c, int blocks) {
    for (long spins = 0; ld_acquire_gpu(c) < blocks; spins++)
        if (spins > MLPS_SPIN_LIMIT) __trap();
    __threadfence();
}

// The ring, walked in the same order by the producer and the consumers.
struct MlpsRing {
    unsigned char* base;
    u64* full;
    u64* empty;
    int slots, slot_bytes, slot;
    u32 phase;
    __device__ __forceinline__ unsigned char* at() const { return base + (long)slot * slot_bytes; }
    __device__ __forceinline__ void next() {
        if (++slot == slots) {
            slot = 0;
            phase ^= 1u;
        }
    }
};

// Producer: this block's items of one product, slot after slot.
template <int F, int RT>
__device__ __forceinline__ void mlps_produce(const MlpsOp& op, MlpsRing& ring) {
    constexpr int SCB = 32 * QFmt<F>::BLOCKS;  // scale bytes a unit
    constexpr int STEP = MLPS_STEP / RT;
    const int units = (int)op.units;
    const int items = RT == 2 ? (int)op.out_rows / 16 : (int)op.tiles;
    for (int item = blockIdx.x; item < items; item += gridDim.x)
        for (int base = 0; base < units; base += STEP) {
            mbar_wait(&ring.empty[ring.slot], ring.phase ^ 1u);
            const int nu = min(STEP, units - base);
            u64* bar = &ring.full[ring.slot];
            mbar_expect_tx(bar, (u32)(RT * nu * (512 + SCB * (QFmt<F>::MIN ? 2 : 1))));
            unsigned char* s = ring.at();
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const long u0 = (long)(r ? item + (int)op.out_rows / 16 : item) * units + base;
                bulk_copy(s + r * STEP * 512, (const char*)op.w + u0 * 512, nu * 512, bar);
                bulk_copy(s + MLPS_STEP * 512 + r * STEP * SCB, (const char*)op.scales + u0 * SCB, nu * SCB, bar);
                if (QFmt<F>::MIN)
                    bulk_copy(s + MLPS_STEP * (512 + SCB) + r * STEP * SCB, (const char*)op.mins + u0 * SCB,
                              nu * SCB, bar);
            }
            ring.next();
        }
}

// Consumers: this block's items of one product from the ring, each batch
// as qmma_body's one-token path consumes it (load_one, consume_one).
template <int F, int MODE, int RT>
__device__ __forceinline__ void mlps_consume(const MlpsOp& op, MlpsRing& ring, const signed char* xq,
                                             const float2* xs, float* red_raw) {
    constexpr int SB = QFmt<F>::BLOCKS, SCB = 32 * SB;
    constexpr int UB = QMMA_ONE_UB / RT, STEP = UB * QMMA_WARPS;
    constexpr int NCOL = UB * SB, CPG = NCOL < 8 ? NCOL : 8, GPB = NCOL / CPG, UG = CPG / SB;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int units = (int)op.units, nb = (int)op.cols / 32, out_rows = (int)op.out_rows;
    const int items = MODE == 2 ? out_rows / 16 : (int)op.tiles;
    float(*red)[RT * 16][9] = (float(*)[RT * 16][9])red_raw;
    const RopeCtx rc{};
    float acc[RT][1][4];
#pragma unroll
    for (int r = 0; r < RT; r++) acc[r][0][0] = acc[r][0][1] = acc[r][0][2] = acc[r][0][3] = 0.f;
    // (One consumer of every slot, in order, so it is never a whole ring
    // ahead of the producer: a barrier's phase parity cannot alias.)
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        for (int base = 0; base < units; base += STEP) {
            mbar_wait(&ring.full[ring.slot], ring.phase);
            if (MLPS_DRY) {
                __syncwarp();
                if (lane == 0) mbar_arrive(&ring.empty[ring.slot]);
                ring.next();
                continue;
            }
            const unsigned char* s = ring.at();
            const bool whole = base + STEP <= units;
            uint4 buf[RT][UB];
            uint2 sv[RT][GPB], mv[RT][GPB];
#pragma unroll
            for (int r = 0; r < RT; r++) {
                const uint4* codes = (const uint4*)(s + r * STEP * 512);
                const unsigned char* sc = s + MLPS_STEP * 512 + r * STEP * SCB;
                const unsigned char* mn = sc + MLPS_STEP * SCB;
#pragma unroll
                for (int u = 0; u < UB; u++) {
                    buf[r][u] = make_uint4(0u, 0u, 0u, 0u);
                    if (whole || base + u * QMMA_WARPS + warp < units) buf[r][u] = codes[(u * QMMA_WARPS + warp) * 32 + lane];
                }
#pragma unroll
                for (int q = 0; q < GPB; q++) {
                    sv[r][q] = mv[r][q] = make_uint2(0u, 0u);
                    if (SB == 2) {
                        const int u = q * UG + t;  // the lane's unit: both its blocks
                        if (whole || base + u * QMMA_WARPS + warp < units) {
                            sv[r][q] = ((const uint2*)sc)[(u * QMMA_WARPS + warp) * 8 + g];
                            if (QFmt<F>::MIN) mv[r][q] = ((const uint2*)mn)[(u * QMMA_WARPS + warp) * 8 + g];
                        }
                    } else {
#pragma unroll
                        for (int k = 0; k < 2; k++) {
                            const int u = q * UG + 2 * t + k;  // the lane's two units
                            if (2 * t + k < CPG && (whole || base + u * QMMA_WARPS + warp < units)) {
                                const u32 v = ((const u32*)sc)[(u * QMMA_WARPS + warp) * 8 + g];
                                if (k) sv[r][q].y = v; else sv[r][q].x = v;
                                if (QFmt<F>::MIN) {
                                    const u32 m = ((const u32*)mn)[(u * QMMA_WARPS + warp) * 8 + g];
                                    if (k) mv[r][q].y = m; else mv[r][q].x = m;
                                }
                            }
                        }
                    }
                }
            }
            // The slot is in registers: the producer may refill it.
            __syncwarp();
            if (lane == 0) mbar_arrive(&ring.empty[ring.slot]);
            ring.next();
            const int ubase = base + warp;
            const signed char* xqb = xq + ubase * SB * 32;
            const float2* xsb = xs + ubase * SB * 2;  // in-block activations: stride 2
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
        }
#pragma unroll
        for (int r = 0; r < RT; r++)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                acc[r][0][e] += __shfl_xor_sync(0xffffffffu, acc[r][0][e], 1);
                acc[r][0][e] += __shfl_xor_sync(0xffffffffu, acc[r][0][e], 2);
            }
        if (!MLPS_DRY)
            item_epilogue<1, MODE, RT, true, SyncCompute>(acc, red, item * 16, 1, nullptr, op.out, out_rows, out_rows,
                                                          rc, nullptr);
    }
}

// The product's input quantized into shared memory (as in_block_x).
__device__ __forceinline__ void mlps_activations(const MlpsOp& op, float eps, unsigned char* xreg,
                                                 const signed char*& xq, const float2*& xs, float* scratch) {
    const int cols = (int)op.cols;
    xs = (const float2*)xreg;
    xq = (const signed char*)(xreg + (long)(cols / 32) * 2 * sizeof(float2));
    if (op.nw)
        block_quantize_one<true, SyncCompute, true>(op.x, op.nw, eps, cols, (signed char*)xq, (float2*)xs, scratch);
    else
        block_quantize_one<false, SyncCompute, true>(op.x, op.nw, eps, cols, (signed char*)xq, (float2*)xs, scratch);
}

// Compute warps: all blocks' writes to the counter are in (thread 0 waited).
__device__ __forceinline__ void mlps_signal(int* c) {
    SyncCompute::sync();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(c, 1);
    }
}
#endif

template <int F>
__device__ __forceinline__ void mlps_body(const MlpsArgs& a, float eps) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char mlps_smem[];
    __shared__ float red[QMMA_WARPS * 32 * 9];
    __shared__ float scratch[QMMA_WARPS * 8];
    __shared__ __align__(8) u64 full[MLPS_MAX_SLOTS], empty[MLPS_MAX_SLOTS];
    const int slots = (int)a.slots;
    MlpsRing ring{mlps_smem, full, empty, slots, (int)a.slot_bytes, 0, 0u};
    if (threadIdx.x == 0) {
        for (int s = 0; s < slots; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], QMMA_WARPS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    pdl_launch_dependents();
    if (threadIdx.x >= MLPS_COMPUTE) {
        // The producer: no dependency but the ring's free slots.
        if (threadIdx.x != MLPS_COMPUTE) return;
        mlps_produce<F, 1>(a.op[0], ring);
        mlps_produce<F, 2>(a.op[1], ring);
        mlps_produce<F, 1>(a.op[2], ring);
        return;
    }
    unsigned char* xreg = mlps_smem + (long)slots * a.slot_bytes;
    const signed char* xq;
    const float2* xs;
    int* const c = a.counters;
    const int blocks = gridDim.x;
    // Dense: the attention's output, once the attention kernel is done.
    pdl_wait();
    mlps_activations(a.op[0], eps, xreg, xq, xs, scratch);
    mlps_consume<F, 1, 1>(a.op[0], ring, xq, xs, red);
    mlps_signal(c);
    // h→4h: the residual every block's dense rows went into.
    if (threadIdx.x == 0) mlps_wait_count(c, blocks);
    SyncCompute::sync();
    mlps_activations(a.op[1], eps, xreg, xq, xs, scratch);
    mlps_consume<F, 2, 2>(a.op[1], ring, xq, xs, red);
    mlps_signal(c + 1);
    // 4h→h: every block's SwiGLU rows.
    if (threadIdx.x == 0) mlps_wait_count(c + 1, blocks);
    SyncCompute::sync();
    mlps_activations(a.op[2], eps, xreg, xq, xs, scratch);
    if (threadIdx.x == 0 && atomicAdd(c + 2, 1) == blocks - 1) {
        // Every block is past both waits: the counters are free again.
        c[0] = 0;
        c[1] = 0;
        c[2] = 0;
        __threadfence();
    }
    mlps_consume<F, 1, 1>(a.op[2], ring, xq, xs, red);
#endif
}

#define MLPS_KERNEL(F)                                                                                   \
    extern "C" __global__ void __launch_bounds__(MLPS_THREADS, 1) mlps_##F(const MlpsArgs a, float eps) { \
        mlps_body<F>(a, eps);                                                                            \
    }
MLPS_KERNEL(0)
MLPS_KERNEL(1)
MLPS_KERNEL(2)
MLPS_KERNEL(3)
