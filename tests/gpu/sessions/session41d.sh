#!/usr/bin/env bash
# Session 41's fourth call (run 281), on the build of 43a7e50 — reverted after it, the skew measured 8% slower — where the qmmx module also takes the residual and QKV products of 17–32-token
# f16 steps with a split group's summing block a chunk ahead (QMMG_SKEW): 32 int4 sequences against CHATGLM_QMMX=2
# (the SwiGLU products alone, run 280's default) and CHATGLM_QMMX=0, three rounds alternating; batch-1 q4_0 and q8_0
# (the qmma module unchanged: its cubin's hash printed); 16 and 64 sequences; the qmma, cuda, cuda_generate and lib
# suites; a 32-sequence kernel timeline.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
for i in 1 2 3; do
  echo "round $i: 32 int4 sequences: qmmx $(bn X=1) | QMMX=2 $(bn CHATGLM_QMMX=2) | QMMX=0 $(bn CHATGLM_QMMX=0);" \
    "batch 1 q4_0 $(b1 X=1)"
done
echo "batch 1 q8_0 $(DTYPE=q8_0 b1 X=1)"
for n in 16 24 64; do echo "$n int4 sequences: $(N=$n bn X=1)"; done
for t in qmma cuda cuda_generate chatglm_cuda-lib; do suite X=1 "$t"; done
PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R/prof" 2>&1 | grep -vE "^profile in" | tail -16
