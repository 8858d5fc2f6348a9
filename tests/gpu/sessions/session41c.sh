#!/usr/bin/env bash
# Session 41's third call, on the build with the qmmx module (the 17–32-token f16 SwiGLU products as 7-pair wide
# groups on 16 warps, a module looked up after every other): 32 int4 sequences against CHATGLM_QMMX=0 (the qmma
# module's 8-pair kernels), three rounds alternating; batch-1 q4_0 and q8_0 (the qmma module's cubin should be
# byte-identical to session 40's: printed); 16 and 64 sequences; memory of int4 + an 8,192-token dialogue; every
# suite; a 32-sequence kernel timeline.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
for i in 1 2 3; do
  echo "round $i: 32 int4 sequences: qmmx $(bn X=1) | CHATGLM_QMMX=0 $(bn CHATGLM_QMMX=0); batch 1 q4_0 $(b1 X=1) $(b1 X=1)"
done
echo "batch 1 q8_0 $(DTYPE=q8_0 b1 X=1) $(DTYPE=q8_0 b1 X=1)"
for n in 16 64; do echo "$n int4 sequences: $(N=$n bn X=1)"; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
for t in qmma cuda cuda_generate chatglm_cuda-lib; do suite X=1 "$t"; done
PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R/prof" 2>&1 | grep -vE "^profile in" | head -36
