#!/usr/bin/env bash
# Session 38's confirmation of the committed defaults (after tests/gpu/run.sh build and tests/gpu/pack.sh): batch-1
# q4_0 decode ROUNDS times (default 3), q8_0 once, 32 int4 sequences twice, the cuda_generate suite, and the int4 +
# 8,192-token memory probes with the f16 and the q8_0 KV cache.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
for _ in $(seq "${ROUNDS:-3}"); do
  echo "batch 1 q4_0: $(timeout 90 "${b[@]}" --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
done
echo "batch 1 q8_0: $(timeout 90 "${b[@]}" --dtype q8_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
for _ in 1 2; do
  echo "32 int4: $(timeout 90 "${b[@]}" --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep '^batch')"
done
timeout 120 "$BIN/tests/cuda_generate" --test-threads=1 2>&1 | grep -E '^test result|FAILED'
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
