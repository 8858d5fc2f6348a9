#!/usr/bin/env bash
# Session 42's fourth call (the committed build: the residual and QKV products of 17–32-token f16 steps in the qmmx
# module, run 286's "moved" form): how much of a 32-sequence step those products' sums and epilogues are
# (QMMX_DRY=8: the qmmx products skip them — results meaningless, a ceiling), the QKV epilogue's f32 key/value
# outputs (QMMG_KV_NO_OUT=1: left out, results meaningless), three rounds alternating; phase stamps of
# 32-sequence steps (QMMG_STAMPS=1). Variants shipped in the kernel cache.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
for i in 1 2 3; do
  echo "round $i: 32 int4 sequences: default $(bn X=1) | no sums or epilogues $(bn CHATGLM_NVRTC_DEFINES=QMMX_DRY=8)" \
    "| no f32 key/value outputs $(bn CHATGLM_NVRTC_DEFINES=QMMG_KV_NO_OUT=1)"
done
echo "batch 1 q4_0 $(b1 X=1)"
echo "== stamps (default, 32 sequences)"
CHATGLM_NVRTC_DEFINES=QMMG_STAMPS=1 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 8 --concurrency 32 >"$R/stamps.txt" 2>&1
python3 tests/gpu/qmmg_stamps.py "$R/stamps.txt" 2>&1 | grep -A40 "f16 activations" | head -80
