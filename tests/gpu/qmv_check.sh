#!/usr/bin/env bash
# The streamed one-token products (kernels/qmv.cu) checked and timed in one device call (after
# `tests/gpu/run.sh build` and `tests/gpu/pack.sh`, from the repository root; carry device-bin/pack.txz and
# device-bin/kcache.tgz):
#   tests/gpu/qmv_check.sh
# 1. one-token decode of each of DTYPES (default "q4_0 q8_0"), under each of VARIANTS (';'-separated
#    sets of space-separated environment assignments — several CHATGLM_NVRTC_DEFINES go comma-separated; default: CHATGLM_QMV=1 (the streamed kernels), CHATGLM_QMV=0 (qmma's own, the default) and
#    CHATGLM_QMMG_CARVEOUT=all), REPEAT rounds, after loading each variant's kernels once (WARMUP_LIMIT s);
# 2. the test suites TEST_SUITES (default "chatglm_cuda-lib qmma cuda_generate cuda"), each under a time limit;
# 3. QMMA_BENCH=1: qmma_bench (each product alone) under each variant.
# CONCURRENCY=32 adds that many int4 sequences (prompt 128, 256 new tokens each) to each variant's round.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
out=${OUT:-$BIN/report}
mkdir -p "$out"
# shellcheck source=tests/gpu/device_env.sh
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=${CHATGLM_TESTDATA:-$PWD/testdata} CHATGLM_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
# The first load of every kernel module (the shipped cache's cubins; with PTX the driver compiles here, ~110 s).
s=$(date +%s)
"$BIN/chatglm" bench --device cuda --synthetic tiny --prompt-len 4 --gen-len 1 >"$out/first-load.log" 2>&1
echo "first load (CHATGLM_KERNEL_FORMAT=$CHATGLM_KERNEL_FORMAT, rc $?): $(($(date +%s) - s)) s"
IFS=';' read -r -a variants <<<"${VARIANTS:-CHATGLM_QMV=1;CHATGLM_QMV=0;CHATGLM_QMMG_CARVEOUT=all}"
b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b"
# Each variant's kernels once before anything is timed: a CHATGLM_NVRTC_DEFINES variant whose kernels the shipped
# cache lacks (even `NAME=0` of a default: its source text differs) compiles here, ~4 min, which would otherwise eat
# its first timed run's limit (run 99 lost its baseline so).
for v in "${variants[@]}"; do
  s=$(date +%s)
  # shellcheck disable=SC2086
  env $v timeout "${WARMUP_LIMIT:-300}" "$BIN/chatglm" bench --device cuda --synthetic tiny --prompt-len 4 --gen-len 1 \
    >/dev/null 2>&1
  echo "kernels of $v (rc $?): $(($(date +%s) - s)) s"
done
for _ in $(seq "${REPEAT:-1}"); do
  for v in "${variants[@]}"; do
    for d in ${DTYPES:-q4_0 q8_0}; do
      log="$out/bench-$d-${v//[^A-Za-z0-9]/_}.log"
      # shellcheck disable=SC2086
      env $v timeout "${BENCH_LIMIT:-90}" $b --dtype "$d" --prompt-len 16 --gen-len "${GEN_LEN:-128}" --repeat 2 \
        >>"$log" 2>&1
      echo "== $d $v (rc $?): $(grep -E '^(decode|prefill)|rror|panick' "$log" | tail -n 4 | tr '\n' ' ')"
    done
    if [ -n "${CONCURRENCY:-}" ]; then
      log="$out/bench-concurrency-${v//[^A-Za-z0-9]/_}.log"
      # shellcheck disable=SC2086
      env $v timeout "${BENCH_LIMIT:-90}" $b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency "$CONCURRENCY" \
        >>"$log" 2>&1
      echo "== q4_0 x$CONCURRENCY $v (rc $?): $(grep -E '^batch|rror|panick' "$log" | tail -n 2 | tr '\n' ' ')"
    fi
  done
done
for t in ${TEST_SUITES:-chatglm_cuda-lib qmma cuda_generate cuda}; do
  [ -x "$BIN/tests/$t" ] || continue
  s=$(date +%s)
  timeout "${TEST_LIMIT:-300}" "$BIN/tests/$t" --test-threads=1 >"$out/test-$t.log" 2>&1
  echo "== tests $t (rc $?, $(($(date +%s) - s)) s): $(grep -E '^test result|FAILED|panicked' "$out/test-$t.log" | tr '\n' ' ' | cut -c1-600)"
done
if [ "${QMMA_BENCH:-0}" = 1 ] && [ -x "$BIN/qmma_bench" ]; then
  for v in "${variants[@]}"; do
    echo "== qmma_bench $v"
    # shellcheck disable=SC2086
    env $v timeout 120 "$BIN/qmma_bench" 2>&1 | tail -30
  done
fi
