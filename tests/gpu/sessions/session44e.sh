#!/usr/bin/env bash
# Session 44's fifth call: the residual and QKV products' early blocks starting their late blocks' first stages
# towards L2 before the wait (QMMX_LATE_PF=E: block b for block b + E; _MODES=2: the residual products alone),
# and kernels chained through counters (CHATGLM_CHAIN_SYNC=1) at 32 sequences; two rounds alternating.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
round() {
  echo "round $1: default $(bn X=1) | pf68 $(bn "$D=QMMX_LATE_PF=68") | pf64 $(bn "$D=QMMX_LATE_PF=64")" \
    "| pf68 residual $(bn "$D=QMMX_LATE_PF=68,QMMX_LATE_PF_MODES=2") | chain $(bn CHATGLM_CHAIN_SYNC=1)"
}
round 1
round 2
