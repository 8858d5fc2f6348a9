#!/usr/bin/env bash
# Session 45's third call: the qmmx products' weights one or two chunks beyond their ring's newest started towards
# L2 (QMMX_L2_AHEAD: the wide SwiGLU groups, whose ring holds two stages; QMMX_L2_AHEAD_N: the narrow residual and
# QKV groups, three stages), and h→4h's wide groups on chunks of 4 units (QMMG_WIDE_CU=4: four stages of half the
# size), three rounds alternating at 32 int4 sequences; qmma_bench's 32-token int4 h→4h and 4h→h under each.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do
  echo "round $i: 32: default $(bn X=1) | W1 $(bn "$D=QMMX_L2_AHEAD=1") | W2 $(bn "$D=QMMX_L2_AHEAD=2")" \
    "| N1 $(bn "$D=QMMX_L2_AHEAD_N=1") | W1 N1 $(bn "$D=QMMX_L2_AHEAD=1 QMMX_L2_AHEAD_N=1")" \
    "| CU4 $(bn "$D=QMMG_WIDE_CU=4")"
done
for v in X=1 "$D=QMMX_L2_AHEAD=1" "$D=QMMX_L2_AHEAD_N=1" "$D=QMMG_WIDE_CU=4"; do
  echo "qmma_bench under $v:"; env "$v" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 +f16" | grep -E "^int4.*4h"
done
echo "batch 1 q4_0: $(b1 X=1)"
