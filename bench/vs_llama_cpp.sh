#!/usr/bin/env bash
# Side-by-side CPU benchmark on the same GGUF files: ChatGLM.rs (`chatglm bench`) and llama.cpp
# (llama-cpp-python from PyPI, which builds llama.cpp from source; one eval call per step).
#
#   bench/vs_llama_cpp.sh [SOURCE]     SOURCE: a ChatGLM2-6B checkpoint folder or .gguf file
#                                      (default: a synthetic one written by ../shared/bench/make_random_6b.py)
#
# For each format it writes $WORK/chatglm2-6b-<fmt>.gguf with `chatglm quantize` (the f16 file first,
# the others from it, so a 12.5 GB checkpoint and the three files fit in ~23 GB), then runs the two
# engines back to back, alternating, REPEAT times, and prints a markdown table of best values and ratios.
#
# Both sides use AVX2 only, as on the issue's reference machines: llama.cpp is built without native
# flags (AVX2, FMA, F16C) and ours runs CHATGLM_CPU_KERNELS=$KERNELS (default avx2; "" = the best this
# CPU has).
#
# Env: WORK=/work/llama-cpp-work  FORMATS="q4_0 q8_0 f16"  THREADS=2  PROMPT_LEN=512  GEN_LEN=32
#      REPEAT=2  VENV=target/llama-venv  CHATGLM=target/release/chatglm  KEEP_SOURCE=0  KERNELS=avx2
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/work/llama-cpp-work}"
FORMATS="${FORMATS:-q4_0 q8_0 f16}"
THREADS="${THREADS:-2}"
PROMPT_LEN="${PROMPT_LEN:-512}"
GEN_LEN="${GEN_LEN:-32}"
REPEAT="${REPEAT:-2}"
VENV="${VENV:-$REPO/target/llama-venv}"
CHATGLM="${CHATGLM:-$REPO/target/release/chatglm}"
mkdir -p "$WORK"
KERNELS="${KERNELS-avx2}"
[ -z "$KERNELS" ] || export CHATGLM_CPU_KERNELS="$KERNELS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[ -x "$CHATGLM" ] || (cd "$REPO" && cargo build --release -p chatglm-cli)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  log "installing llama-cpp-python (builds llama.cpp: ~10 min on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    "$VENV/bin/pip" install -q "llama-cpp-python==0.3.16" numpy
fi

SOURCE="${1:-}"
if [ -z "$SOURCE" ]; then
  SOURCE="$WORK/synth6b"
  if [ ! -f "$SOURCE/config.json" ] && [ ! -f "$WORK/chatglm2-6b-f16.gguf" ]; then
    log "writing a synthetic ChatGLM2-6B checkpoint to $SOURCE"
    "$VENV/bin/python" "$REPO/../shared/bench/make_random_6b.py" "$SOURCE" --tokenizer "$REPO/testdata/chatglm2-tokenizer/tokenizer.model"
  fi
fi
F16="$WORK/chatglm2-6b-f16.gguf"
if [ ! -f "$F16" ]; then
  log "writing $F16"
  "$CHATGLM" quantize -m "$SOURCE" --dtype f16 -o "$F16"
  [ "${KEEP_SOURCE:-0}" = 1 ] || [ "$SOURCE" != "$WORK/synth6b" ] || rm -rf "$SOURCE"
fi
for fmt in $FORMATS; do
  f="$WORK/chatglm2-6b-$fmt.gguf"
  [ -f "$f" ] || { log "writing $f"; "$CHATGLM" quantize -m "$F16" --dtype "$fmt" -o "$f"; }
done

results="$WORK/results-$(date +%Y%m%d-%H%M%S).jsonl"
for rep in $(seq "$REPEAT"); do
  for fmt in $FORMATS; do
    f="$WORK/chatglm2-6b-$fmt.gguf"
    log "rep $rep $fmt: llama.cpp"
    "$VENV/bin/python" "$REPO/bench/llama_cpp/llama_bench.py" "$f" --threads "$THREADS" \
      --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" | sed "s/^{/{\"format\": \"$fmt\", /" >>"$results"
    log "rep $rep $fmt: ChatGLM.rs"
    out=$("$CHATGLM" bench -m "$f" --device cpu --threads "$THREADS" --prompt-len "$PROMPT_LEN" \
      --gen-len "$GEN_LEN" 2>&1)
    python3 - "$fmt" "$f" "$THREADS" "$out" >>"$results" <<'PY'
import json, re, sys
fmt, model, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
pre = re.search(r"prefill\s+\d+ tokens: best ([\d.]+) tok/s", out)
dec = re.search(r"decode\s+\d+ tokens: best ([\d.]+) ms/tok", out)
rss = re.search(r"peak RSS\s+([\d.]+) GiB", out)
print(json.dumps({"format": fmt, "engine": "ChatGLM.rs", "model": model, "threads": threads,
                  "prefill_tok_s": float(pre.group(1)) if pre else None,
                  "decode_ms": float(dec.group(1)) if dec else None,
                  "peak_rss_gib": float(rss.group(1)) if rss else None}))
PY
  done
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for r in rows:
    k = (r["format"], r["engine"])
    b = best.setdefault(k, {"prefill": 0.0, "decode": float("inf"), "rss": 0.0})
    if r["prefill_tok_s"]: b["prefill"] = max(b["prefill"], r["prefill_tok_s"])
    if r["decode_ms"]: b["decode"] = min(b["decode"], r["decode_ms"])
    if r.get("peak_rss_gib"): b["rss"] = max(b["rss"], r["peak_rss_gib"])
print("| format | prefill tok/s, ours / llama.cpp | ratio | decode ms/token, ours / llama.cpp | ratio (llama/ours) | peak RSS GiB, ours / llama.cpp |")
print("|---|---|---|---|---|---|")
for fmt in dict.fromkeys(r["format"] for r in rows):
    o, l = best.get((fmt, "ChatGLM.rs")), best.get((fmt, "llama.cpp"))
    if not (o and l): continue
    print(f"| {fmt} | {o['prefill']:.2f} / {l['prefill']:.2f} | {o['prefill']/l['prefill']:.2f}× | "
          f"{o['decode']:.1f} / {l['decode']:.1f} | {l['decode']/o['decode']:.2f}× | {o['rss']:.2f} / {l['rss']:.2f} |")
PY
log "raw results: $results"
