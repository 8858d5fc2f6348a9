#!/usr/bin/env bash
# Session 46's first call: the qmmx chunk loop issuing whole chunks from per-run pointers (QMMX_LEAN_LOOP=1,
# committed off in session 45, unmeasured) against the default, four rounds alternating at 32 int4 sequences;
# qmma_bench's 32-token int4 f16 products under each; the qmma, cuda and cuda_generate suites under it; batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3 4; do
  echo "round $i: 32: default $(bn X=1) | lean $(bn "$D=QMMX_LEAN_LOOP=1")"
done
for v in X=1 "$D=QMMX_LEAN_LOOP=1"; do
  echo "qmma_bench under $v:"; env "$v" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 +f16" | grep -E "^int4"
done
for n in 16 64; do echo "$n: default $(N=$n bn X=1) | lean $(N=$n bn "$D=QMMX_LEAN_LOOP=1")"; done
echo "batch 1 q4_0: $(b1 X=1)"
for s in qmma cuda cuda_generate; do suite "$D=QMMX_LEAN_LOOP=1" $s; done
