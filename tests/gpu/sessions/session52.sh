#!/usr/bin/env bash
# Session 52's first call: is run 350's 32-sequence figure under the layer's qmmx order (CHATGLM_CUDA_QMMX_ORDER=step,
# the default since 1977ce5) robust on a fresh machine? Eight rounds alternating the default against the old listed
# order at 32 int4 sequences; batch 1 q4_0 (three times) and q8_0; 16 / 64 sequences; int4 + an 8K dialogue's GPU
# memory; the kernel suite qmma. Build with tests/gpu/run.sh build, then tests/gpu/pack.sh; carry
# ["device-bin/pack.txz", "device-bin/kcache.tgz"].
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
for i in 1 2 3 4 5 6 7 8; do
  echo "32: default $(bn X=1) | list $(bn CHATGLM_CUDA_QMMX_ORDER=list)"
done
echo "batch 1 q4_0: $(b1 X=1) / $(b1 X=1) / $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
echo "16: $(N=16 bn X=1); 64: $(N=64 bn X=1)"
b=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b)
tests/gpu/mem_probe.sh q4_0-8k "${b[@]}" --dtype q4_0 --prompt-len 8192 --gen-len 8 2>&1 | grep -E "peak GPU" | tail -1
tests/gpu/mem_probe.sh q4_0-8k-q8kv "${b[@]}" --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 |
  grep -E "peak GPU" | tail -1
suite X=1 qmma
