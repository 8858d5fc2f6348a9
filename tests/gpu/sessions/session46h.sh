#!/usr/bin/env bash
# Session 46's eighth call: the qmma module's grouped products with as many ring stages as fit, up to 4 (new
# default: QMMG_STAGES=4 in that module, the shapes with room taking a fourth — its cubin expected byte-identical to
# run 325's QMMG_STAGES=4 variant, bf7eef24…), and with the 9–16-token f16 products kept at 3 (QMMG_HX2_STAGES=3:
# run 326 lost 1.2% at 16 sequences): batch 1 q4_0 alternating three rounds, 16 and 32 sequences, q8_0; the qmma,
# cuda and cuda_generate suites under the default; int4 + an 8K dialogue.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do echo "batch 1 q4_0: default $(b1 X=1) | hx2 3 $(b1 "$D=QMMG_HX2_STAGES=3")"; done
for i in 1 2; do echo "16: default $(N=16 bn X=1) | hx2 3 $(N=16 bn "$D=QMMG_HX2_STAGES=3")"; done
for i in 1 2; do echo "32: default $(bn X=1) | hx2 3 $(bn "$D=QMMG_HX2_STAGES=3")"; done
echo "64: default $(N=64 bn X=1); q8_0 batch 1: $(DTYPE=q8_0 b1 X=1)"
for s in qmma cuda cuda_generate; do suite X=1 $s; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
