#!/usr/bin/env bash
# Session 51's second call (after session50.sh on the same build, 070834a): the cuda suite by default (its
# greedy-fold test, and Gpu::open's side-by-side cubin read, prebuild.rs, on a shipped cache); 32 int4 sequences and
# batch-1 decode under the lookup orders that read +0.5% at 32 in run 329 but cost batch 1 0.9% then, when batch 1 sat
# at 755-757 (it reads 758-760 now); a timeline of the last-sums form (−19% in run 348) against the counted one.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
O=CHATGLM_CUDA_LOAD_ORDER
suite X=1 cuda
for i in 1 2 3; do
  echo "32: default $(bn X=1) | global-2 $(bn $O=global-2) | global-3 $(bn $O=global-3) | fold+global-2 $(bn $O=global-2 CHATGLM_GREEDY_FOLD=1)"
  echo "batch 1 q4_0: default $(b1 X=1) | global-2 $(b1 $O=global-2) | global-3 $(b1 $O=global-3)"
done
echo "batch 1 q8_0: default $(DTYPE=q8_0 b1 X=1) | global-2 $(DTYPE=q8_0 b1 $O=global-2) | global-3 $(DTYPE=q8_0 b1 $O=global-3)"
echo "16 / 64: default $(N=16 bn X=1) / $(N=64 bn X=1) | global-2 $(N=16 bn $O=global-2) / $(N=64 bn $O=global-2)"
timeline counted 12 X=1
timeline last 12 CHATGLM_NVRTC_DEFINES=QMMX_LAST_SUMS=1
