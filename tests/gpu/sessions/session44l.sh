#!/usr/bin/env bash
# Session 44's last call: the final build (run 304's default) once more — 32 int4 sequences three times, batch 1
# q4_0 and q8_0, int4 + an 8,192-token dialogue under tests/gpu/mem_probe.sh (f16 and q8_0 KV).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
echo "32 int4 sequences: $(bn X=1) $(bn X=1) $(bn X=1)"
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
