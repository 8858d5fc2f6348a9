#!/usr/bin/env bash
# Session 25's device call (from the repository root, after tests/gpu/run.sh build and tests/gpu/pack.sh): the
# GPU suites and 32 int4 sequences under the defaults, without the norm fold and without batched-step graphs
# (tests/gpu/quant_ab.sh), a CUPTI timeline of 32 f16 sequences with and without the fold, and batch-1 decode.
set -uo pipefail
cd "$(dirname "$0")/../../.."
out=${OUT:-device-bin/report}
export OUT=$out
QB=${QB:-0} CASES="CHATGLM_NORM_FOLD=0;CHATGLM_CUDA_BATCH_GRAPHS=0" ROUNDS=${ROUNDS:-2} timeout 420 tests/gpu/quant_ab.sh
for fold in 1 0; do
  echo "== timeline, 32 sequences, batched, fold $fold"
  CHATGLM_NORM_FOLD=$fold PROFILE_DTYPES= PROFILE_CONCURRENCY=32 CHATGLM_GPU_ACTIVATIONS=batched timeout 100 \
    tests/gpu/profile_quant.sh "$out/prof$fold" >/dev/null 2>&1
  tail -16 "$out/prof$fold/profile.txt"
done
BIN=device-bin
. tests/gpu/device_env.sh
for d in q4_0 q8_0; do
  echo "decode $d: $(timeout 60 $BIN/chatglm bench --device cuda --synthetic chatglm2-6b --dtype $d --prompt-len 16 --gen-len 128 --repeat 2 2>&1 | grep -E "tok/s" | tail -2 | tr "\n" " ")"
done
