#!/usr/bin/env bash
# Session 50's first call: the two forms built without a device, against the default in one call.
#  - last: a split group summed by whichever block counts itself last (QMMX_LAST_SUMS=1, session 49, with the
#    counted build's register use; never measured in that form), also with the stream-K boundaries rounded down
#    (QMMX_SPLIT_CEIL=0);
#  - fold: the greedy choice folded into the 32-token output product (CHATGLM_GREEDY_FOLD=1, new: the qmmo module's
#    qmmo_2_4_0 writes each token's best of each 128-row group, qmmo_greedy_merge merges 508 of them a token instead
#    of argmax_rows reading the 8.3 MB of logits back), alone and with last; and the fold with the output product on
#    wide groups (QMMO_WIDE=1: 16 tiles of one warp, half the activation bytes from L2 a weight byte; it spills
#    56 bytes, after its first weight copies).
# Four rounds alternating at 32 int4 sequences; batch 1 (the qmma module is unchanged by both: it must not move);
# 16 / 64 sequences; batch-1 q8_0; int4 + an 8K dialogue's GPU memory; the kernel suite qmma (its new test: the bests against argmax_rows) and cuda_generate under
# each form. Build first with
#   KERNEL_CACHE_VARIANTS="QMMX_LAST_SUMS=1;QMMX_LAST_SUMS=1 QMMX_SPLIT_CEIL=0;QMMO_WIDE=1" tests/gpu/run.sh build
# then tests/gpu/pack.sh; carry ["device-bin/pack.txz", "device-bin/kcache.tgz"].
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
L="$D=QMMX_LAST_SUMS=1"
F="$D=QMMX_LAST_SUMS=1 QMMX_SPLIT_CEIL=0"
G=CHATGLM_GREEDY_FOLD=1
W="$D=QMMO_WIDE=1"
for i in 1 2 3 4; do
  echo "32: counted $(bn X=1) | last $(bn "$L") | last, floor split $(bn "$F") | fold $(bn $G) | last + fold $(bn "$L" $G) | fold, wide $(bn $G "$W")"
done
echo "batch 1 q4_0: default $(b1 X=1) / last $(b1 "$L") / fold $(b1 $G) / default $(b1 X=1)"
echo "16: counted $(N=16 bn X=1) / last $(N=16 bn "$L") / fold $(N=16 bn $G); 64: counted $(N=64 bn X=1) / last $(N=64 bn "$L") / fold $(N=64 bn $G)"
echo "batch 1 q8_0: default $(DTYPE=q8_0 b1 X=1)"
# The qmmo module's code is loaded whatever the setting: the int4 + 8K dialogue must stay under 4.5 GB.
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 |
  grep -E "peak GPU" | tail -1
suite X=1 qmma
suite "$G" cuda_generate
suite "$L" cuda_generate
