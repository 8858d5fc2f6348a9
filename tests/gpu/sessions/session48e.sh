#!/usr/bin/env bash
# Session 48's fifth call: the gather reading rows of one id once (run 343's form, device-bin/chatglm) against
# session 47's gather (device-bin/chatglm-old: the same binary at commit e67cbd2; its embed_cached module is
# compiled here at first use — every other module's key unchanged), alternating, five rounds, with every row
# hitting the cache and every row over the bus (a cache of no slots); batch 1 q4_0 both.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
C=CHATGLM_CUDA_EMBED_CACHE_MIB
bno() { env "$@" timeout 120 "$BIN/chatglm-old" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
  --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'; }
echo "warm old: $(bno X=1)"
for i in 1 2 3 4 5; do
  echo "hits: new $(bn X=1) old $(bno X=1) | misses: new $(bn $C=0) old $(bno $C=0)"
done
b1o() { env "$@" timeout 90 "$BIN/chatglm-old" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
  --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'; }
for i in 1 2; do echo "batch 1 q4_0: new $(b1 X=1) old $(b1o X=1)"; done
