#!/usr/bin/env bash
# llama.cpp reads our GGUF files (tests/llama_cpp/interop.py): installs llama-cpp-python (it builds
# llama.cpp from source: ~10 min on 2 cores the first time) into a venv and runs the check.
# Not part of .ci/run (the build is long); run it after changing the GGUF writer.
# Env: VENV (default target/llama-venv), CHATGLM_BIN, CHATGLM_TESTDATA.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-target/llama-venv}
BIN=${CHATGLM_BIN:-$PWD/target/release/chatglm}
[ -x "$BIN" ] || cargo build --release -p chatglm-cli
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp, numpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  # Portable AVX2 build (never AVX-512), as on the issue's reference machine.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    "$VENV/bin/pip" install -q "llama-cpp-python==0.3.16" numpy
fi
exec "$VENV/bin/python" tests/llama_cpp/interop.py "$BIN" "${CHATGLM_TESTDATA:-$PWD/testdata}" target/llama-interop
