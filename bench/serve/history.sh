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
if [[ -z "${CHATGLM_BIN:-}" ]]; then
    (cd "$root" && cargo build --release -p chatglm-cli)
    CHATGLM_BIN=$root/target/release/chatglm
fi
for cache in 8 0; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp /tmp/chatglm-history-XXXX.log)
    # shellcheck disable=SC2086
    "$CHATGLM_BIN" serve -m "$model" --dtype "${DTYPE:-auto}" --host 127.0.0.1 --port "$port" \
        --prefix-cache "$cache" ${SERVE_ARGS:-} 2>"$log" &
    server=$!
    for _ in $(seq 1 1200); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
            >/dev/null 2>&1; then break; fi
        if ! kill -0 $server 2>/dev/null; then cat "$log"; exit 1; fi
        sleep 0.5
    done
    python3 "$here/history.py" --url "http://127.0.0.1:$port" --rounds "${ROUNDS:-3}" --repeat "${REPEAT:-6}" \
        --max-tokens "${MAX_TOKENS:-8}" --label "--prefix-cache $cache: " || { kill $server; cat "$log"; exit 1; }
    kill -TERM $server; wait $server 2>/dev/null || true
done
