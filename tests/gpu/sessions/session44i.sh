#!/usr/bin/env bash
# Session 44's ninth call: the 32-sequence CUPTI kernel records on run 304's default (for the critical path by kernel).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R" >/dev/null 2>&1
xz -c /tmp/ktrace-q4_0-batched32.csv > "$R/ktrace32.csv.xz"
CHATGLM_NVRTC_DEFINES=SHORT_EARLY_TILES=0 PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R" >/dev/null 2>&1
xz -c /tmp/ktrace-q4_0-batched32.csv > "$R/ktrace32-0.csv.xz"
