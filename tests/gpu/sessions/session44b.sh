#!/usr/bin/env bash
# Session 44's second call: the 32-sequence CUPTI kernel records themselves (for the step boundary's gaps).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R" >/dev/null 2>&1
xz -c /tmp/ktrace-q4_0-batched32.csv > "$R/ktrace32.csv.xz"; ls -la "$R"
