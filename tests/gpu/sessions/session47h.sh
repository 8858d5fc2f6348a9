#!/usr/bin/env bash
# Session 47's eighth call: stage_step_early (new default where the table is mapped: the step's metadata kernel
# lets the gather after it launch at once — the gather waits for it before letting its own successor launch — so
# the gather's launch overlaps the argmax instead of following stage_step: run 331's trace had it start 2.5 µs
# after stage_step ended) against CHATGLM_CUDA_STAGE_EARLY=0, four rounds alternating, with every gather missing
# (CHATGLM_CUDA_EMBED_CACHE_MIB=0, as real text's 32-row steps nearly always do) and with the cache; batch 1; the
# suites (quantized models' queued steps take the early form).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/*.cubin | sed 's#/tmp/chatglm-kernels/##'
C=CHATGLM_CUDA_EMBED_CACHE_MIB S=CHATGLM_CUDA_STAGE_EARLY=0
for i in 1 2 3 4; do
  echo "32 misses: early $(bn $C=0) | not $(bn $C=0 $S); hits: early $(bn X=1) | not $(bn $S)"
done
for i in 1 2 3; do echo "batch 1 q4_0: early $(b1 X=1) | not $(b1 $S); misses: early $(b1 $C=0) | not $(b1 $C=0 $S)"; done
echo "batch 1 q8_0: early $(DTYPE=q8_0 b1 X=1) | not $(DTYPE=q8_0 b1 $S)"
for s in embed cuda cuda_generate; do suite X=1 $s; done
