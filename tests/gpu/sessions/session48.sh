#!/usr/bin/env bash
# Session 48's first call: the embedding gather folding the first layer's RMSNorm (no quantize_x launch between
# the gather and the first QKV product of a batched step; CHATGLM_EMBED_FOLD=0: as before), A/B with every row
# missing the row cache (real text: a 32-row step nearly always has a miss) and with every row hitting; what a
# bus read of a step's rows costs (tests/gpu/bus_probe.cu); the suites; a timeline of the missing step's edge.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
/usr/local/cuda/bin/nvcc -O3 -arch=sm_90 tests/gpu/bus_probe.cu -o /tmp/bus_probe && timeout 60 /tmp/bus_probe
C=CHATGLM_CUDA_EMBED_CACHE_MIB
for s in embed cuda cuda_generate; do suite X=1 $s; done
for i in 1 2 3; do
  echo "32 misses: fold $(bn $C=0) | none $(bn $C=0 CHATGLM_EMBED_FOLD=0) ;; hits: fold $(bn X=1) | none $(bn CHATGLM_EMBED_FOLD=0)"
done
echo "batch 1 q4_0 $(b1 X=1) $(b1 X=1), q8_0 $(DTYPE=q8_0 b1 X=1); 16: $(N=16 bn X=1) 64: $(N=64 bn X=1)"
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so $C=0 \
  KTRACE_OUT=/tmp/kt-1.csv timeout 120 "$BIN/chatglm" bench --device cuda \
  --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
xz -c /tmp/kt-1.csv >"$R/kt-1.csv.xz"
python3 tests/gpu/ktrace_critical.py /tmp/kt-1.csv --skip 0.05 --window qmmx_ | head -30
