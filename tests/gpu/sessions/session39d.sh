#!/usr/bin/env bash
# Session 39's fourth call: run 270's two leads, four rounds alternating — the grouped products' next-product L2
# prefetch off (CHATGLM_QMMG_PREFETCH_NEXT=0), and with it every group on whole blocks (CHATGLM_QMMG_SPLIT=auto).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
b32() {  # 32 int4 sequences under the settings given
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency "${N:-32}" 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
for i in 1 2 3 4; do
  echo "32 int4 sequences, round $i: default $(b32 X=1) | PREFETCH_NEXT=0 $(b32 CHATGLM_QMMG_PREFETCH_NEXT=0)" \
    "| SPLIT=auto PREFETCH_NEXT=0 $(b32 CHATGLM_QMMG_SPLIT=auto CHATGLM_QMMG_PREFETCH_NEXT=0)" \
    "| SPLIT=auto $(b32 CHATGLM_QMMG_SPLIT=auto)"
done
for n in 16 64; do
  echo "$n int4 sequences: default $(N=$n b32 X=1) | PREFETCH_NEXT=0 $(N=$n b32 CHATGLM_QMMG_PREFETCH_NEXT=0)" \
    "| SPLIT=auto PREFETCH_NEXT=0 $(N=$n b32 CHATGLM_QMMG_SPLIT=auto CHATGLM_QMMG_PREFETCH_NEXT=0)"
done
