#!/usr/bin/env bash
# Session 44's thirteenth call: the 32-token products' deal (CHATGLM_QMMG_SPLIT) as qmma_bench times each product —
# for the q8_0 output layer (65,024 rows: 508 groups over 132 blocks, runs crossing groups) in particular.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
for s in default 1 2 aligned wave; do
  echo "== CHATGLM_QMMG_SPLIT=$s"
  if [ $s = default ]; then timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | grep -E "logits|4h|qkv|dense"
  else CHATGLM_QMMG_SPLIT=$s timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | grep -E "logits|4h|qkv|dense"; fi
done
