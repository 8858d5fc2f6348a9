#!/usr/bin/env bash
# Session 43's final call, on the committed build (qmmx cubin byte-identical to run 293's QMMX_EPI=3 variant, qmma
# cubin to session 39's): 32 int4 sequences twice, batch 1 q4_0 twice and q8_0, and every GPU suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
echo "32 int4 sequences: $(bn X=1) $(bn X=1) | batch 1 q4_0: $(b1 X=1) $(b1 X=1) | q8_0: $(DTYPE=q8_0 b1 X=1)"
for t in qmma cuda cuda_generate chatglm_cuda-lib; do suite X=1 "$t"; done
