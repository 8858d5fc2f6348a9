#!/usr/bin/env bash
# Session 43's fourth call (same build as session43c.sh): QMMX_EPI=3 (the SwiGLU epilogue and a row's last chunk
# compact, the residual epilogue as before: run 293's best) against 1 once more; batch 1 q4_0 twice and q8_0 (the
# qmma module is the final one: its cubin byte-identical to session 39's); cuda_generate under EPI=3; int4 + an
# 8,192-token dialogue under tests/gpu/mem_probe.sh.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
echo "round 3: EPI=3 $(bn "$D=QMMX_EPI=3") | EPI=1 $(bn "$D=QMMX_EPI=1") | EPI=3 $(bn "$D=QMMX_EPI=3")"
echo "16 / 64 sequences under EPI=3: $(N=16 bn "$D=QMMX_EPI=3") / $(N=64 bn "$D=QMMX_EPI=3")"
echo "batch 1 q4_0: $(b1 X=1) $(b1 X=1) | q8_0: $(DTYPE=q8_0 b1 X=1)"
suite "$D=QMMX_EPI=3" cuda_generate
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -1
