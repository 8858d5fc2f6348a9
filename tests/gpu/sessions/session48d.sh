#!/usr/bin/env bash
# Session 48's fourth call: rows of one id read from the table once, third form (rows that hit read the cache
# as before, with no scan and no hand-over; rows that miss wait for their id's first row, which fills the cache only
# after they copied its output). The suites; 32 sequences, every row hitting / every row over the
# bus (a cache of no slots), four rounds alternating; batch 1; 16 / 64 sequences.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for s in embed cuda_generate cuda; do suite X=1 $s; done
for i in 1 2 3 4; do echo "32: hits $(bn X=1) | misses $(bn $C=0)"; done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1) (misses $(b1 $C=0)), q8_0 $(DTYPE=q8_0 b1 X=1) $(DTYPE=q8_0 b1 X=1)"
echo "16: $(N=16 bn X=1) 64: $(N=64 bn X=1)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
