#!/usr/bin/env bash
# Session 47's final call on the final build (the kernels of run 334: the embedding row cache; every other cubin
# byte-identical to session 46's): 32 int4 sequences with the cache five rounds and with every gather missing
# (CHATGLM_CUDA_EMBED_CACHE_MIB=0) three, alternating; batch 1 q4_0 and q8_0; 16 and 64 sequences; the embed, cuda
# and cuda_generate suites; int4 + an 8K dialogue with the f16 and the q8_0 KV cache.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/*.cubin | sed 's#/tmp/chatglm-kernels/##'
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for i in 1 2 3; do echo "32: cache $(bn X=1) | misses $(bn $C=0)"; done
for i in 4 5; do echo "32: cache $(bn X=1)"; done
for i in 1 2 3; do echo "batch 1 q4_0: $(b1 X=1)"; done
echo "batch 1 q8_0: $(DTYPE=q8_0 b1 X=1) / $(DTYPE=q8_0 b1 X=1)"
echo "16: $(N=16 bn X=1); 64: $(N=64 bn X=1)"
for s in embed cuda cuda_generate; do suite X=1 $s; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -2
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
