#!/usr/bin/env bash
# Session 38's third call (after tests/gpu/run.sh build and tests/gpu/pack.sh): the new defaults (wide SwiGLU groups
# of 8-unit chunks, stage_step's early host loads) against V (default: the narrow SwiGLU groups, shipped in the
# kernel cache): each product alone at 32 tokens, 32 int4 sequences and batch-1 q4_0 decode, ROUNDS rounds
# alternating (default 2); batch-1 q8_0; every suite on the defaults (SUITES=0: not); the int4 + 8,192-token memory
# probe (MEM=0: not).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
v=${V:-CHATGLM_NVRTC_DEFINES=QMMG_WIDE_SWIGLU=0}
out=${OUT:-$BIN/report}
mkdir -p "$out"
TESTS="" TEST_CASES="" CASES="$v" ACTS=batched ROUNDS=${ROUNDS:-2} QB=1 bash tests/gpu/quant_ab.sh
for _ in $(seq "${ROUNDS:-2}"); do
  for c in "" "$v"; do
    # shellcheck disable=SC2086
    echo "${c:-default} batch 1 q4_0: $(env $c timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
      --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
  done
done
echo "default batch 1 q8_0: $(timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q8_0 \
  --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
if [ "${SUITES:-1}" != 0 ]; then
  TESTS="${SUITE_LIST:-qmma cuda cuda_generate chatglm_cuda-lib}" CASES="" QB=0 ROUNDS=0 bash tests/gpu/quant_ab.sh
fi
if [ "${MEM:-1}" != 0 ]; then
  tests/gpu/mem_probe.sh q4_0-8k "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
    --prompt-len 8192 --gen-len 8 2>&1 | tail -3
fi
