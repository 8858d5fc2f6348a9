#!/usr/bin/env bash
# Session 46's fifth call: is the 32-sequence step bound by the host? (Runs 320–322: the lean chunk loop, 8–24
# argmax slices and the embedding fold each left 32 int4 sequences where they were.) `chatglm bench` now prints the
# host's time launching each batched step (queued one step ahead): the full batch lines at 16, 32 and 64 sequences.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
nproc; cat /proc/cpuinfo | grep "model name" | head -1
for n in 32 32 16 64 32; do
  timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency $n 2>&1 | grep -E '^batch '
done
