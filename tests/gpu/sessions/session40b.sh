#!/usr/bin/env bash
# Session 40's final call, on the committed defaults (d09ebdf and later: QMMG_WIDE_PAIRS_4 off): batch-1 q4_0 and
# q8_0 decode, 32 int4 sequences, the memory of int4 + an 8,192-token dialogue (f16 and q8_0 KV), every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for i in 1 2 3; do
  echo "round $i: batch 1 q4_0 $(b1) $(b1); q8_0 $(DTYPE=q8_0 b1); 32 int4 sequences $(bn)"
done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
for t in qmma cuda cuda_generate chatglm_cuda-lib; do
  s=$(date +%s)
  timeout 200 "$BIN/tests/$t" --test-threads=1 >"$R/t-$t.log" 2>&1
  echo "$t: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$R/t-$t.log" | tail -1)"
  grep -E "FAILED|panicked" "$R/t-$t.log" | head -5
done
