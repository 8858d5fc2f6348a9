#!/usr/bin/env bash
# Session 46's second call: why the 32-sequence q8_0 output layer (`qmmh_2_4_0`, ~106 µs of a 2.7 ms step, run
# 305: 2.7 TB/s where the f16 mat-vecs stream ~4) is as slow as it is — ncu's speed-of-light, pipe and stall
# figures of four launches in decode steps (caches kept), its per-SASS-instruction counts of one launch, and
# qmma_bench's full table.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
STALL_KERNELS=qmmh_2_4_0 STALL_SKIP=4 STALL_COUNT=4 STALL_CACHE=none bash tests/gpu/stall_profile.sh "$R"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
k=qmmh_2_4_0
timeout 240 "$ncu" --clock-control none --cache-control none -k "regex:$k" --launch-skip 6 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section MemoryWorkloadAnalysis --section SpeedOfLight \
  --page source --print-source sass --csv \
  "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 16 \
  --concurrency 32 >"$R/src-$k.csv" 2>"$R/src-$k.err" || tail -3 "$R/src-$k.err"
wc -l "$R/src-$k.csv"
timeout 240 "$ncu" --clock-control none --cache-control none -k "regex:$k" --launch-skip 6 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
  "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 16 \
  --concurrency 32 >"$R/sol-$k.txt" 2>&1 || tail -3 "$R/sol-$k.txt"
grep -E "Duration|Throughput|Memory|Block|Registers|Shared|Occupancy|Waves" "$R/sol-$k.txt" | head -60
timeout 120 "$BIN/qmma_bench" 2>&1 | tail -60
