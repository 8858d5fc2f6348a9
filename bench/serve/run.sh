#!/usr/bin/env bash
# Starts `chatglm serve` on a free loopback port, runs load_test.py against it
# at 1, 8 and 32 concurrent streaming clients, stops the server.
#
#   bench/serve/run.sh                          # tiny dev model (seconds)
#   MODEL=/work/synth6b DTYPE=q4_0 CONCURRENCY=1,8 REQUESTS=4 MAX_TOKENS=16 SECONDS_PER_LEVEL=150 \
#       bench/serve/run.sh                      # synthetic 6B, quantized on load (minutes)
#   MODEL=synthetic:chatglm2-6b:testdata/chatglm2-tokenizer/tokenizer.model SERVE_ARGS="--device cuda" \
#       MAX_BATCH=64 CONCURRENCY=64 REQUESTS=256 MAX_TOKENS=256 bench/serve/run.sh   # on a GPU, random 6B weights
#
# Env: MODEL, DTYPE (auto), CONCURRENCY (1,8,32), REQUESTS (64 per level),
#      MAX_TOKENS (64), SECONDS_PER_LEVEL (60: stop issuing requests after this long), CHATGLM_BIN (skip the build),
#      SERVE_ARGS (extra flags for `chatglm serve`, e.g. --device cuda), MAX_BATCH (32), JSON (write results there),
#      MIX=1 (varied prompt and output lengths; MAX_PROMPT_WORDS caps them, e.g. 100 for the dev model's
#      512-token context), RATE (open-loop Poisson arrivals, requests/s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
testdata=${CHATGLM_TESTDATA:-$root/testdata}
model=${MODEL:-$testdata/dev/model/safetensors-f32}

# shellcheck source=bench/serve/lib.sh
source "$here/lib.sh"
find_chatglm
# shellcheck disable=SC2086
start_server -m "$model" --dtype "${DTYPE:-auto}" --max-batch "${MAX_BATCH:-32}" ${SERVE_ARGS:-}
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
echo "server: $(head -1 "$log")"
echo "load test: model $model, dtype ${DTYPE:-auto}, max_tokens ${MAX_TOKENS:-64}, $(nproc) cores"
python3 "$here/load_test.py" --url "http://127.0.0.1:$port" \
    --concurrency "${CONCURRENCY:-1,8,32}" --requests "${REQUESTS:-64}" \
    --max-tokens "${MAX_TOKENS:-64}" --seconds "${SECONDS_PER_LEVEL:-60}" \
    ${MIX:+--mix} ${RATE:+--rate "$RATE"} ${MAX_PROMPT_WORDS:+--max-prompt-words "$MAX_PROMPT_WORDS"} ${JSON:+--json "$JSON"}
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" | grep -E '^chatglm_(requests_total|completion_tokens_total|engine_steps_total|engine_step_tokens_total|step_forward_seconds_total|step_host_seconds_total|pad_rows_total|steps_queued_total|chained_rows_total) '
