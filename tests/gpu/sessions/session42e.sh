#!/usr/bin/env bash
# (The record of run 288: QMMG_SCATTER was removed after it and the test it runs renamed gpu_qmmx_residual_products_keep_batched_decode_bits.)
# Session 42's sixth call: the qmmx module's residual and QKV products with their split groups summed by all the
# group's blocks, each for its own share of the tokens (QMMG_SCATTER, set in that module: publish the others'
# tokens' sums, wait for the group's count, add the K sums of its own tokens in block order, write their epilogue)
# against one summing block a group (QMMG_SCATTER=0, shipped in the kernel cache), three rounds alternating; the
# bits against the qmma module's kernels; batch 1; memory; every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
timeout 300 "$BIN/tests/cuda" --test-threads=1 gpu_scattered_sums --nocapture >"$R/t-scatter.log" 2>&1
echo "scattered sums' bits: rc=$? $(grep -E '^test result' "$R/t-scatter.log" | tail -1)"
grep -E "panicked|change" "$R/t-scatter.log" | head -6
S0=CHATGLM_NVRTC_DEFINES=QMMG_SCATTER=0
for i in 1 2 3; do echo "round $i: 32 int4 sequences: scatter $(bn X=1) | one summing block $(bn "$S0")"; done
echo "16 / 24 / 64 sequences: $(N=16 bn X=1) / $(N=24 bn X=1) / $(N=64 bn X=1)"
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1), q8_0 $(DTYPE=q8_0 b1 X=1)"
suite X=1 qmma
suite X=1 cuda
suite X=1 cuda_generate
suite X=1 chatglm_cuda-lib
