#!/usr/bin/env bash
# Session 41's first call: 7-pair wide SwiGLU groups at 4 token tiles on 16 warps (QMMG_WIDE_PAIRS_4=7 with
# QMMG_WIDE_XT=1: the last two tiles on two warps each, so every scheduler holds 28 of a chunk's 112 units) against
# the default and against 7 pairs on 14 warps; the qmma and cuda_generate suites under it; each product alone at 32
# tokens; batch-1 q4_0 (the module image changes); then the default's phase stamps in real 32-sequence steps
# (QMMG_STAMPS=1, shipped in the kernel cache). After tests/gpu/run.sh build with
# KERNEL_CACHE_VARIANTS="QMMG_WIDE_PAIRS_4=7,QMMG_WIDE_XT=1;QMMG_WIDE_PAIRS_4=7;QMMG_STAMPS=1" and tests/gpu/pack.sh.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
XT=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS_4=7,QMMG_WIDE_XT=1
P7=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS_4=7
suite "$XT" qmma
suite "$XT" cuda_generate
for c in X=1 "$XT" "$P7"; do
  echo "== qmma_bench $c"
  env "$c" timeout 120 "$BIN/qmma_bench" 2>&1 | grep -E " 32 " | head -12
done
for i in 1 2 3; do echo "32 int4 sequences, round $i: default $(bn X=1) | xt $(bn "$XT") | 7 pairs $(bn "$P7")"; done
for i in 1 2; do echo "batch 1 q4_0, round $i: default $(b1 X=1) | xt $(b1 "$XT")"; done
echo "== stamps (default, 32 sequences)"
CHATGLM_NVRTC_DEFINES=QMMG_STAMPS=1 timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
  --dtype q4_0 --prompt-len 128 --gen-len 8 --concurrency 32 >"$R/stamps.txt" 2>&1
python3 tests/gpu/qmmg_stamps.py "$R/stamps.txt" 2>&1 | head -80
