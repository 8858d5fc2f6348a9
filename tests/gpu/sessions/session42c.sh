#!/usr/bin/env bash
# Session 42's third call: the qmmx module also taking the residual and QKV products of 17–32-token f16 steps, a
# split group's summing block requesting all its parts at once (QMMG_PARTS_AT_ONCE, set in that module alone),
# against the SwiGLU products alone there (CHATGLM_QMMX=2, the previous default) and the move without the batched
# loads (QMMG_PARTS_AT_ONCE=0, shipped in the kernel cache), three rounds alternating; batch 1; every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
P0=CHATGLM_NVRTC_DEFINES=QMMG_PARTS_AT_ONCE=0
for i in 1 2 3; do
  echo "round $i: 32 int4 sequences: default $(bn X=1) | SwiGLU alone $(bn CHATGLM_QMMX=2) | moved, parts one by one $(bn "$P0")"
done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1)"
suite X=1 qmma
suite X=1 cuda
suite X=1 cuda_generate
suite X=1 chatglm_cuda-lib
