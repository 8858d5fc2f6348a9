#!/usr/bin/env bash
# Session 43's third call: the qmmx module's once-a-launch code kept compact (QMMX_EPI, a mask; default 7): 1 the
# SwiGLU epilogue (run 292's default), 2 a row's last partial chunk a unit at a time, 4 the residual products'
# epilogue rolled (current rows staged by cp.async, the fold's warp sums in the loop, the part's publishing loop).
# 32 int4 sequences, two rounds alternating; the qmma and cuda suites on the default.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
for i in 1 2; do
  echo "round $i: default(7) $(bn X=1) | EPI=1 $(bn "$D=QMMX_EPI=1") | EPI=3 $(bn "$D=QMMX_EPI=3") | EPI=5 $(bn "$D=QMMX_EPI=5")"
done
suite X=1 qmma
suite X=1 cuda
