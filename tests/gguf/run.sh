#!/usr/bin/env bash
# Cross-checks `chatglm quantize` output with llama.cpp's Python GGUF reader
# (the `gguf` package from PyPI): writes the dev model in every format, then
# runs check_gguf.py on the files. Skips (exit 0, with a message) when the
# package cannot be installed, e.g. offline.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
testdata=${CHATGLM_TESTDATA:-$root/testdata}
venv=${GGUF_VENV:-$root/target/gguf-venv}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv"; then
    echo "SKIP: cannot create a Python venv at $venv"
    exit 0
fi
if ! "$venv/bin/python" -c "import gguf, numpy" 2>/dev/null \
    && ! "$venv/bin/pip" install --quiet gguf numpy; then
    echo "SKIP: cannot install the gguf package from PyPI"
    exit 0
fi
echo "gguf-py $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("gguf"))')"

cargo build --quiet --release -p chatglm-cli --manifest-path "$root/Cargo.toml"
for f in f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; do
    "$root/target/release/chatglm" quantize -m "$testdata/dev/model/safetensors-f32" --dtype "$f" \
        -o "$out/dev-$f.gguf" --force
done
"$venv/bin/python" "$root/tests/gguf/check_gguf.py" --reference "$out/dev-f32.gguf" "$out"/dev-*.gguf
