#!/usr/bin/env bash
# Session 44's tenth call: on run 304's default, the decode attention without its entry prefetches of the context's
# rows (SHORT_PREFETCH=0: the first two tiles are now loaded, the later rows' requests evicted before use), three
# rounds alternating; every block of layer 3's attention stamped (SHORT_STAMPS=2) at context 144.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/decode_mma-*.cubin
D=CHATGLM_NVRTC_DEFINES
for i in 1 2 3; do echo "round $i: 32: default $(bn X=1) | no entry prefetch $(bn "$D=SHORT_PREFETCH=0")"; done
echo "batch 1 q4_0: default $(b1 X=1) | no entry prefetch $(b1 "$D=SHORT_PREFETCH=0")"
env "$D=SHORT_STAMPS=2" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
  --gen-len 20 --concurrency 32 >"$R/stamps.txt" 2>&1
python3 tests/gpu/layer_stamps.py "$R/stamps.txt" | tail -8
