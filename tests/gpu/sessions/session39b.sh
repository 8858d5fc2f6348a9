#!/usr/bin/env bash
# Session 39's second call: the run-time settings of the decode step swept once more on the final build (they were
# last swept many sessions and code placements ago), each against the default run just before it — batch-1 q4_0
# decode (--prompt-len 8 --gen-len 128 --repeat 2) and 32 int4 sequences — then the defaults again and every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
b1() {  # batch-1 q4_0 decode under the settings given
  env "$@" timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 8 \
    --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'
}
b32() {  # 32 int4 sequences under the settings given
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
for v in CHATGLM_ARGMAX_SLICES=16 CHATGLM_ARGMAX_SLICES=64 CHATGLM_DECODE_SHORT_SUBS=2 CHATGLM_DECODE_SHORT_SUBS=8 \
  CHATGLM_DECODE_SHORT_WARPS=4 CHATGLM_QMMA_GRID=fill CHATGLM_QMMA_GRID=even CHATGLM_QMMA_BLOCKS_PER_SM=1 \
  CHATGLM_QMMA_BLOCKS_PER_SM=2 CHATGLM_QMMA_PREFETCH_NEXT=4194304 CHATGLM_CUDA_LOAD_ORDER=reverse \
  CHATGLM_CUDA_QUEUE_STEPS=0; do
  echo "batch 1 q4_0: default $(b1 X=1) | $v $(b1 "$v")"
done
for v in CHATGLM_QMMG_PREFETCH_NEXT=0 CHATGLM_QMMG_PREFETCH_NEXT=41943040 CHATGLM_QMMG_CARVEOUT=0 \
  CHATGLM_ARGMAX_SLICES=64 CHATGLM_DECODE_SHORT_SUBS=8; do
  echo "32 int4 sequences: default $(b32 X=1) | $v $(b32 "$v")"
done
for i in 1 2 3; do echo "defaults, round $i: batch 1 q4_0 $(b1 X=1), q8_0 $(env timeout 90 "$BIN/chatglm" bench \
  --device cuda --synthetic chatglm2-6b --dtype q8_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' |
  sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'), 32 int4 sequences $(b32 X=1)"; done
if [ "${SUITES:-1}" != 0 ]; then
  for t in qmma cuda cuda_generate chatglm_cuda-lib; do
    s=$(date +%s)
    timeout 200 "$BIN/tests/$t" --test-threads=1 >"$R/t-$t.log" 2>&1
    echo "$t: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$R/t-$t.log" | tail -1)"
    grep -E "FAILED|panicked" "$R/t-$t.log" | head -5
  done
fi
