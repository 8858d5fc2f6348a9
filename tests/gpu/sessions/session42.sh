#!/usr/bin/env bash
# (The record of run 284: the cluster kernels, CHATGLM_DECODE_SHORT_FILL and the test it runs were reverted in 3a2fff0.)
# Session 42's first call: split groups of the 32-token f16 products summed through thread block clusters
# (qmmc_*, the qmmx module; CHATGLM_QMMG_CLUSTER=0: the workspace, as before) — their bits against the workspace
# path (the cuda test gpu_cluster_sums_keep_batched_decode_bits, qmma), then 32 int4 sequences with and without,
# and with the short attention's heads over two blocks a group (CHATGLM_DECODE_SHORT_FILL=1), three rounds
# alternating; batch 1; every suite.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum "$CHATGLM_KERNEL_CACHE"/qmma-*.cubin "$CHATGLM_KERNEL_CACHE"/qmmx-*.cubin 2>/dev/null
timeout 300 "$BIN/tests/cuda" --test-threads=1 gpu_cluster_sums --nocapture >"$R/t-cluster.log" 2>&1
echo "cluster bits: rc=$? $(grep -E '^test result' "$R/t-cluster.log" | tail -1)"
grep -E "clustered launches|panicked|differ|change" "$R/t-cluster.log" | head -12
C0=CHATGLM_QMMG_CLUSTER=0
FILL=CHATGLM_DECODE_SHORT_FILL=1
for i in 1 2; do
  echo "round $i: 32 int4 sequences: clusters $(bn X=1) | workspace $(bn "$C0") | fill $(bn "$FILL") | fill 4 warps $(bn "$FILL" CHATGLM_DECODE_SHORT_WARPS=4)"
done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1)"
suite X=1 qmma
suite X=1 cuda
