#!/usr/bin/env bash
# Builds the chatglm_rs Python package into a fresh virtual environment with
# the README's install command and runs its pytest suite.
# VENV=<dir> reuses a venv; PYTHON=<python3> picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-target/python-venv}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q pytest
# The README's install command (maturin is fetched as the build backend).
"$VENV/bin/pip" install -q ./crates/chatglm-python
cd crates/chatglm-python/tests
"../../../$VENV/bin/python" -m pytest -q "$@"
