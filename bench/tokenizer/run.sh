#!/usr/bin/env bash
# Tokenizer encode throughput: chatglm-tokenizer vs SentencePiece (C++) on the
# same ~1 MB mixed text and the real ChatGLM2 tokenizer.model, same run.
#
#   bench/tokenizer/run.sh            # RUNS=10 by default
#   RUNS=20 CHATGLM_TESTDATA=/path/to/testdata bench/tokenizer/run.sh
#
# Also checks that both produce identical ids on the whole corpus and on
# random Unicode text (bench/tokenizer/random_text.py).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TESTDATA=${CHATGLM_TESTDATA:-$ROOT/testdata}
MODEL=$TESTDATA/chatglm2-tokenizer/tokenizer.model
RUNS=${RUNS:-10}
VENV=${VENV:-$ROOT/.venv-tokenizer-bench}
OUT=$ROOT/target/tokenizer-bench
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import sentencepiece" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q sentencepiece
fi

"$VENV/bin/python" bench/tokenizer/make_corpus.py --model "$MODEL" --testdata "$TESTDATA" --out "$OUT/corpus.txt"
cargo build -q --release -p chatglm-tokenizer --example encode_bench

rust_line=$(target/release/examples/encode_bench "$MODEL" "$OUT/corpus.txt" "$RUNS" --ids "$OUT/ids-rust.txt")
sp_line=$("$VENV/bin/python" bench/tokenizer/sp_bench.py "$MODEL" "$OUT/corpus.txt" "$RUNS" "$OUT/ids-sp.txt")
echo "$rust_line"
echo "$sp_line"

if cmp -s "$OUT/ids-rust.txt" "$OUT/ids-sp.txt"; then
    echo "ids: identical ($(wc -l < "$OUT/ids-rust.txt") tokens)"
else
    echo "ids: DIFFER from sentencepiece" >&2
    exit 1
fi

# Differential check on random Unicode text, real and dev tokenizers.
DEV_MODEL=$TESTDATA/dev/model/safetensors-f32/tokenizer.model
for seed in 1 2 3; do
    "$VENV/bin/python" bench/tokenizer/random_text.py "$seed" 100000 "$OUT/random-$seed.txt"
    for model in "$MODEL" "$DEV_MODEL"; do
        target/release/examples/encode_bench "$model" "$OUT/random-$seed.txt" 1 --ids "$OUT/ids-rust.txt" >/dev/null
        "$VENV/bin/python" bench/tokenizer/sp_bench.py "$model" "$OUT/random-$seed.txt" 1 "$OUT/ids-sp.txt" >/dev/null
        if ! cmp -s "$OUT/ids-rust.txt" "$OUT/ids-sp.txt"; then
            echo "random text seed $seed, $model: ids DIFFER from sentencepiece" >&2
            exit 1
        fi
    done
done
echo "random text (3 seeds x 100k fragments, real + dev tokenizer): ids identical"

best() { sed -E 's/.*best ([0-9.]+) MB\/s.*/\1/' <<<"$1"; }
python3 -c "import sys; r, s = map(float, sys.argv[1:]); print(f'ratio (rust / sentencepiece, best MB/s): {r / s:.2f}x')" \
    "$(best "$rust_line")" "$(best "$sp_line")"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
