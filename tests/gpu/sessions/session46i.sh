#!/usr/bin/env bash
# Session 46's ninth call: the final build (qmma module: as many stages as fit up to 4, the 9–16-token f16
# products up to 3; its cubin expected byte-identical to run 327's QMMG_HX2_STAGES=3 variant, b941cfa4…): batch 1
# q4_0 three rounds and q8_0; 32 int4 sequences three rounds, 16 and 64; the qmma suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1) $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
echo "32: $(bn X=1) $(bn X=1) $(bn X=1); 16: $(N=16 bn X=1); 64: $(N=64 bn X=1)"
suite X=1 qmma
