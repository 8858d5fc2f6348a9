#!/usr/bin/env bash
# Session 45's seventh call: the 17–32-token output layer in the qmmx module too (qmmx_{f}_4_0, new default: its
# chunk copies as run 317's) against the qmma module's qmmh_{f}_4_0 (CHATGLM_QMMX=3), three rounds alternating at
# 32 int4 sequences; batch 1 q4_0 / q8_0; the cuda, qmma and cuda_generate suites under the default.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
for i in 1 2 3; do echo "round $i: 32: qmmx $(bn X=1) | qmma module's $(bn CHATGLM_QMMX=3)"; done
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
for s in cuda qmma cuda_generate; do suite X=1 $s; done
