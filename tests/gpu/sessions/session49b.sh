#!/usr/bin/env bash
# Session 49's second call: the last-sums form with compact code (one part at a time, rolled; run 346's form,
# four parts at once unrolled with their sentinel checks, lost 30%: code fetched cold once a launch) against the
# counted form (QMMX_LAST_SUMS=0), alternating; the generation suite under both; batch 1; a timeline of each.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
suite X=1 cuda_generate
suite "$D=QMMX_LAST_SUMS=0" cuda_generate
for i in 1 2 3 4; do echo "32: last $(bn X=1) | counted $(bn $D=QMMX_LAST_SUMS=0)"; done
echo "batch 1 q4_0 $(b1 X=1); 16: $(N=16 bn X=1) / counted $(N=16 bn $D=QMMX_LAST_SUMS=0)"
for v in 1 0; do timeline last-sums-$v 12 "$D=QMMX_LAST_SUMS=$v"; done
