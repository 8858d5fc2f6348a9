#!/usr/bin/env bash
# Session 47's fourth call: the synthetic model's embedding table as a real load holds it. A quantized model's
# table stays on the host in the layers' format (loader.rs: q4_0 rows of 2,304 bytes for ChatGLM2-6B), but the
# CUDA backend's synthetic table was f16 (8,192 bytes a row) — and each decode step reads its rows over the bus
# (run 331: embed_1 12–15 µs of a 2.70 ms 32-sequence step). chatglm-prev: the f16 table; chatglm: q4_0 rows.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
# bn / b1 of the binary named first.
with() { local exe=$1; shift; cp "$BIN/$exe" /tmp/chatglm-run && (BIN=/tmp/x; mkdir -p $BIN; cp /tmp/chatglm-run $BIN/chatglm; "$@"); }
for i in 1 2 3 4; do
  echo "round $i 32 int4 sequences: q4_0 table $(with chatglm bn) | f16 table $(with chatglm-prev bn)"
done
for i in 1 2; do
  echo "round $i batch 1 q4_0: q4_0 table $(with chatglm b1) | f16 table $(with chatglm-prev b1)"
done
echo "batch 1 q8_0: q8_0 table $(DTYPE=q8_0 with chatglm b1) | f16 table $(DTYPE=q8_0 with chatglm-prev b1)"
echo "16 / 64 sequences: $(N=16 with chatglm bn) / $(N=64 with chatglm bn)"
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
for exe in chatglm chatglm-prev; do
  LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so \
    KTRACE_OUT=/tmp/kt-$exe.csv timeout 120 "$BIN/$exe" bench --device cuda \
    --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
done
python3 tests/gpu/ktrace_critical.py /tmp/kt-chatglm.csv /tmp/kt-chatglm-prev.csv --skip 0.05 --window qmmx_ | head -16
