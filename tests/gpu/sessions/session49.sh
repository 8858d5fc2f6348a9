#!/usr/bin/env bash
# Session 49's first call: a split group summed by whichever of its blocks counts itself last (the qmmx module's
# QMMX_LAST_SUMS=1, new default: no block waits for another's chunks, no part's stores wait for a release; the last
# block requests QMMG_LAST_PB parts at once) against the counted form (QMMX_LAST_SUMS=0: the previous cubin, byte
# for byte) and against 2 parts at once; the suites under each; batch 1; 16 / 64 sequences; int4 + an 8K dialogue;
# a timeline of the 32-sequence step.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
for s in qmma cuda_generate cuda; do suite X=1 $s; done
for s in qmma cuda_generate; do suite "$D=QMMG_LAST_PB=2" $s; done
suite "$D=QMMX_LAST_SUMS=0" cuda_generate
for i in 1 2 3 4; do
  echo "32: last $(bn X=1) | last PB=2 $(bn $D=QMMG_LAST_PB=2) | counted $(bn $D=QMMX_LAST_SUMS=0)"
done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1), q8_0 $(DTYPE=q8_0 b1 X=1); 16: $(N=16 bn X=1) / counted $(N=16 bn $D=QMMX_LAST_SUMS=0); 64: $(N=64 bn X=1) / counted $(N=64 bn $D=QMMX_LAST_SUMS=0)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
for v in 1 0; do timeline last-sums-$v 24 "$D=QMMX_LAST_SUMS=$v"; done
