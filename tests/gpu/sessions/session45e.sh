#!/usr/bin/env bash
# Session 45's fifth call: where the 32-sequence h→4h product's executed instructions go — ncu's per-SASS-instruction
# counts (SourceCounters: instructions executed, warp stall samples) of one launch of qmmx_0_4_2 in decode steps,
# for mapping onto the cubin's code here (run 315: 8.3 instructions an HMMA executed, 4.9 in the unrolled chunk loop).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmmx-*.cubin | grep c8fe37c6
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for k in qmmx_0_4_2 qmmx_0_4_1; do
  timeout 240 "$ncu" --clock-control none --cache-control none -k "regex:$k" --launch-skip 40 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
    "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 16 \
    --concurrency 32 >"$R/src-$k.csv" 2>"$R/src-$k.err" || tail -3 "$R/src-$k.err"
  wc -l "$R/src-$k.csv"; head -3 "$R/src-$k.csv" | cut -c1-400
done
