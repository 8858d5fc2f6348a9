#!/usr/bin/env bash
# Session 33's device call: tests/gpu/sessions/session34.sh with one round of benchmarks, the `qmma` suite under the default
# too, then `cuda_generate` and `cuda` (VARIANTS and QMMA_VARIANTS as there).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
ROUNDS=${ROUNDS:-1} QMMA_DEFAULT=1 SUITES="cuda_generate cuda" exec tests/gpu/sessions/session34.sh
