#!/usr/bin/env bash
# Session 34's device call (from the repository root, after tests/gpu/run.sh build with KERNEL_CACHE_VARIANTS naming
# the VARIANTS' defines, and tests/gpu/pack.sh): the grouped products at 32 tokens under each of VARIANTS
# (';'-separated CHATGLM_NVRTC_DEFINES values, e.g. "QMMG_FAST_COPY=0;QMMG_CU=4,QMMG_KW=1") against the
# default — `qmma_bench` and 32 int4 sequences with f16 activations, ROUNDS rounds (default 2) — then the `qmma` suite
# under each of QMMA_VARIANTS (default: VARIANTS; the default kernels only with QMMA_DEFAULT=1), then the suites named
# in SUITES (default none). Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
export OUT=${OUT:-device-bin/report}
cases() { # "A;B" -> "CHATGLM_NVRTC_DEFINES=A;CHATGLM_NVRTC_DEFINES=B"
  local v out="" IFS=';'
  for v in $1; do out+="${out:+;}CHATGLM_NVRTC_DEFINES=$v"; done
  echo "$out"
}
date
TESTS="" CASES=$(cases "${VARIANTS:-}") ACTS=batched ROUNDS=${ROUNDS:-2} tests/gpu/quant_ab.sh
date
TESTS="${QMMA_DEFAULT:+qmma}" TEST_CASES=$(cases "${QMMA_VARIANTS-${VARIANTS:-}}") QB=0 CASES='' ROUNDS=0 tests/gpu/quant_ab.sh
date
if [ -n "${SUITES:-}" ]; then
  TESTS="$SUITES" QB=0 CASES='' ROUNDS=0 tests/gpu/quant_ab.sh
  date
fi
