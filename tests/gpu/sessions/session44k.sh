#!/usr/bin/env bash
# Session 44's eleventh call: session44j.sh's stamps alone (its stamp line had the define unset).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
env CHATGLM_NVRTC_DEFINES=SHORT_STAMPS=2 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 20 --concurrency 32 >"$R/stamps.txt" 2>&1
grep -c SHS "$R/stamps.txt"
