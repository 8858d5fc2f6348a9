#!/usr/bin/env bash
# Session 37's device call (from the repository root, after tests/gpu/run.sh build, bench/marlin/build.sh and
# tests/gpu/pack.sh chatglm qmma_bench kernel_trace.so marlin_peer): the state-of-the-art int4 peer beside ours.
#   1. Marlin (bench/marlin/harness.cu) on ChatGLM2-6B's product shapes at 1, 8, 16 and 32 tokens;
#   2. our products alone at 1, 8 and 32 tokens (qmma_bench), the same call and card;
#   3. batch-1 q4_0 / q8_0 decode and 32 int4 sequences through `chatglm bench`, ROUNDS rounds (default 2);
#   4. the CUPTI kernel timelines of batch-1 q4_0 decode and of 32 int4 sequences (tests/gpu/profile_quant.sh).
# Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
OUT=${OUT:-$BIN/report}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
if [ -x "$BIN/marlin_peer" ]; then
  timeout 180 "$BIN/marlin_peer" 1 8 16 32 2>&1 | tee "$OUT/marlin.txt"
fi
timeout 240 "$BIN/qmma_bench" 2>&1 | tee "$OUT/qmma_bench.txt"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
for r in $(seq "${ROUNDS:-2}"); do
  for d in q4_0 q8_0; do
    echo "round $r $d batch 1: $(timeout 120 "${b[@]}" --dtype "$d" --prompt-len 8 --gen-len 128 --repeat 2 2>&1 |
      grep -E '^decode  ' | tr '\n' ' ')"
  done
  echo "round $r q4_0 32 sequences: $(timeout 150 "${b[@]}" --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 |
    grep -E '^batch' | tr '\n' ' ')"
done 2>&1 | tee "$OUT/bench.txt"
[ "${TIMELINE:-1}" != 0 ] && PROFILE_DTYPES=q4_0 PROFILE_CONCURRENCY=32 timeout 200 tests/gpu/profile_quant.sh "$OUT" >/dev/null 2>&1
grep -v "^$" "$OUT/profile.txt" 2>/dev/null | head -80
