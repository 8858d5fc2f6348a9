#!/usr/bin/env bash
# Session 43's second call: the qmmx module's SwiGLU epilogue (h→4h at 17–32 f16 tokens) with rolled loops and the
# fold's RMSNorm applied inside them (QMMX_EPI=1, the new default) against the unrolled loops and a pass of its own
# (QMMX_EPI=0); and without the f32 rows beside the hand-off (QMMX_SWIGLU_OUT=0, measurement only). 32 int4
# sequences, three rounds alternating; batch 1 once; the qmma and cuda suites on the default.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do
  echo "round $i: default $(bn X=1) | EPI=0 $(bn "$D=QMMX_EPI=0") | no f32 rows $(bn "$D=QMMX_SWIGLU_OUT=0")"
done
echo "batch 1 q4_0: $(b1 X=1)"
suite X=1 qmma
suite X=1 cuda
