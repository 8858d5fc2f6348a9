#!/usr/bin/env bash
# Session 32's device call (from the repository root, after tests/gpu/run.sh build, the phase harnesses
# device-bin/qmma_phases-<tag> built with nvcc under each variant's defines, and tests/gpu/pack.sh): batch-1 decode
# under VARIANTS first (tests/gpu/sessions/session26.sh with DECODE_FIRST=1), then the phase harness of each PHASES tag
# ("default" = the default build; e.g. "default -c4 -k1") for q4_0 and q8_0, ROUNDS rounds alternating.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
export OUT=${OUT:-device-bin/report}
DECODE_FIRST=1 tests/gpu/sessions/session26.sh
BIN=device-bin
# shellcheck source=tests/gpu/device_env.sh
. tests/gpu/device_env.sh  # (unpacks the bundle again: harmless)
for _ in $(seq "${ROUNDS:-2}"); do
  for tag in ${PHASES:-default}; do
    tag=${tag#default}
    for f in ${PHASE_FORMATS:-0 2}; do
      echo "== phases${tag:-(default)} format $f"
      HANDOFF=1 timeout 60 "$BIN/qmma_phases${tag}" "$f" 20 2>&1 | grep -E "^one step|^(QKV|dense|h→4h|4h→h) .*/"
    done
  done
done
