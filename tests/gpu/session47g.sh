#!/usr/bin/env bash
# Session 47's seventh call: a mapped table's gathers now always take the embed_cached module's kernels (a cache of
# no slots with CHATGLM_CUDA_EMBED_CACHE_MIB=0: every row over the bus, as real text's ~10% misses make nearly
# every 32-row step). Does a gather that lets the next kernels launch only once its rows are staged
# (EMBED_LATE_TRIGGER=1, a measurement define: the first QKV product then requests its weights after the bus
# reads, not beside them) shorten a step that misses? Three rounds alternating; batch 1; the embed suite.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/*.cubin | sed 's#/tmp/chatglm-kernels/##'
C=CHATGLM_CUDA_EMBED_CACHE_MIB L=CHATGLM_NVRTC_DEFINES=EMBED_LATE_TRIGGER=1
for i in 1 2 3; do
  echo "32 misses: default $(bn $C=0) | late $(bn $C=0 $L); hits: default $(bn X=1) | late $(bn $L)"
done
for i in 1 2; do echo "batch 1 q4_0 misses: default $(b1 $C=0) | late $(b1 $C=0 $L); hits: $(b1 X=1) | late $(b1 $L)"; done
suite X=1 embed
