#!/usr/bin/env bash
# Quantized-product comparisons in one device call (after tests/gpu/run.sh build and tests/gpu/pack.sh; from the
# repository root): the GPU suites (TESTS, default "qmma cuda cuda_generate chatglm_cuda-lib"; TEST_CASES: the
# qmma suite again under each of these cases), then under the default and each of CASES (';'-separated cases, each
# environment assignments such as "CHATGLM_NVRTC_DEFINES=QMMG_FENCE=1" for a kernel
# variant shipped in the kernel cache): each product alone at 32 tokens (qmma_bench, QB=0: not) and 32 int4
# sequences (prompt 128, 256 new tokens) in both activation forms (ACTS, default "q8 batched"), ROUNDS rounds (default 2). Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
out=${OUT:-$BIN/report}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
suite() { # case, suite
  local s log=$out/t-$2${1:+-$(echo "$1" | tr -c 'A-Za-z0-9_\n' '_')}.log
  s=$(date +%s)
  # shellcheck disable=SC2086
  env $1 timeout 300 "$BIN/tests/$2" --test-threads=1 >"$log" 2>&1
  echo "$2 ${1:-default} rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$log" | tail -1)"
  grep -E "FAILED|panicked|relative error" "$log" | head -8
}
for t in ${TESTS-qmma cuda cuda_generate chatglm_cuda-lib}; do suite "" "$t"; done
IFS=';' read -r -a tcases <<<"${TEST_CASES:-}"
for c in "${tcases[@]}"; do suite "$c" qmma; done
IFS=';' read -r -a cases <<<"${CASES:-}"
cases=("" "${cases[@]}")
if [ "${QB:-1}" != 0 ]; then
  for c in "${cases[@]}"; do
    echo "== qmma_bench ${c:-default}"
    # shellcheck disable=SC2086
    env $c timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 "
  done
fi
b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32"
for _ in $(seq "${ROUNDS:-2}"); do
  for c in "${cases[@]}"; do
    for a in ${ACTS:-q8 batched}; do
      # shellcheck disable=SC2086
      echo "${c:-default} $a: $(env $c CHATGLM_GPU_ACTIVATIONS=$a timeout 90 $b 2>&1 | grep '^batch')"
    done
  done
done
