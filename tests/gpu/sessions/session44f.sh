#!/usr/bin/env bash
# Session 44's sixth call: one layer (3) of one 32-sequence decode step (step 15, context 144) on one clock — every
# block's stamps of the QKV, dense and h→4h products (QMMG_STAMPS) and of the decode attention (SHORT_STAMPS=2) —
# to see where the attention's ~7 µs and the dense product's ~13 µs after it go.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin /tmp/chatglm-kernels/decode_mma-*.cubin
CHATGLM_NVRTC_DEFINES=QMMG_STAMPS=1,QMMG_STAMP_STEP=15,QMMG_STAMP_LAYER=3,SHORT_STAMPS=2 timeout 120 "$BIN/chatglm" \
  bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 20 --concurrency 32 \
  >"$R/stamps.txt" 2>&1
grep -c "QGS\|SHS" "$R/stamps.txt"; grep "^batch" "$R/stamps.txt"
python3 tests/gpu/layer_stamps.py "$R/stamps.txt"
python3 tests/gpu/qmmg_stamps.py "$R/stamps.txt" 2>&1 | head -60
echo "default 32: $(bn X=1)"
