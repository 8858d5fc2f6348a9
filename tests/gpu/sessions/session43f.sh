#!/usr/bin/env bash
# Session 43's sixth call: more of the qmmx module's once-a-launch code compact, as QMMX_EPI bits on top of the
# default 3: 4 the residual products' epilogue in two halves (a rolled loop of two, the second half's values shifted
# into the first's registers, the fold's warp sums of a half together), 8 QKV without the bias loads its RoPE-table
# epilogue never reads. 32 int4 sequences, two rounds alternating; the cuda suite under 15
# between them (its bit test holds the residual products to the qmma module's bits).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
round() { echo "round $1: default(3) $(bn X=1) | 7 $(bn "$D=QMMX_EPI=7") | 11 $(bn "$D=QMMX_EPI=11") | 15 $(bn "$D=QMMX_EPI=15")"; }
round 1
suite "$D=QMMX_EPI=15" cuda
round 2
