#!/usr/bin/env bash
# Multi-round chat latency with and without KV reuse of the previous round (`--prefix-cache 8` vs 0):
# starts `chatglm serve` twice on a free loopback port and runs history.py against each.
#
#   bench/serve/history.sh                                   # tiny dev model (seconds)
#   MODEL=/tmp/synth6b DTYPE=q4_0 bench/serve/history.sh     # synthetic 6B on the CPU (minutes)
#   MODEL=synthetic:chatglm2-6b:testdata/chatglm2-tokenizer/tokenizer.model SERVE_ARGS="--device cuda" \
#       bench/serve/history.sh                               # on a GPU, random 6B weights
#
# Env: MODEL, DTYPE (auto), SERVE_ARGS, CHATGLM_BIN (skip the build), ROUNDS (3), REPEAT (6: the first
#      question repeated, ~48 tokens each), MAX_TOKENS (8).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
testdata=${CHATGLM_TESTDATA:-$root/testdata}
model=${MODEL:-$testdata/dev/model/safetensors-f32}
# shellcheck source=bench/serve/lib.sh
source "$here/lib.sh"
find_chatglm
for cache in 8 0; do
    # shellcheck disable=SC2086
    start_server -m "$model" --dtype "${DTYPE:-auto}" --prefix-cache "$cache" ${SERVE_ARGS:-}
    python3 "$here/history.py" --url "http://127.0.0.1:$port" --rounds "${ROUNDS:-3}" --repeat "${REPEAT:-6}" \
        --max-tokens "${MAX_TOKENS:-8}" --label "--prefix-cache $cache: " || { kill $server; cat "$log"; exit 1; }
    kill -TERM $server; wait $server 2>/dev/null || true
done
