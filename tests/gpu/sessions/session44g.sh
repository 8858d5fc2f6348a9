#!/usr/bin/env bash
# Session 44's seventh call: the decode attention's settled tiles loaded before its wait (SHORT_EARLY_TILES=1)
# against the default, 32 int4 sequences and batch 1, alternating; cuda_generate under it.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2; do
  echo "round $i: 32: default $(bn X=1) | early tiles $(bn "$D=SHORT_EARLY_TILES=1")" \
    "| batch 1: default $(b1 X=1) | early tiles $(b1 "$D=SHORT_EARLY_TILES=1")"
done
suite "$D=SHORT_EARLY_TILES=1" cuda_generate
