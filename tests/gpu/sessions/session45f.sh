#!/usr/bin/env bash
# Session 45's sixth call: the qmmx products' chunk copies from one 64-bit address each (QMMX_COPY_BASE=1, new
# default: weights at immediate offsets, activation rows from an address worked out once a launch) and the odd-pair
# SwiGLU hand-off loop a row a thread (QMMX_EPI bit 16, new default 27), each against the old code (QMMX_COPY_BASE=0,
# QMMX_EPI=11; both old: session 43's cubin), three rounds alternating at 32 int4 sequences; qmma_bench's 32-token
# int4 f16 products; 16 and 64 sequences; the qmma, cuda and cuda_generate suites under the default; batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do
  echo "round $i: 32: both $(bn X=1) | copies only $(bn "$D=QMMX_EPI=11") | loop only $(bn "$D=QMMX_COPY_BASE=0")" \
    "| old $(bn "$D=QMMX_COPY_BASE=0 QMMX_EPI=11")"
done
for v in X=1 "$D=QMMX_COPY_BASE=0 QMMX_EPI=11"; do
  echo "qmma_bench under $v:"; env "$v" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 +f16" | grep -E "^int4"
done
for n in 16 64; do echo "$n: both $(N=$n bn X=1) | old $(N=$n bn "$D=QMMX_COPY_BASE=0 QMMX_EPI=11")"; done
echo "batch 1 q4_0: $(b1 X=1)"
for s in qmma cuda cuda_generate; do suite X=1 $s; done
