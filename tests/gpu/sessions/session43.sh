#!/usr/bin/env bash
# Session 43's first call: row slices for the 17–32-token f16 products (kernels/qmmx.cuh) — QKV as 96 slices of
# 3 tiles (QMMX_QKV_TILES, 4 or 8 warps a tile), the dense product as 128 slices of 2 (QMMX_RES_TILES), each
# slice whole in one block: no parts published or summed across blocks. 32 int4 sequences, two rounds alternating;
# then the qmma suite under both.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
Q4="$D=QMMX_QKV_TILES=3,QMMX_QKV_KW=4"
Q8="$D=QMMX_QKV_TILES=3,QMMX_QKV_KW=8"
R2="$D=QMMX_RES_TILES=2"
B4="$D=QMMX_QKV_TILES=3,QMMX_QKV_KW=4,QMMX_RES_TILES=2"
for i in 1 2; do
  echo "round $i: default $(bn X=1) | qkv3x4 $(bn "$Q4") | qkv3x8 $(bn "$Q8") | res2 $(bn "$R2") | both $(bn "$B4")"
done
suite "$B4" qmma
