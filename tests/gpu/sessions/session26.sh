#!/usr/bin/env bash
# Session 26's device call (from the repository root, after tests/gpu/run.sh build and tests/gpu/pack.sh): the GPU
# suites, each product alone and 32 int4 sequences under the defaults and CASES (tests/gpu/quant_ab.sh; the
# qmma suite again under each of TEST_CASES), then batch-1 decode (q4_0, q8_0) under each of VARIANTS
# (';'-separated environment assignments; run 183 measured CHATGLM_QMMA_PREFETCH_FAR, since removed), ROUNDS rounds.
# DECODE_FIRST=1: the decode runs first, so a suite that stalls under a variant (run 223) cannot take their time.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
out=${OUT:-device-bin/report}
export OUT=$out
suites() { QB=${QB:-1} ROUNDS=${ROUNDS:-2} timeout "${AB_LIMIT:-420}" tests/gpu/quant_ab.sh; }
decode() {
  local BIN=device-bin
  # shellcheck source=tests/gpu/device_env.sh
  . tests/gpu/device_env.sh
  IFS=';' read -r -a variants <<<"${VARIANTS:-}"
  variants=("" "${variants[@]}")
  for _ in $(seq "${ROUNDS:-2}"); do
    for v in "${variants[@]}"; do
      for d in ${DTYPES:-q4_0 q8_0}; do
        # shellcheck disable=SC2086
        echo "${v:-default} decode $d: $(env $v timeout 60 $BIN/chatglm bench --device cuda --synthetic chatglm2-6b \
          --dtype $d --prompt-len 16 --gen-len 128 --repeat 2 2>&1 | grep -E "^decode " | head -1)"
      done
    done
  done
}
if [ "${DECODE_FIRST:-0}" = 1 ]; then
  decode
  suites
else
  suites
  decode
fi
