#!/usr/bin/env bash
# Session 49's third call (not run: no device was lent after run 347): the last-sums form with the counted build's
# register use (QMMX_LAST_SUMS=1: SwiGLU groups counted, a late part read again in one rolled loop; runs 346–347's
# forms lost 26–30% to spills before the first weight copies) against the counted form (the default),
# alternating, and with the stream-K deal's boundaries rounded down (QMMX_SPLIT_CEIL=0: the rounding up gave the
# counted form's waiting block the larger share); every suite under it; batch 1; 16 / 64 sequences; a timeline of each. Build first with
# KERNEL_CACHE_VARIANTS="QMMX_LAST_SUMS=1;QMMX_LAST_SUMS=1 QMMX_SPLIT_CEIL=0" tests/gpu/run.sh build (the variant's cubins travel in kcache.tgz), then
# tests/gpu/pack.sh; every qmmx kernel's REG/STACK under the variant equals the counted build's (cuobjdump -res-usage).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
L="$D=QMMX_LAST_SUMS=1"
suite "$L" cuda_generate
suite "$L" qmma
suite "$L" cuda
F="$D=QMMX_LAST_SUMS=1 QMMX_SPLIT_CEIL=0"
for i in 1 2 3 4; do echo "32: last $(bn "$L") | counted $(bn X=1) | last, floor split $(bn "$F")"; done
echo "batch 1 q4_0 $(b1 X=1) / last $(b1 "$L"); 16: last $(N=16 bn "$L") / counted $(N=16 bn X=1); 64: last $(N=64 bn "$L") / counted $(N=64 bn X=1)"
for v in 1 0; do timeline last-sums-$v 12 "$D=QMMX_LAST_SUMS=$v"; done
