#!/usr/bin/env bash
# Session 38's second call (after tests/gpu/run.sh build and tests/gpu/pack.sh, variants shipped in the kernel
# cache): batch-1 q4_0 decode under the default and B1 (default: stage_step's host loads before its wait), ROUNDS
# rounds alternating (default 3); each product alone and 32 int4 sequences under the default and B32 (default:
# wide SwiGLU groups of 8-unit chunks), two rounds; then SUITES_B1 under B1 and SUITES_B32 under B32.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
b1=${B1:-CHATGLM_NVRTC_DEFINES=STAGE_EARLY_LOADS=1}
b32=${B32:-CHATGLM_NVRTC_DEFINES=QMMG_WIDE_SWIGLU=1,QMMG_WIDE_CU=8}
out=${OUT:-$BIN/report}
mkdir -p "$out"
for _ in $(seq "${ROUNDS:-3}"); do
  for c in "" "$b1"; do
    # shellcheck disable=SC2086
    echo "${c:-default} batch 1 q4_0: $(env $c timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
      --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
  done
done
TESTS="" TEST_CASES="" CASES="$b32" ACTS=batched ROUNDS=2 QB=1 bash tests/gpu/quant_ab.sh
suites() { # case, suites
  for t in $2; do
    local s log
    s=$(date +%s)
    log="$out/t-$t-$(echo "$1" | tr -c 'A-Za-z0-9_\n' '_').log"
    # shellcheck disable=SC2086
    env $1 timeout 200 "$BIN/tests/$t" --test-threads=1 >"$log" 2>&1
    echo "$t under $1: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$log" | tail -1)"
    grep -E "FAILED|panicked" "$log" | head -5
  done
}
suites "$b1" "${SUITES_B1-cuda cuda_generate}"
suites "$b32" "${SUITES_B32-qmma}"
