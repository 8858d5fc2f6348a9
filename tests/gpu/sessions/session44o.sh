#!/usr/bin/env bash
# Session 44's fifteenth call: the decode attention's merge weights worked out by each output thread
# (SHORT_MERGE_FUSED=1, new default: one barrier and one pass fewer) against the pass of their own (=0), three rounds
# alternating at 32 int4 sequences, batch 1 q4_0 twice each; the suites under the default.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do echo "round $i: 32: fused $(bn X=1) | pass $(bn "$D=SHORT_MERGE_FUSED=0")"; done
for i in 1 2; do echo "batch 1 q4_0: fused $(b1 X=1) | pass $(b1 "$D=SHORT_MERGE_FUSED=0")"; done
for s in cuda cuda_generate; do suite X=1 $s; done
