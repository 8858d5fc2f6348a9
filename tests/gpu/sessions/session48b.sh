#!/usr/bin/env bash
# Session 48's second call: rows of one id in a gather read once (the first row of the id stages it, the others copy
# its output: run 340's probe had 32 blocks reading one mapped row in 10.6 µs, 32 different rows in 3.7). The suites;
# 32 sequences with every row hitting the cache (the default) and every row over the bus (a cache of no slots),
# alternating; batch 1; 16 / 64 sequences; int4 + an 8K dialogue; a timeline of the missing step's edge.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for s in embed cuda cuda_generate; do suite X=1 $s; done
for i in 1 2 3 4; do echo "32: hits $(bn X=1) | misses $(bn $C=0)"; done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1) (misses $(b1 $C=0)), q8_0 $(DTYPE=q8_0 b1 X=1) $(DTYPE=q8_0 b1 X=1)"
echo "16: $(N=16 bn X=1) 64: $(N=64 bn X=1)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "GPU memory|peak GPU" | tail -2
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "GPU memory|peak GPU" | tail -2
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
env LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so $C=0 \
  KTRACE_OUT=/tmp/kt-1.csv timeout 120 "$BIN/chatglm" bench --device cuda \
  --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
xz -c /tmp/kt-1.csv >"$R/kt-1.csv.xz"
python3 tests/gpu/ktrace_critical.py /tmp/kt-1.csv --skip 0.05 --window qmmx_ | head -24
