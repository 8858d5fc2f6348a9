#!/usr/bin/env bash
# Session 42's last call, on the final build (the qmmx module's residual and QKV products as run 286's "moved"
# form; the qmma cubin as sessions 39–41's): 32 int4 sequences three rounds, 16 and 64; batch 1 q4_0 and q8_0;
# int4 + an 8,192-token dialogue's peak GPU memory (f16 and q8_0 KV); every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
for i in 1 2 3; do echo "round $i: 32 int4 sequences $(bn X=1); batch 1 q4_0 $(b1 X=1)"; done
echo "16 / 64 sequences: $(N=16 bn X=1) / $(N=64 bn X=1); batch 1 q8_0 $(DTYPE=q8_0 b1 X=1)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
suite X=1 qmma
suite X=1 cuda
suite X=1 cuda_generate
suite X=1 chatglm_cuda-lib
