#!/usr/bin/env bash
# Session 47's seventh call: a mapped table's gathers now always take the embed_cached module's kernels (a cache of
# no slots with CHATGLM_CUDA_EMBED_CACHE_MIB=0: every row over the bus, as real text's ~10% misses make nearly
# every 32-row step). Two ways to shorten a step whose gather misses, each against the default, three rounds
# alternating:
# - EMBED_LATE_TRIGGER=1 (a measurement define, compiled on the device: the gather lets the next kernels launch
#   only once its rows are staged, so the first QKV product requests its weights after the bus reads, not beside them);
# - CHATGLM_CUDA_EMBED_PREFETCH=1 (new: behind each step's argmax, `embed_prefetch` requests the chosen tokens'
#   rows towards L2 and ends without waiting, so the next step's gather may find them there).
# Batch 1 under each; the embed suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/*.cubin | sed 's#/tmp/chatglm-kernels/##'
C=CHATGLM_CUDA_EMBED_CACHE_MIB L=CHATGLM_NVRTC_DEFINES=EMBED_LATE_TRIGGER=1 P=CHATGLM_CUDA_EMBED_PREFETCH=1
bn $C=0 $L >/dev/null  # the variant's compile
for i in 1 2 3; do
  echo "32 misses: default $(bn $C=0) | late $(bn $C=0 $L) | prefetch $(bn $C=0 $P); hits: default $(bn X=1) | late $(bn $L) | prefetch $(bn $P)"
done
for i in 1 2; do
  echo "batch 1 q4_0 misses: default $(b1 $C=0) | late $(b1 $C=0 $L) | prefetch $(b1 $C=0 $P); hits: $(b1 X=1) | late $(b1 $L) | prefetch $(b1 $P)"
done
suite X=1 embed
suite $P cuda_generate
