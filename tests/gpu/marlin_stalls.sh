#!/usr/bin/env bash
# ncu's view of Marlin's 32-token h→4h beside ours (tests/gpu/stall_profile.sh's metrics and summary), in one
# device call after tests/gpu/run.sh build, bench/marlin/build.sh and tests/gpu/pack.sh with marlin_peer:
#   tests/gpu/marlin_stalls.sh       logs under $OUT (m: Marlin alone, q: ours alone in qmma_bench, s: ours in
#                                    32-sequence decode steps)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=${OUT:-device-bin/report}
STALL_KERNELS=Marlin STALL_SKIP=20 STALL_COUNT=3 STALL_CMD="env MARLIN_SHAPES=h_to_4h device-bin/marlin_peer 32" \
  bash tests/gpu/stall_profile.sh "$out/m" 2>&1
STALL_KERNELS="qmmh_0_4_2" STALL_SKIP=6 STALL_COUNT=3 STALL_CMD="device-bin/qmma_bench" \
  bash tests/gpu/stall_profile.sh "$out/q" 2>&1
STALL_KERNELS="qmmh_0_4_2" STALL_COUNT=4 bash tests/gpu/stall_profile.sh "$out/s" 2>&1
