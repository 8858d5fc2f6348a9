#!/usr/bin/env bash
# Session 52's second call: the remaining GPU suites under the defaults (cuda, cuda_generate, embed), then four more
# rounds of the default at 32 int4 sequences and batch 1 — a second machine start's figures for the same build.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
suite X=1 cuda
suite X=1 cuda_generate
suite X=1 embed
for i in 1 2 3 4; do
  echo "32: default $(bn X=1)"
done
echo "batch 1 q4_0: $(b1 X=1) / $(b1 X=1)"
