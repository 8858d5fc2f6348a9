#!/usr/bin/env bash
# Session 48's third call: rows of one id read from the table once, second form (a row that hits reads the cache
# as before; only rows that miss wait for their id's first row and copy its output, all loads in flight; the
# hand-over cleared by the last row of the id). The suites; 32 sequences, every row hitting / every row over the
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
