#!/usr/bin/env bash
# Session 44's fourteenth call: the 17–32-token output layer in the qmmx module as whole groups a block
# (qmmx_{f}_4_0, QMMX_WHOLE=1, new default) against the qmma module's qmmh_{f}_4_0 (CHATGLM_QMMX=3) and the qmmx
# kernel on the stream-K deal (QMMX_WHOLE=0), three rounds alternating; the suites under the default.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do
  echo "round $i: 32: default $(bn X=1) | qmma module's $(bn CHATGLM_QMMX=3) | stream-K $(bn "$D=QMMX_WHOLE=0")"
done
echo "batch 1 q4_0: $(b1 X=1)"
for s in cuda cuda_generate; do suite X=1 $s; done
