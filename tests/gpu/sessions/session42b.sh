#!/usr/bin/env bash
# Session 42's second call (session42.sh's bundle; clusters off throughout, run 284 measured them): the decode
# attention at 32 sequences on fewer SMs — its short kernel on 4-warp blocks (two an SM:
# CHATGLM_DECODE_SHORT_WARPS=4) or the split tensor-core kernel (CHATGLM_DECODE_SHORT=0) — so that the dense
# product's blocks find more SMs free to start on, two rounds alternating.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
export CHATGLM_QMMG_CLUSTER=0
for i in 1 2; do
  echo "round $i: 32 int4 sequences: default $(bn X=1) | 4 warps $(bn CHATGLM_DECODE_SHORT_WARPS=4) | split kernel $(bn CHATGLM_DECODE_SHORT=0)"
done
