#!/usr/bin/env bash
# Session 47's sixth call: where every 32-sequence step's gather misses the row cache (real text: ~10% of rows
# miss, so nearly every 32-row step has one), the bus round trip is on the critical path again (run 334: no cache
# 11,934–11,955 against 12,027–12,040 for the synthetic model's one repeated token). Is it shorter from a
# write-combined table (CHATGLM_CUDA_WC_TABLE=1, new: not cached on the host, so the device's reads are not
# snooped)? Three rounds alternating, without and with the cache; batch 1 without the cache.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
C=CHATGLM_CUDA_EMBED_CACHE_MIB W=CHATGLM_CUDA_WC_TABLE
for i in 1 2 3; do
  echo "32 no cache: cached table $(bn $C=0) | write-combined $(bn $C=0 $W=1); cache: write-combined $(bn $W=1) | cached $(bn X=1)"
done
for i in 1 2; do echo "batch 1 q4_0 no cache: $(b1 $C=0) | write-combined $(b1 $C=0 $W=1)"; done
