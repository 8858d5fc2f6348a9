#!/usr/bin/env bash
# Session 44's third call: split groups' parts pushed into the summing block's shared memory (QMMX_PUSH=1, the
# qmmx module's residual and QKV products launched in clusters of a group's blocks) against the default (L2
# parts and a counter), three rounds alternating; whether the clusters fit; the suites under it.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
D=CHATGLM_NVRTC_DEFINES
CHATGLM_LOG=chatglm_cuda=debug $D=QMMX_PUSH=1 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 8 --concurrency 32 2>&1 | grep -E "clusters of|^batch|rror" | sort | uniq -c | head
round() { echo "round $1: default $(bn X=1) | push $(bn "$D=QMMX_PUSH=1")"; }
round 1
suite "$D=QMMX_PUSH=1" cuda
round 2
suite "$D=QMMX_PUSH=1" cuda_generate
round 3
echo "batch 1: $(b1 X=1)"
