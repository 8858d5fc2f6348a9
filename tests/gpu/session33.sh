#!/usr/bin/env bash
# Session 33's device call (from the repository root, after tests/gpu/run.sh build with
# KERNEL_CACHE_VARIANTS naming the VARIANTS' defines, and tests/gpu/pack.sh): the grouped products at 32 tokens
# under each of VARIANTS (';'-separated CHATGLM_NVRTC_DEFINES values, e.g. "QMMG_FAST_COPY=0;QMMG_CU=4,QMMG_KW=1") against
# the default — `qmma_bench` and 32 int4 sequences, ROUNDS rounds — first, then the `qmma` suite under the default
# and each of QMMA_VARIANTS (default: VARIANTS), then `cuda_generate` and `cuda` on the default. Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export OUT=${OUT:-device-bin/report}
cases() { # "A;B" -> "CHATGLM_NVRTC_DEFINES=A;CHATGLM_NVRTC_DEFINES=B"
  local v out="" IFS=';'
  for v in $1; do out+="${out:+;}CHATGLM_NVRTC_DEFINES=$v"; done
  echo "$out"
}
date
TESTS="" CASES=$(cases "${VARIANTS:-}") ACTS=batched ROUNDS=${ROUNDS:-1} tests/gpu/quant_ab.sh
date
TESTS="qmma" TEST_CASES=$(cases "${QMMA_VARIANTS-${VARIANTS:-}}") QB=0 CASES='' ROUNDS=0 tests/gpu/quant_ab.sh
date
TESTS="cuda_generate cuda" QB=0 CASES='' ROUNDS=0 tests/gpu/quant_ab.sh
date
