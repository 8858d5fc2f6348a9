#!/usr/bin/env bash
# Session 39's third call: the grouped products' whole-matrix L2 prefetch of the next small product
# (CHATGLM_QMMG_PREFETCH_NEXT, default 24 MB) off, against the default, four rounds alternating (run 269 had it
# +0.5% once); the grouped grids once more (CHATGLM_QMMG_SPLIT); the memory of int4 + an 8,192-token dialogue.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
b32() {  # 32 int4 sequences under the settings given
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
for i in 1 2 3 4; do
  echo "32 int4 sequences, round $i: default $(b32 X=1) | CHATGLM_QMMG_PREFETCH_NEXT=0 $(b32 CHATGLM_QMMG_PREFETCH_NEXT=0)"
done
for v in CHATGLM_QMMG_SPLIT=wave CHATGLM_QMMG_SPLIT=auto CHATGLM_QMMG_SPLIT=3; do
  echo "32 int4 sequences: default $(b32 X=1) | $v $(b32 "$v") | $v CHATGLM_QMMG_PREFETCH_NEXT=0 $(b32 "$v" CHATGLM_QMMG_PREFETCH_NEXT=0)"
done
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
