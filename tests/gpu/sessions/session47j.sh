#!/usr/bin/env bash
# Session 47's last call: the row cache made at the first gather instead of when the table is mapped (before the
# weights: its 8.9–9.4 MB then moved every weight's address, and q8_0 batch 1 read 536–537 with it against 541
# without, runs 334–338). q8_0 and q4_0 batch 1 against no cache, 32 sequences; the suites; int4 + an 8K dialogue.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for i in 1 2 3; do echo "batch 1 q8_0: cache $(DTYPE=q8_0 b1 X=1) | none $(DTYPE=q8_0 b1 $C=0)"; done
for i in 1 2; do echo "batch 1 q4_0: cache $(b1 X=1) | none $(b1 $C=0)"; done
for i in 1 2 3; do echo "32: cache $(bn X=1) | misses $(bn $C=0)"; done
for s in embed cuda cuda_generate; do suite X=1 $s; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "GPU memory|peak GPU" | tail -2
