#!/usr/bin/env bash
# Session 46's seventh call: QMMG_STAGES=4 (run 325: 32 sequences +0.1%, batch 1 756.9 against 752.6 with its qmma
# cubin) against the default once more — five rounds alternating at 32 int4 sequences, batch 1 q4_0 alternating
# three times, q8_0, 16 and 64 sequences.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3 4 5; do echo "round $i: 32: default $(bn X=1) | 4 stages $(bn "$D=QMMG_STAGES=4")"; done
for i in 1 2 3; do echo "batch 1 q4_0: default $(b1 X=1) | 4 stages $(b1 "$D=QMMG_STAGES=4")"; done
echo "batch 1 q8_0: default $(DTYPE=q8_0 b1 X=1) | 4 stages $(DTYPE=q8_0 b1 "$D=QMMG_STAGES=4")"
for n in 16 64; do echo "$n: default $(N=$n bn X=1) | 4 stages $(N=$n bn "$D=QMMG_STAGES=4")"; done
