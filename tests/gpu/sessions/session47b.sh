#!/usr/bin/env bash
# Session 47's second call: which of the 32-sequence step's kernels move with the lookup order? (Run 329: `global-2`
# and `global-3` read 32 int4 sequences +0.4% over the default `hot-last`, batch 1 −0.9%.) Under each order only
# the step's kernels outside the qmmx module can move — argmax_rows, stage_step, embed_1, quantize_x and the output
# layer (qmmh_2_4_0); the attention's and the qmmx module's addresses do not depend on the order. CUPTI kernel
# timelines of the 32-sequence run under both, compared kernel by kernel; then four rounds of the three orders.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
for o in hot-last global-2 hot-last global-2; do
  LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so \
    KTRACE_OUT=/tmp/kt-$o.csv CHATGLM_CUDA_LOAD_ORDER=$o timeout 120 "$BIN/chatglm" bench --device cuda \
    --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
  [ -f /tmp/kt-$o-1.csv ] || { mv /tmp/kt-$o.csv /tmp/kt-$o-1.csv; continue; }
  mv /tmp/kt-$o.csv /tmp/kt-$o-2.csv
done
echo "== critical path (µs a step): hot-last 1, global-2 1, hot-last 2, global-2 2"
python3 tests/gpu/ktrace_critical.py /tmp/kt-hot-last-1.csv /tmp/kt-global-2-1.csv /tmp/kt-hot-last-2.csv \
  /tmp/kt-global-2-2.csv | head -30
O=CHATGLM_CUDA_LOAD_ORDER
for i in 1 2 3 4; do
  echo "round $i: hot-last $(bn $O=hot-last) | global-2 $(bn $O=global-2) | global-3 $(bn $O=global-3)"
done
