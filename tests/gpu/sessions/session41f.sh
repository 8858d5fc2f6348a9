#!/usr/bin/env bash
# Session 41's sixth call: the qmmx module's products launching the kernel after them as soon as all their blocks
# have started (QMMX_EARLY_DEPENDENTS=1, shipped in the kernel cache: 4h→h's first blocks could take the 9 SMs that
# h→4h's 123 groups leave free) against the default, 32 int4 sequences, three rounds alternating; batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
EA=CHATGLM_NVRTC_DEFINES=QMMX_EARLY_DEPENDENTS=1
for i in 1 2 3; do echo "round $i: 32 int4 sequences: default $(bn X=1) | early $(bn "$EA"); batch 1 q4_0 $(b1 X=1)"; done
