#!/usr/bin/env bash
# Session 47's fifth call: the device cache of the mapped embedding table's rows (new, default 16 MiB: 4,096 q4_0
# rows of ChatGLM2-6B; kernels/embed_cached.cu in a module looked up last, so the other modules' cubins and code
# placement stay as they were — their sha1s below) against no cache (CHATGLM_CUDA_EMBED_CACHE_MIB=0), alternating:
# 32 int4 sequences four rounds, batch 1 q4_0 three, q8_0 once; 16 and 64 sequences; the embed, cuda and
# cuda_generate suites; int4 + an 8K dialogue with the cache.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/*.cubin | sed 's#/tmp/chatglm-kernels/##'
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for i in 1 2 3 4; do echo "32: cache $(bn X=1) | none $(bn $C=0)"; done
for i in 1 2 3; do echo "batch 1 q4_0: cache $(b1 X=1) | none $(b1 $C=0)"; done
echo "batch 1 q8_0: cache $(DTYPE=q8_0 b1 X=1) | none $(DTYPE=q8_0 b1 $C=0)"
echo "16: cache $(N=16 bn X=1) | none $(N=16 bn $C=0); 64: cache $(N=64 bn X=1) | none $(N=64 bn $C=0)"
for s in embed cuda cuda_generate; do suite X=1 $s; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -3
