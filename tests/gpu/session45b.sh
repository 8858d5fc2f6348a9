#!/usr/bin/env bash
# Session 45's second call: a queued step's argmax recorded with the step's launches (its graph, one a host buffer;
# new default) against issued after them (CHATGLM_ARGMAX_IN_GRAPH=0), and the embedding gather over 4 or 8 blocks a
# row (CHATGLM_EMBED_SLICES, new, default 1), four rounds alternating at 32 int4 sequences; batch 1 q4_0 / q8_0 and
# 16 / 64 sequences under the first two; the cuda_generate and cuda suites under the default.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin \
  /tmp/chatglm-kernels/elementwise-*.cubin
G=CHATGLM_ARGMAX_IN_GRAPH=0
for i in 1 2 3 4; do
  echo "round $i: 32: in graph $(bn X=1) | after $(bn $G) | slices 4 $(bn CHATGLM_EMBED_SLICES=4) | 8 $(bn CHATGLM_EMBED_SLICES=8)"
done
for i in 1 2; do echo "batch 1 q4_0: in graph $(b1 X=1) | after $(b1 $G)"; done
echo "batch 1 q8_0: in graph $(DTYPE=q8_0 b1 X=1) | after $(DTYPE=q8_0 b1 $G)"
for n in 16 64; do echo "$n: in graph $(N=$n bn X=1) | after $(N=$n bn $G)"; done
for s in cuda_generate cuda; do suite X=1 $s; done
