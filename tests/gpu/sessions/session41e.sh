#!/usr/bin/env bash
# Session 41's last call, on the committed build (the qmmx module; its cubins' hashes printed — run 280's were qmma
# 954496bb…, qmmx 970eddaf…): 32 int4 sequences against the grouped next-product L2 prefetch at 32 MiB (now that
# 4h→h's early blocks find 9 free SMs behind h→4h, not 25) and the aligned split, two rounds alternating; batch 1;
# then the phase stamps of 32-sequence steps (QMMG_STAMPS=1, shipped in the kernel cache), the qmmx h→4h among them.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
for i in 1 2; do
  echo "round $i: 32 int4 sequences: default $(bn X=1) | prefetch 32 MiB $(bn CHATGLM_QMMG_PREFETCH_NEXT=33554432)" \
    "| aligned $(bn CHATGLM_QMMG_SPLIT=aligned); batch 1 q4_0 $(b1 X=1)"
done
echo "== stamps (default, 32 sequences)"
CHATGLM_NVRTC_DEFINES=QMMG_STAMPS=1 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 8 --concurrency 32 >"$R/stamps.txt" 2>&1
python3 tests/gpu/qmmg_stamps.py "$R/stamps.txt" 2>&1 | grep -A30 "f16 activations" | head -70
