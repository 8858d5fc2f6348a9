// The qmmx module (compile.rs): the grouped f16 products of 17–32 tokens of the layers (below: the residual and QKV ones); the SwiGLU ones
// (qmmx_{format}_4_2) as 7-pair wide groups on 16 warps — the last two
// of a group's 14 tiles on two warps each (QMMG_WIDE_XT) — where the qmma
// module's qmmh_{format}_4_2 have 8 pairs: ChatGLM2-6B's h→4h as 123 groups on
// 132 SMs instead of 107, each scheduler 28 of a chunk's 112 units (run 278:
// 40.2 against 42.9 µs, 32 int4 sequences +2.6%). A module of its own, looked
// up after every other, so that its code moves no other kernel: the qmma
// module, and with it batch-1 decode's code placement, stays as it was
// (compiled in it, the same kernels cost batch 1 0.4–0.7%, runs 274 and 278).
// quant_group::GroupShape::of_x mirrors the shape.
#define QMMG_X_MODULE 1
#ifndef QMMG_WIDE_PAIRS_4
#define QMMG_WIDE_PAIRS_4 7
#endif
#ifndef QMMG_WIDE_XT
#define QMMG_WIDE_XT 1
#endif
// QMMX_EARLY_DEPENDENTS=1 (measurements): this module's products let the
// kernel after them launch as soon as all their blocks have started
// (qmma_group.cu's QMMG_EARLY_DEPENDENTS, here alone): 4h→h's first blocks
// could take the 9 SMs that h→4h's 123 groups leave free.
#ifdef QMMX_EARLY_DEPENDENTS
#define QMMG_EARLY_DEPENDENTS QMMX_EARLY_DEPENDENTS
#endif
// And the residual and QKV products of those steps (qmmx_{format}_4_{1,3}):
// the same code as the qmma module's qmmh_{format}_4_{1,3}, placed apart
// (run 286: 32 int4 sequences +0.4%).
// QMMX_DRY (measurements, results meaningless): qmma_group.cu's QMMG_DRY for
// this module's products alone.
#ifdef QMMX_DRY
#define QMMG_DRY QMMX_DRY
#endif
// QMMX_COPY_BASE (default 1): qmma_group.cu's QMMG_COPY_BASE here; 0: the
// qmma module's copy code.
#ifndef QMMX_COPY_BASE
#define QMMX_COPY_BASE 1
#endif
#define QMMG_COPY_BASE QMMX_COPY_BASE
// QMMX_EPI (a mask, default 27): qmma_group.cu's QMMG_X_EPI in this module.
#ifndef QMMX_EPI
#define QMMX_EPI 27
#endif
#define QMMG_X_EPI QMMX_EPI
// QMMX_SWIGLU_OUT=0 (measurements): qmma_group.cu's QMMG_X_SWIGLU_OUT.
#ifdef QMMX_SWIGLU_OUT
#define QMMG_X_SWIGLU_OUT QMMX_SWIGLU_OUT
#endif
// QMMX_SPLIT_CEIL (measurements): qmma_group.cu's QMMG_SPLIT_CEIL in this
// module alone.
#ifdef QMMX_SPLIT_CEIL
#define QMMG_SPLIT_CEIL QMMX_SPLIT_CEIL
#endif
