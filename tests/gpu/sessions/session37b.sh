#!/usr/bin/env bash
# Session 37's grouped-product variants in one device call (after tests/gpu/run.sh build with their cubins in the
# kernel cache, and tests/gpu/pack.sh): QMMG_TW=2 (two row tiles a warp), QMMG_COPY_BASES=1 (a whole chunk's copies
# from per-thread bases) and both, against the default — each product alone at 32 tokens, 32 int4 sequences
# (tests/gpu/quant_ab.sh, f16 activations, two rounds), batch-1 q4_0 decode — then the qmma suite under both.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
v="CHATGLM_NVRTC_DEFINES=QMMG_TW=2;CHATGLM_NVRTC_DEFINES=QMMG_COPY_BASES=1;CHATGLM_NVRTC_DEFINES=QMMG_COPY_BASES=1,QMMG_TW=2"
TESTS="" TEST_CASES="" CASES=${CASES:-$v} ACTS=batched ROUNDS=${ROUNDS:-2} QB=1 bash tests/gpu/quant_ab.sh
IFS=';' read -r -a cases <<<"${CASES:-$v}"
for c in "" "${cases[@]}"; do
  # shellcheck disable=SC2086
  echo "${c:-default} batch 1 q4_0: $(env $c timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
    --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
done
[ "${SUITE:-1}" != 0 ] && TESTS="" TEST_CASES="${SUITE_CASES:-CHATGLM_NVRTC_DEFINES=QMMG_COPY_BASES=1,QMMG_TW=2}" \
  CASES="" QB=0 ROUNDS=0 bash tests/gpu/quant_ab.sh
