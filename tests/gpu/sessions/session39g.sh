#!/usr/bin/env bash
# Session 39's last call: run 273's 7-pair wide groups at 4 token tiles alone (QMMG_WIDE_PAIRS_4=7: 17–32 f16
# tokens, where 123 groups fit 132 SMs; 16 and 64 sequences keep 8 pairs) against the default — batch-1 q4_0 (its
# module image changes with them), 32, 16 and 64 int4 sequences, alternating; cuda_generate under it (its 4-tile
# f16 kernels are run 273's, which passed the qmma suite).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
P4=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS_4=7
s=$(date +%s)
env "$P4" timeout 60 "$BIN/tests/cuda_generate" --test-threads=1 >"$R/t-cuda_generate-p4.log" 2>&1
echo "cuda_generate under $P4: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$R/t-cuda_generate-p4.log" | tail -1)"
for i in 1 2 3; do echo "batch 1 q4_0, round $i: default $(b1 X=1) | pairs_4 7 $(b1 "$P4")"; done
for i in 1 2; do echo "32 int4 sequences, round $i: default $(bn X=1) | pairs_4 7 $(bn "$P4")"; done
for n in 16 64; do echo "$n int4 sequences: default $(N=$n bn X=1) | pairs_4 7 $(N=$n bn "$P4")"; done
echo "32 int4 sequences, pairs_4 7 with CHATGLM_QMMG_SPLIT=aligned: $(bn "$P4" CHATGLM_QMMG_SPLIT=aligned)"
echo "batch 1 q8_0 (default): $(DTYPE=q8_0 b1)"
