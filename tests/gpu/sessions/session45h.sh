#!/usr/bin/env bash
# Session 45's eighth call: the final build (run 317's kernels: QMMX_COPY_BASE=1, QMMX_EPI=27) — 32 int4 sequences
# three rounds, with run-time settings probed once more beside it (the grouped products' next weights towards L2,
# 12 / 24 MiB; CHATGLM_QMMG_SPLIT=aligned; 64 argmax slices a row); batch 1 q4_0 / q8_0; 16 and 64 sequences;
# int4 + an 8,192-token dialogue (f16 and q8_0 KV).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
for i in 1 2 3; do
  echo "round $i: 32: default $(bn X=1) | next 12M $(bn CHATGLM_QMMG_PREFETCH_NEXT=12582912)" \
    "| next 24M $(bn CHATGLM_QMMG_PREFETCH_NEXT=25165824) | aligned $(bn CHATGLM_QMMG_SPLIT=aligned)" \
    "| argmax 64 $(bn CHATGLM_ARGMAX_SLICES=64)"
done
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
for n in 16 64; do echo "$n sequences: $(N=$n bn X=1)"; done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
