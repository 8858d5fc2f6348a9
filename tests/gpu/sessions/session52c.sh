#!/usr/bin/env bash
# Session 52's third call, on a fresh machine start: the default's 32-sequence figure a third time, alternating with
# other placements of the qmmx module (CHATGLM_CUDA_QMMX_ORDER, which moves no kernel of a one-token step): each
# format's products together in a layer's order (`format:3,1,2`), QKV then SwiGLU then the residual products
# (`3,2,1`), SwiGLU first then QKV (`2,3,1`). Then batch 1 and 16 / 64 sequences. Rebuild the binary alone for it
# (cargo build --release -p chatglm-cli; cp, strip into device-bin/; tests/gpu/pack.sh): no cubin changes.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
Q=CHATGLM_CUDA_QMMX_ORDER
for i in 1 2 3 4 5; do
  echo "32: default $(bn X=1) | format:3,1,2 $(bn $Q=format:3,1,2) | 3,2,1 $(bn $Q=3,2,1) | 2,3,1 $(bn $Q=2,3,1)"
done
echo "batch 1 q4_0: $(b1 X=1) / $(b1 X=1); q8_0: $(DTYPE=q8_0 b1 X=1)"
echo "16: $(N=16 bn X=1); 64: $(N=64 bn X=1)"
