#!/usr/bin/env bash
# Session 44's fourth call: the CUPTI timeline of 32 int4 sequences under QMMX_PUSH=1 (run 299's −7.4%): which
# kernels lost. The kernel records come back (ktrace32-push.csv.xz).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
CHATGLM_LOG=debug CHATGLM_NVRTC_DEFINES=QMMX_PUSH=1 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 8 --concurrency 32 > "$R/push-log.txt" 2>&1; grep -c "clusters of" "$R/push-log.txt"
grep "clusters of" "$R/push-log.txt" | sort | uniq -c | head; tail -3 "$R/push-log.txt"
CHATGLM_NVRTC_DEFINES=QMMX_PUSH=1 PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R" >/dev/null 2>&1
xz -c /tmp/ktrace-q4_0-batched32.csv > "$R/ktrace32-push.csv.xz"
