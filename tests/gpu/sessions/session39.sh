#!/usr/bin/env bash
# The split groups' parts summed in a cluster's shared memory (QMMG_CLUSTER_SUMS=1, shipped in the kernel cache)
# against the default in one device call (after tests/gpu/run.sh build with
# KERNEL_CACHE_VARIANTS='QMMG_CLUSTER_SUMS=1' and tests/gpu/pack.sh): the qmma suite under it first (its products
# must equal the L2 path's bit for bit), then each product alone at 32 tokens, 32 int4 sequences (ROUNDS rounds,
# default 2, alternating) and batch-1 q4_0 decode; then the cuda and cuda_generate suites under it (SUITES=0: not).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
v=${VARIANT:-CHATGLM_NVRTC_DEFINES=QMMG_CLUSTER_SUMS=1}
TESTS="" TEST_CASES="$v" CASES="$v" ACTS=batched ROUNDS=${ROUNDS:-2} QB=1 bash tests/gpu/quant_ab.sh
for c in "" "$v" "" "$v"; do
  # shellcheck disable=SC2086
  echo "${c:-default} batch 1 q4_0: $(env $c timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
    --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
done
if [ "${SUITES:-1}" != 0 ]; then
  for t in cuda cuda_generate; do
    s=$(date +%s)
    # shellcheck disable=SC2086
    env $v timeout 200 "$BIN/tests/$t" --test-threads=1 >"${OUT:-$BIN/report}/t-$t-variant.log" 2>&1
    echo "$t under $v: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "${OUT:-$BIN/report}/t-$t-variant.log" | tail -1)"
    grep -E "FAILED|panicked" "${OUT:-$BIN/report}/t-$t-variant.log" | head -5
  done
fi
