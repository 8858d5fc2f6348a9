#!/usr/bin/env bash
# Session 40: batch-1 q4_0 under every lookup order, with the default cubin and with QMMG_WIDE_PAIRS_4=7's
# (run 274: +1.1% at 32 int4 sequences, −0.4% at batch 1 under hot-last), two rounds alternating; then a
# placement search (tests/gpu/layout_search.sh) under QMMG_WIDE_PAIRS_4=7; 32 sequences under the best.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
P4=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS_4=7
for i in 1 2; do
  for o in hot-last reverse global-2 global-3 hot global list; do
    echo "round $i, order $o: default $(b1 CHATGLM_CUDA_LOAD_ORDER=$o) | pairs_4 7 $(b1 "$P4" CHATGLM_CUDA_LOAD_ORDER=$o)"
  done
done
(export "${P4?}"; N=${SEARCH_N:-16} TOP=3 ROUNDS=2 OUT=$R bash tests/gpu/layout_search.sh >/dev/null 2>&1)
cat "$R/search.txt"
