#!/usr/bin/env bash
# Session 42's eighth call: the short decode attention without its early requests of the context's rows
# (SHORT_PREFETCH=0, shipped in the kernel cache: at 32 sequences ~8 MB land while QKV's split groups publish and
# sum their parts), 32 int4 sequences two rounds alternating; batch 1 once each.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
NP=CHATGLM_NVRTC_DEFINES=SHORT_PREFETCH=0
for i in 1 2; do echo "round $i: 32 int4 sequences: default $(bn X=1) | no early KV requests $(bn "$NP")"; done
echo "batch 1 q4_0: default $(b1 X=1) | no early KV requests $(b1 "$NP")"
