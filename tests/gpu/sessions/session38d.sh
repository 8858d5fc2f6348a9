#!/usr/bin/env bash
# Session 38's fourth call (after tests/gpu/run.sh build and tests/gpu/pack.sh): batch-1 q4_0 decode under the
# kernels' lookup orders LAYOUTS (default "global-2 global-3 hot-last list"; global-2 is the default), ROUNDS rounds
# alternating (default 2); then 32 int4 sequences under the default and global-3.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
for _ in $(seq "${ROUNDS:-2}"); do
  for o in ${LAYOUTS:-global-2 global-3 hot-last list}; do
    echo "$o batch 1 q4_0: $(CHATGLM_CUDA_LOAD_ORDER=$o timeout 90 "$BIN/chatglm" bench --device cuda \
      --synthetic chatglm2-6b --dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ')"
  done
done
for o in global-2 global-3; do
  echo "$o 32 int4: $(CHATGLM_CUDA_LOAD_ORDER=$o timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
    --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep '^batch')"
done
