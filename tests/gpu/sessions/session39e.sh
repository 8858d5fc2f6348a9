#!/usr/bin/env bash
# Session 39's final call, on the committed defaults (the grouped products' next-product prefetch off, groups on
# whole blocks from 25 tokens): three rounds of batch-1 q4_0 and q8_0 decode and 32 int4 sequences, each against
# the old defaults (CHATGLM_QMMG_PREFETCH_NEXT=25165824 CHATGLM_QMMG_SPLIT=aligned) in the same round; 16 and 64
# sequences; every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OLD=(CHATGLM_QMMG_PREFETCH_NEXT=25165824 CHATGLM_QMMG_SPLIT=aligned)
b1() {  # batch-1 decode of DTYPE under the settings given
  env "$@" timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype "${DTYPE:-q4_0}" \
    --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'
}
bn() {  # N int4 sequences under the settings given
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency "${N:-32}" 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
for i in 1 2 3; do
  echo "round $i (new | old): batch 1 q4_0 $(b1 X=1) | $(b1 "${OLD[@]}"); q8_0 $(DTYPE=q8_0 b1 X=1)" \
    "| $(DTYPE=q8_0 b1 "${OLD[@]}"); 32 int4 sequences $(bn X=1) | $(bn "${OLD[@]}")"
done
for n in 16 64; do echo "$n int4 sequences (new | old): $(N=$n bn X=1) | $(N=$n bn "${OLD[@]}")"; done
# Either side of the split rule's boundary (3 token tiles: aligned; 6: whole groups).
for n in 24 48; do
  echo "$n int4 sequences (new | split aligned | split auto):" \
    "$(N=$n bn X=1) | $(N=$n bn CHATGLM_QMMG_SPLIT=aligned) | $(N=$n bn CHATGLM_QMMG_SPLIT=auto)"
done
if [ "${SUITES:-1}" != 0 ]; then
  for t in qmma cuda cuda_generate chatglm_cuda-lib; do
    s=$(date +%s)
    timeout 200 "$BIN/tests/$t" --test-threads=1 >"$R/t-$t.log" 2>&1
    echo "$t: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$R/t-$t.log" | tail -1)"
    grep -E "FAILED|panicked" "$R/t-$t.log" | head -5
  done
fi
