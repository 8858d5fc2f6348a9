#!/usr/bin/env bash
# One kernel variant of the quantized decode products, checked and timed in a
# few minutes of a GPU machine (after `tests/gpu/run.sh build`, from the
# repository root; device-bin/pack.t{gz,xz}, as tests/gpu/pack.sh makes it, is unpacked first):
#   VARIANT="QMMA_ASYNC_X=1" tests/gpu/variant_quick.sh [out-dir]
# 1. the per-block phase stamps of the default and variant kernels (profile_quant.sh; its timelines only
#    where PROFILE_DTYPES / PROFILE_CONCURRENCY are set);
# 2. the qmma, cuda_generate and cuda tests (TEST_SUITES) under the variant (CHATGLM_NVRTC_DEFINES; TESTS=0: none);
# 3. one-token decode of each of DTYPES (default "q4_0 q8_0"), the default and the variant alternating, REPEAT
#    rounds; VARIANTS="A=1;A=2" (';'-separated) adds more variants to each round, timed but not tested;
#    CONCURRENCY=32 adds that many int4 sequences (prompt 128, 256 new tokens) to each round;
# 4. QMMA_BENCH=1: qmma_bench (each product alone, 1 / 8 / 32 tokens) under the default and each variant.
# ENV_VARIANT=1: the variants are environment assignments (VARIANT="CHATGLM_QMMA_GROUPED=0") instead of
# defines, and the tests run under the default.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
out=${1:-${OUT:-$BIN/report}}
mkdir -p "$out"
: "${VARIANT:?set VARIANT, e.g. VARIANT=QMMA_ASYNC_X=1}"
# device-bin/pack.t{gz,xz}: the binaries packed to fit a device call's 64 MiB (xz: a third smaller).
for f in "$BIN"/pack.tgz "$BIN"/pack.txz; do [ -f "$f" ] && tar xf "$f" -C "$BIN"; done
for f in "$BIN"/kcache.tgz "$BIN"/kcache.txz; do [ -f "$f" ] && tar xf "$f" -C /; done
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export CHATGLM_KERNEL_CACHE=${CHATGLM_KERNEL_CACHE:-/tmp/chatglm-kernels}
# The shipped cache holds SASS (cubins): a fresh machine skips the driver's ~110 s PTX compile.
export CHATGLM_KERNEL_FORMAT=${CHATGLM_KERNEL_FORMAT:-cubin}
export CHATGLM_TESTDATA=${CHATGLM_TESTDATA:-$PWD/testdata} CHATGLM_REQUIRE_GPU=1
summary=$out/variant.txt
# Runs "$@" under variant $1 (defines, or with ENV_VARIANT=1 environment assignments).
under() {
  local v=$1
  shift
  if [ "${ENV_VARIANT:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    env $v "$@"
  else
    CHATGLM_NVRTC_DEFINES="$v" "$@"
  fi
}
: >"$summary"
if [ "${PHASES:-1}" != 0 ]; then
  PROFILE_DTYPES=${PROFILE_DTYPES-} PROFILE_CONCURRENCY=${PROFILE_CONCURRENCY:-0} \
    tests/gpu/profile_quant.sh "$out" >/dev/null 2>&1
  cat "$out/profile.txt" >>"$summary"
fi
if [ "${TESTS:-1}" != 0 ]; then
  for t in ${TEST_SUITES:-qmma cuda_generate cuda}; do
    [ -x "$BIN/tests/$t" ] || continue
    tv=$VARIANT
    [ "${ENV_VARIANT:-0}" = 1 ] && tv=""
    echo "== tests $t under ${tv:-the default}" | tee -a "$summary"
    under "$tv" "$BIN/tests/$t" --test-threads=1 >"$out/test-$t.log" 2>&1
    grep -E "^test result|panicked|FAILED" "$out/test-$t.log" | tee -a "$summary"
  done
fi
b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b"
IFS=';' read -r -a more <<<"${VARIANTS:-}"
for _ in $(seq "${REPEAT:-2}"); do
  for v in "" "$VARIANT" "${more[@]}"; do
    for d in ${DTYPES:-q4_0 q8_0}; do
      echo "== $d ${v:-default}" | tee -a "$summary"
      under "$v" $b --dtype "$d" --prompt-len 16 --gen-len 128 --repeat 2 >"$out/bench.log" 2>&1 ||
        echo FAILED | tee -a "$summary"
      grep -E "decode|tok/s" "$out/bench.log" | tail -n 3 | tee -a "$summary"
    done
    if [ -n "${CONCURRENCY:-}" ]; then
      echo "== q4_0 x$CONCURRENCY ${v:-default}" | tee -a "$summary"
      under "$v" $b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency "$CONCURRENCY" \
        >"$out/bench.log" 2>&1 || echo FAILED | tee -a "$summary"
      grep -E "^batch" "$out/bench.log" | tee -a "$summary"
    fi
  done
done
if [ "${QMMA_BENCH:-0}" != 0 ] && [ -x "$BIN/qmma_bench" ]; then
  for v in "" "$VARIANT" "${more[@]}"; do
    echo "== qmma_bench ${v:-default}" | tee -a "$summary"
    under "$v" "$BIN/qmma_bench" 2>&1 | grep -vE "^(format|NVIDIA|GPU)" | tee -a "$summary"
  done
fi
cd /tmp && tar czf "$out/kcache.tgz" chatglm-kernels 2>/dev/null
echo "summary in $summary"
