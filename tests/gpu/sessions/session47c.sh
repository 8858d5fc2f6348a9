#!/usr/bin/env bash
# Session 47's third call: where the 32-sequence step idles (run 330: ~25 µs a step with no kernel on the
# critical path, in a window that held other runs too). Two CUPTI timelines of the default, their CSVs kept,
# critical-path shares over the batched decode steps alone (the first to the last qmmx kernel).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
for i in 1 2; do
  LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so \
    KTRACE_OUT=/tmp/kt-$i.csv timeout 120 "$BIN/chatglm" bench --device cuda \
    --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
  xz -c /tmp/kt-$i.csv >"$R/kt-$i.csv.xz"
done
python3 tests/gpu/ktrace_critical.py /tmp/kt-1.csv /tmp/kt-2.csv --skip 0.05 --window qmmx_ | head -30
