#!/usr/bin/env bash
# Session 44's eighth call: SHORT_EARLY_TILES=1 the default (a sequence's first token of the step only) against 0
# (every tile after the wait) and 2 (also the later tiles' rows requested again after the wait), three rounds
# alternating at 32 int4 sequences; batch 1 q4_0 and q8_0; 16 and 64 sequences; every suite under the default.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do
  echo "round $i: 32: default(1) $(bn X=1) | 0 $(bn "$D=SHORT_EARLY_TILES=0") | 2 $(bn "$D=SHORT_EARLY_TILES=2")"
done
for i in 1 2; do
  echo "batch 1 q4_0: default $(b1 X=1) | 0 $(b1 "$D=SHORT_EARLY_TILES=0"); q8_0: default $(DTYPE=q8_0 b1 X=1) | 0 $(DTYPE=q8_0 b1 "$D=SHORT_EARLY_TILES=0")"
done
echo "16: $(N=16 bn X=1) | 0 $(N=16 bn "$D=SHORT_EARLY_TILES=0"); 64: $(N=64 bn X=1) | 0 $(N=64 bn "$D=SHORT_EARLY_TILES=0")"
for s in cuda cuda_generate chatglm_cuda-lib; do suite X=1 $s; done
