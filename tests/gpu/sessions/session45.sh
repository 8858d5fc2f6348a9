#!/usr/bin/env bash
# Session 45's first call: the qmmx module's SwiGLU products on half-pair groups (QMMX_HALF_PAIR=1, new default:
# 6.5 pairs a group, ChatGLM2-6B's h→4h as 132 groups on 132 SMs, 26 units a scheduler a chunk instead of 28)
# against 7-pair groups (=0), three rounds alternating at 32 int4 sequences; qmma_bench's 32-token h→4h under both;
# the qmma, cuda and cuda_generate suites under the default; batch 1 q4_0.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
suite X=1 qmma
for i in 1 2 3; do echo "round $i: 32: half pairs $(bn X=1) | 7 pairs $(bn "$D=QMMX_HALF_PAIR=0")"; done
echo "qmma_bench, half pairs:"; timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | grep -E "4h"
echo "qmma_bench, 7 pairs:"; env "$D=QMMX_HALF_PAIR=0" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | grep -E "4h"
for s in cuda cuda_generate; do suite X=1 $s; done
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1)"
