#!/usr/bin/env bash
# Session 46's third call: the step's argmax in one wave — at 32 rows the default 32 slices a row make 1,024
# blocks of 256 threads at 39 registers (40 allocated: 6 blocks a SM, 792 a wave), so a second wave of 232 follows
# the first; 16 slices a row (512 blocks, each thread's four float4 loads one round) fit one. CHATGLM_ARGMAX_SLICES
# 8 / 12 / 16 / 24 against the default, three rounds alternating at 32 int4 sequences; 16 and 64 sequences.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
A=CHATGLM_ARGMAX_SLICES
for i in 1 2 3; do
  echo "round $i: 32: default $(bn X=1) | 16 $(bn $A=16) | 8 $(bn $A=8) | 12 $(bn $A=12) | 24 $(bn $A=24)"
done
for n in 16 64; do echo "$n: default $(N=$n bn X=1) | 16 $(N=$n bn $A=16) | 8 $(N=$n bn $A=8)"; done
echo "batch 1 q4_0: $(b1 X=1)"
