#!/usr/bin/env bash
# Session 41's second call: split groups' parts without a counter (QMMG_SENTINEL_PARTS=1: the summing block reads
# each element until it is no longer the workspace's sentinel, then puts the sentinel back; a part block stores and
# goes on, no release fence), alone and with 7-pair wide groups on 16 warps (QMMG_WIDE_PAIRS_4=7,QMMG_WIDE_XT=1),
# against the default: the qmma, cuda and cuda_generate suites under it, each product alone at 32 tokens, 32 int4
# sequences (3 rounds, alternating), 16 and 64 sequences, batch-1 q4_0 (the module image changes) with the grouped
# kernels looked up where they are and last (CHATGLM_CUDA_GROUPED_LAST=1) under four orders.
# After tests/gpu/run.sh build with KERNEL_CACHE_VARIANTS naming the cases below, and tests/gpu/pack.sh.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
SE=CHATGLM_NVRTC_DEFINES=QMMG_SENTINEL_PARTS=1
BOTH=CHATGLM_NVRTC_DEFINES=QMMG_SENTINEL_PARTS=1,QMMG_WIDE_PAIRS_4=7,QMMG_WIDE_XT=1
XT=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS_4=7,QMMG_WIDE_XT=1
GL=CHATGLM_CUDA_GROUPED_LAST=1
suite "$BOTH" qmma
for c in X=1 "$BOTH"; do
  echo "== qmma_bench $c"
  env "$c" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | head -12
done
for i in 1 2 3; do
  echo "32 int4 sequences, round $i: default $(bn X=1) | sentinel $(bn "$SE") | both $(bn "$BOTH")"
done
for n in 16 64; do echo "$n int4 sequences: default $(N=$n bn X=1) | both $(N=$n bn "$BOTH")"; done
# Batch 1: the module image moves with the grouped kernels' code unless they are looked up last ($GL).
for i in 1 2; do
  echo "batch 1 q4_0, round $i: default $(b1 X=1) | both $(b1 "$BOTH") | grouped last: default $(b1 $GL)" \
    "both $(b1 $GL "$BOTH") hot $(b1 $GL CHATGLM_CUDA_LOAD_ORDER=hot) reverse $(b1 $GL CHATGLM_CUDA_LOAD_ORDER=reverse)" \
    "global-2 $(b1 $GL CHATGLM_CUDA_LOAD_ORDER=global-2)"
done
echo "batch 1 q8_0: default $(DTYPE=q8_0 b1 X=1) | grouped last $(DTYPE=q8_0 b1 $GL)"
suite "$BOTH" cuda_generate
suite "$BOTH" cuda
# Kernel timelines of 32-sequence steps (device-bin/kernel_trace.so), the default and both.
for c in X=1 "$BOTH"; do
  echo "== timeline $c"
  env "$c" PROFILE_DTYPES= PROFILE_CONCURRENCY=32 bash tests/gpu/profile_quant.sh "$R/prof-${c%%=*}" 2>&1 |
    grep -vE "^profile in" | head -40
done
