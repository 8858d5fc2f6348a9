#!/usr/bin/env bash
# Builds `chatglm`, installs the official `openai` client in a venv and runs
# test_openai_client.py against `chatglm serve` on the tiny dev model.
# Skips (exit 0, with a message) when the client cannot be installed.
#
# Env: CHATGLM_BIN (use this binary, skip the build), CHATGLM_TESTDATA,
#      CHATGLM_VENV (venv folder, default target/server-test-venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
testdata=${CHATGLM_TESTDATA:-$root/testdata}
model=$testdata/dev/model/safetensors-f32

if [[ -z "${CHATGLM_BIN:-}" ]]; then
    (cd "$root" && cargo build --release -p chatglm-cli)
    CHATGLM_BIN=$root/target/release/chatglm
fi

venv=${CHATGLM_VENV:-$root/target/server-test-venv}
if [[ ! -x "$venv/bin/python" ]]; then
    if ! python3 -m venv "$venv"; then
        echo "SKIP: python3 -m venv failed; cannot run the openai client test"
        exit 0
    fi
fi
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai; then
        echo "SKIP: could not install the openai package from PyPI"
        exit 0
    fi
fi
exec "$venv/bin/python" "$here/test_openai_client.py" --bin "$CHATGLM_BIN" --model "$model"
