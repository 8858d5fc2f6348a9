#!/usr/bin/env bash
# Session 46's sixth call: do the grouped products — the q8_0 output layer above all (run 321: DRAM 55%, issue 48%,
# its copy code's quarter of the instructions no cost, run 318) — wait on their stages' depth? QMMG_STAGES=4 (a
# measurement define: narrow groups 4 stages where they have 3, in the qmma and qmmx modules) against the default:
# qmma_bench under each; three rounds alternating at 32 int4 sequences; batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for v in X=1 "$D=QMMG_STAGES=4"; do
  echo "qmma_bench under $v:"; env "$v" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 +f16"
done
for i in 1 2 3; do echo "round $i: 32: default $(bn X=1) | 4 stages $(bn "$D=QMMG_STAGES=4")"; done
echo "batch 1 q4_0: default $(b1 X=1) | 4 stages $(b1 "$D=QMMG_STAGES=4")"
