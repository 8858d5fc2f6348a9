#!/usr/bin/env bash
# Session 51's third call: does run 349's +0.35% of `global-2` at 32 sequences come from the qmmx module's own order
# (under global-2 each format's SwiGLU product is looked up ahead of its other qmmx products)? The qmmx module sits
# behind every kernel a one-token step runs, so reordering it alone (CHATGLM_CUDA_QMMX_ORDER, new) cannot move batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
Q=CHATGLM_CUDA_QMMX_ORDER
for i in 1 2 3 4; do
  echo "32: default $(bn X=1) | swiglu-first $(bn $Q=swiglu-first) | step $(bn $Q=step) | global-2 $(bn CHATGLM_CUDA_LOAD_ORDER=global-2)"
done
for i in 1 2; do
  echo "batch 1 q4_0: default $(b1 X=1) | swiglu-first $(b1 $Q=swiglu-first) | step $(b1 $Q=step)"
done
echo "16 / 64: swiglu-first $(N=16 bn $Q=swiglu-first) / $(N=64 bn $Q=swiglu-first) | step $(N=16 bn $Q=step) / $(N=64 bn $Q=step)"
