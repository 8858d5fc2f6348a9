#!/usr/bin/env bash
# Batch-1 q4_0 decode under different code placements of the same kernels (from the repository root, after
# tests/gpu/run.sh build and tests/gpu/pack.sh; session 32's build beside it as in session35.sh): the kernels'
# lookup order (CHATGLM_CUDA_LOAD_ORDER, LAYOUTS: default "list hot hot-last reverse") and the driver's eager
# module loading (EAGER=0: not), and the placements LAYOUT_ENVS describes (below),
# ROUNDS rounds (default 2), alternating; then q8_0 batch-1 and 32 int4 sequences under LAYOUTS_MORE (default
# "list hot"), and the int4 + 8,192-token memory probe. Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
[ -f "$BIN/s32.txz" ] && tar xf "$BIN/s32.txz" -C "$BIN"
OUT=${OUT:-$BIN/report}
mkdir -p "$OUT"
s32=""
if [ -f "$BIN/kcache_s32.tgz" ]; then
  mkdir -p /tmp/kc_s32 && tar xf "$BIN/kcache_s32.tgz" -C /tmp/kc_s32 && s32=/tmp/kc_s32/tmp/chatglm-kernels
fi
b() { # label, env assignments..., -- bench arguments
  local label=$1 envs=()
  shift
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  echo "$label $* :: $(env "${envs[@]}" timeout 150 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b "$@" 2>&1 |
    grep -E '^decode  |^batch' | tr '\n' ' ')"
}
one=(--dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2)
for _ in $(seq "${ROUNDS:-2}"); do
  for o in ${LAYOUTS-list hot hot-last reverse}; do
    b "$o" CHATGLM_CUDA_LOAD_ORDER="$o" -- "${one[@]}"
  done
  # LAYOUT_ENVS: lines of "label VAR=value ...", e.g. "e4 CHATGLM_CUDA_LOAD_FIRST=qmma_0_1_1_2,qmma_0_1_2_2".
  while read -r label envs; do
    [ -n "$label" ] || continue
    # shellcheck disable=SC2086 # the line's assignments, split
    b "$label" $envs -- "${one[@]}"
  done <<<"${LAYOUT_ENVS:-}"
  [ "${EAGER:-1}" = 1 ] && b eager CUDA_MODULE_LOADING=EAGER -- "${one[@]}"
  if [ -n "$s32" ] && [ -x "$BIN/s32/chatglm" ]; then
    echo "s32 :: $(CHATGLM_KERNEL_CACHE=$s32 timeout 150 "$BIN/s32/chatglm" bench --device cuda --synthetic chatglm2-6b \
      "${one[@]}" 2>&1 | grep -E '^decode  ' | tr '\n' ' ')"
    [ "${EAGER:-1}" = 1 ] && echo "s32-eager :: $(CUDA_MODULE_LOADING=EAGER CHATGLM_KERNEL_CACHE=$s32 timeout 150 "$BIN/s32/chatglm" bench \
      --device cuda --synthetic chatglm2-6b "${one[@]}" 2>&1 | grep -E '^decode  ' | tr '\n' ' ')"
  fi
done | tee "$OUT/layouts.txt"
for o in ${LAYOUTS_MORE-list hot}; do
  b "$o" CHATGLM_CUDA_LOAD_ORDER="$o" -- --dtype q8_0 --prompt-len 8 --gen-len 128 --repeat 2
  b "$o" CHATGLM_CUDA_LOAD_ORDER="$o" CHATGLM_GPU_ACTIVATIONS=batched -- --dtype q4_0 --prompt-len 128 --gen-len 256 \
    --concurrency 32
done | tee -a "$OUT/layouts.txt"
if [ "${MEMORY:-1}" = 1 ]; then
  tests/gpu/mem_probe.sh q4_0-8k "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
    --prompt-len 8192 --gen-len 8 2>&1 | tail -3
  tests/gpu/mem_probe.sh q4_0-8k-q8kv "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
    --kv-dtype q8_0 --prompt-len 8192 --gen-len 8 2>&1 | tail -3
fi
