#!/usr/bin/env bash
# Prepared in session 46 for the next device call (no build needed): does the code placement move 32 sequences as
# it moves batch 1 (±1.8%, runs 243–249; runs 325–328: +0.6% from a qmma cubin whose one-token SASS is unchanged)?
# Every lookup order (CHATGLM_CUDA_LOAD_ORDER) at 32 int4 sequences, two rounds, with batch 1 q4_0 beside each.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
O=CHATGLM_CUDA_LOAD_ORDER
T0=$(date +%s)
for i in 1 2; do
  for o in hot-last list hot reverse global global-2 global-3; do
    # The call's 600 s: stop before a pair would run past it.
    [ $(($(date +%s) - T0)) -lt 530 ] || { echo "stopped at $(($(date +%s) - T0)) s"; break 2; }
    echo "round $i $o: 32: $(bn $O=$o) | batch 1 q4_0: $(b1 $O=$o) ($(($(date +%s) - T0)) s)"
  done
done
