// Shared definitions for every kernel file. NVRTC compiles these without
// toolkit headers (users often have the driver and libraries but no
// cuda_fp16.h), so half-precision conversions go through inline PTX.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define WARP 32

// math.h is not available without the toolkit headers.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Round to nearest even, NaN kept quiet: the same rule as the `half` crate.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

// Element types, by the codes the host passes: 0 = f32, 1 = f16, 2 = bf16.
template <int T> struct Elem;
template <> struct Elem<0> {
    typedef float storage;
    static __device__ __forceinline__ float load(const float* p, long i) { return p[i]; }
    static __device__ __forceinline__ void store(float* p, long i, float v) { p[i] = v; }
};
template <> struct Elem<1> {
    typedef u16 storage;
    static __device__ __forceinline__ float load(const u16* p, long i) { return f16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(u16* p, long i, float v) { p[i] = f32_to_f16(v); }
};
template <> struct Elem<2> {
    typedef u16 storage;
    static __device__ __forceinline__ float load(const u16* p, long i) { return bf16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(u16* p, long i, float v) { p[i] = f32_to_bf16(v); }
};

// 16 bytes straight from memory, not kept in L1: weights are streamed once
// per step, so caching them would only evict the activations.
__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Starts a 128-byte line towards L2 without waiting for it.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Unpacks 16 bytes into floats: 4 f32, or 8 f16/bf16.
template <int T> struct Vec16;
template <> struct Vec16<0> {
    enum { N = 4 };
    static __device__ __forceinline__ void unpack(uint4 v, float* out) {
        out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y);
        out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
    }
};
template <> struct Vec16<1> {
    enum { N = 8 };
    static __device__ __forceinline__ void unpack(uint4 v, float* out) {
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            out[2 * i] = f16_to_f32((u16)(w[i] & 0xffffu));
            out[2 * i + 1] = f16_to_f32((u16)(w[i] >> 16));
        }
    }
};
template <> struct Vec16<2> {
    enum { N = 8 };
    static __device__ __forceinline__ void unpack(uint4 v, float* out) {
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            out[2 * i] = __uint_as_float(w[i] << 16);
            out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

// Programmatic dependent launch (sm_90): a kernel lets the next one in the
// stream start as soon as all of its blocks are running, and waits for the
// previous one's results only where it first reads them. A mat-vec can then
// stream its weights while the kernel before it drains. Without the launch
// attribute (or before sm_90) both are no-ops.
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// A dependency on the kernel before through a counter instead of its grid's
// completion (chain.rs): every block of that kernel adds 1 once its writes
// are done (chain_signal), and this kernel's blocks go on when `wait_n` have
// (chain_wait) — without waiting for the grid to drain and be flushed, which
// is most of what a decode step's ~140 kernel boundaries cost. Both kernels
// run at once (the one before let this one start with
// pdl_launch_dependents, so all of its blocks are resident: spinning here
// cannot keep them from running). No wait pointer: griddepcontrol.wait.
struct ChainSync {
    const int* wait;
    int* signal;
    int wait_n;
    int pad;
};

__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Every thread of the block must call it.
__device__ __forceinline__ void chain_wait(const ChainSync& s) {
    if (!s.wait) {
        pdl_wait();
        return;
    }
    if (threadIdx.x == 0) {
        while (ld_acquire_gpu(s.wait) < s.wait_n) {
        }
        // The acquire at GPU scope drops this SM's L1 lines, so the data the
        // kernel before wrote is read from L2; the barrier passes that on.
        __threadfence();
    }
    __syncthreads();
}

// The block's writes are done: every thread must call it, after them.
__device__ __forceinline__ void chain_signal(const ChainSync& s) {
    if (!s.signal) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(s.signal, 1);
    }
}
