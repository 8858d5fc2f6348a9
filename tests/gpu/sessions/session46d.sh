#!/usr/bin/env bash
# Session 46's fourth call: the embedding gather of a grouped f16 step folding the first layer's norm
# (kernels/embed_fold.cu, new default: the rows also written as the first QKV product's folded activations, so no
# quantize_x launch sits between the gather and it) against the plain gather (CHATGLM_EMBED_FOLD=0), and the lean
# chunk loop (QMMX_LEAN_LOOP=1) on top, four rounds alternating at 32 int4 sequences; 16 and 64 sequences; batch 1;
# the cuda (its norm-fold test now counts the gather's fold), cuda_generate and qmma suites; int4 + an 8K dialogue.
# (The embedding fold was reverted after this run, 11,940 against 11,938 tok/s: the tree no longer has it.)
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin /tmp/chatglm-kernels/elementwise-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3 4; do
  echo "round $i: 32: fold $(bn X=1) | no fold $(bn CHATGLM_EMBED_FOLD=0) | fold + lean $(bn "$D=QMMX_LEAN_LOOP=1")"
done
for n in 16 64; do echo "$n: fold $(N=$n bn X=1) | no fold $(N=$n bn CHATGLM_EMBED_FOLD=0)"; done
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
for s in cuda cuda_generate qmma; do suite X=1 $s; done
grep -E "hidden .*step [0-9]+ max" "$R/t-cuda-X_1.log" | head -12
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
