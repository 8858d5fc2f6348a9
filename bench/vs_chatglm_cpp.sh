#!/usr/bin/env bash
# Side-by-side CPU benchmark: ChatGLM.rs (`chatglm bench`) vs chatglm.cpp 0.4.2 on the same checkpoint.
#
#   bench/vs_chatglm_cpp.sh [CHECKPOINT_DIR]          (default /work/synth6b, f16 safetensors shards)
#
# Phases (each skipped when its outputs exist, so only the first run is slow):
#   1. build  chatglm.cpp 0.4.2 from its PyPI sdist with CMake (bench/chatglm_cpp/CMakeLists.txt wraps it) ->
#             $WORK/build/bin/{main,cgbench}, plus the LD_PRELOAD thread shim and the memory-bandwidth probe.
#             ggml's own Linux flags apply (-mavx -mavx2 -mfma -mf16c -msse3 from /proc/cpuinfo; never AVX-512),
#             as in `pip install chatglm-cpp`. 11 min on the 2-core machine under nice with other builds running.
#   2. convert the checkpoint with chatglm.cpp's own converter (chatglm_cpp/convert.py, ChatGLM2Converter),
#             fed by stand-ins that read safetensors lazily, one tensor at a time -> $WORK/models/chatglm2-<fmt>.bin
#             (needs torch in $WORK/venv: PyPI's wheel brings CUDA libraries, 5.5 GB; 1.5-8 min per format, 4 GB RSS)
#   3. measure: memory read bandwidth, then for each format/thread count chatglm.cpp and ChatGLM.rs back to back,
#             memory bandwidth again, then a markdown table (results under $WORK/results/run-*.{jsonl,md}).
#             Best of several runs: python3 bench/chatglm_cpp/table.py RUN1.jsonl RUN2.jsonl ... [CHECKPOINT_DIR]
#
# Measurement only (after the first full run):  PHASES=measure bench/vs_chatglm_cpp.sh
#
# SYNTHETIC=1 needs neither PyTorch nor a checkpoint: chatglm.cpp's files are written with random weights of the
# real shapes by bench/chatglm_cpp/write_random.py (numpy; 1-3 min a format) and ours runs
# `chatglm bench --synthetic chatglm2-6b` (random weights too: speed does not depend on the values).
#
# Environment:
#   WORK=/work/chatglm-cpp-work   build products, venv, converted models, results (keep it outside the repo)
#   PHASES="build convert measure"
#   FORMATS="q4_0 q8_0 f16"       decode rows
#   THREADS="2 1"                 thread counts (chatglm.cpp: via the LD_PRELOAD shim; ours: --threads)
#   GEN_LEN=128                   greedy decode steps, EOS ignored
#   DECODE_PROMPT_LEN=17          prompt before the decode measurement (context length matters little here)
#   PROMPT_LEN=512                prefill prompt length
#   PREFILL_FORMATS="q4_0"        formats with a prefill row ("" skips prefill)
#   PREFILL_THREADS="$THREADS"    thread counts for the prefill rows
#   REPEAT=1                      repeats of each measurement in one process (best and median reported)
#   CHATGLM=target/release/chatglm   our binary (built with `cargo build --release -p chatglm-cli` if missing)
#   KERNELS=avx2                  CHATGLM_CPU_KERNELS for ours (the CPU issue's machines have AVX2 only, as
#                                 chatglm.cpp's build here; "" = the best this CPU has)
#   NICE_BUILD=19                 niceness of the chatglm.cpp build and the conversions
#   ADJACENT_PROBES=1             a bandwidth probe just before and after each of our decode runs (0: only the
#                                 probes at the start and end); the table then gives decode % of those too
#   READ_PROBE=8                  rounds of `chatglm bench --read-probe` in our decode runs (4 decode steps, then a
#                                 read-only pass over the same weights, a round; 0: none): decode's share of a read of
#                                 the same bytes in the same seconds, which the table reports
#   WAIT_LOAD=                    e.g. 1.0: before each timed run wait (at most WAIT_MAX=300 s) until the 1-minute
#                                 load average is below this (the machine is shared; "" = do not wait)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$REPO/bench/chatglm_cpp"
WORK="${WORK:-/work/chatglm-cpp-work}"
SYNTHETIC="${SYNTHETIC:-0}"
if [[ "$SYNTHETIC" != 0 ]]; then
    CKPT="$WORK/synthetic-config"  # config.json only (for the table's GB/s), written with the first model file
else
    CKPT="$(realpath "${1:-/work/synth6b}")"
fi
PHASES="${PHASES:-build convert measure}"
FORMATS="${FORMATS:-q4_0 q8_0 f16}"
THREADS="${THREADS:-2 1}"
GEN_LEN="${GEN_LEN:-128}"
DECODE_PROMPT_LEN="${DECODE_PROMPT_LEN:-17}"
PROMPT_LEN="${PROMPT_LEN:-512}"
PREFILL_FORMATS="${PREFILL_FORMATS-q4_0}"
PREFILL_THREADS="${PREFILL_THREADS:-$THREADS}"
REPEAT="${REPEAT:-1}"
CHATGLM="${CHATGLM:-$REPO/target/release/chatglm}"
NICE_BUILD="${NICE_BUILD:-19}"
CGCPP_VERSION=0.4.2

SRC="$WORK/src/chatglm_cpp-$CGCPP_VERSION"
BUILD="$WORK/build"
VENV="$WORK/venv"
MODELS="$WORK/models"
RESULTS="$WORK/results"
mkdir -p "$WORK/src" "$MODELS" "$RESULTS"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has_phase() { [[ " $PHASES " == *" $1 "* ]]; }

# ---------------------------------------------------------------- 1. build
setup_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV"
    fi
    # cmake<4: the sentencepiece bundled with chatglm.cpp 0.4.2 does not configure with CMake 4.
    "$VENV/bin/python" -c 'import cmake, wheel' 2>/dev/null ||
        "$VENV/bin/pip" install -q "cmake<4" setuptools wheel
}

build_chatglm_cpp() {
    setup_venv
    if [[ ! -d "$SRC" ]]; then
        log "fetching chatglm-cpp==$CGCPP_VERSION sdist from PyPI"
        (cd "$WORK/src" &&
            "$VENV/bin/pip" download -q "chatglm-cpp==$CGCPP_VERSION" --no-deps --no-binary :all: \
                --no-build-isolation -d . &&
            tar xzf "chatglm_cpp-$CGCPP_VERSION.tar.gz")
    fi
    if [[ -x "$BUILD/bin/main" && -x "$BUILD/bin/cgbench" && "$BUILD/bin/cgbench" -nt "$HERE/cgbench.cpp" ]]; then
        log "chatglm.cpp already built ($BUILD/bin)"
    else
        log "building chatglm.cpp $CGCPP_VERSION (main + cgbench) under nice -n $NICE_BUILD; log: $BUILD.log"
        local t0=$SECONDS
        "$VENV/bin/cmake" -S "$HERE" -B "$BUILD" -DCHATGLM_SRC="$SRC" -DCMAKE_BUILD_TYPE=Release >"$BUILD.log" 2>&1
        nice -n "$NICE_BUILD" "$VENV/bin/cmake" --build "$BUILD" -j "$(nproc)" --target main cgbench >>"$BUILD.log" 2>&1 ||
            { tail -30 "$BUILD.log" >&2; exit 1; }
        log "built in $((SECONDS - t0)) s"
    fi
    if [[ ! -f "$BUILD/libthreads_shim.so" || "$HERE/threads_shim.c" -nt "$BUILD/libthreads_shim.so" ]]; then
        gcc -O2 -shared -fPIC -o "$BUILD/libthreads_shim.so" "$HERE/threads_shim.c"
    fi
    if [[ ! -x "$BUILD/membw" || "$HERE/membw.c" -nt "$BUILD/membw" ]]; then
        gcc -O2 -mavx2 -pthread -o "$BUILD/membw" "$HERE/membw.c"
    fi
}

if has_phase build; then build_chatglm_cpp; fi

# ---------------------------------------------------------------- 2. convert
write_random_models() {
    setup_venv
    "$VENV/bin/python" -c 'import numpy' 2>/dev/null || "$VENV/bin/pip" install -q numpy
    local fmt out t0
    for fmt in $FORMATS $PREFILL_FORMATS; do
        out="$MODELS/chatglm2-$fmt.bin"
        [[ -f "$out" && -f "$CKPT/config.json" ]] && continue
        log "writing random ChatGLM2-6B weights -> $out ($fmt, bench/chatglm_cpp/write_random.py)"
        t0=$SECONDS
        "$VENV/bin/python" "$HERE/write_random.py" "$out" "$fmt" "$REPO/testdata/chatglm2-tokenizer/tokenizer.model" \
            "$CKPT" >"$WORK/write-$fmt.log" 2>&1 || { tail -20 "$WORK/write-$fmt.log" >&2; exit 1; }
        log "wrote $fmt in $((SECONDS - t0)) s ($(du -h "$out" | cut -f1))"
    done
}

convert_models() {
    if [[ "$SYNTHETIC" != 0 ]]; then write_random_models; return; fi
    setup_venv
    "$VENV/bin/python" -c 'import torch, sentencepiece, tabulate, tqdm, numpy' 2>/dev/null || {
        log "installing the converter's Python packages (torch, sentencepiece, tabulate, tqdm, numpy)"
        "$VENV/bin/pip" install -q torch sentencepiece tabulate tqdm numpy
    }
    local fmt out t0
    for fmt in $FORMATS $PREFILL_FORMATS; do
        out="$MODELS/chatglm2-$fmt.bin"
        [[ -f "$out" ]] && continue
        log "converting $CKPT -> $out ($fmt, chatglm_cpp/convert.py ChatGLM2Converter, one tensor at a time)"
        t0=$SECONDS
        nice -n "$NICE_BUILD" "$VENV/bin/python" "$HERE/convert_synth.py" "$SRC/chatglm_cpp/convert.py" \
            "$CKPT" "$out" "$fmt" >"$WORK/convert-$fmt.log" 2>&1 || { tail -20 "$WORK/convert-$fmt.log" >&2; exit 1; }
        log "converted $fmt in $((SECONDS - t0)) s ($(du -h "$out" | cut -f1))"
    done
}

if has_phase convert; then convert_models; fi

# ---------------------------------------------------------------- 3. measure
wait_quiet() {
    [[ -n "${WAIT_LOAD:-}" ]] || return 0
    local waited=0
    while awk -v max="$WAIT_LOAD" '{ exit !($1 >= max) }' /proc/loadavg && ((waited < ${WAIT_MAX:-300})); do
        sleep 10
        waited=$((waited + 10))
    done
    ((waited == 0)) || log "  waited ${waited} s for load < $WAIT_LOAD (now $(cut -d' ' -f1 /proc/loadavg))"
}
ours() { # ours FMT THREADS PROMPT_LEN GEN_LEN [EXTRA...]
    wait_quiet
    local source=(-m "$CKPT")
    [[ "$SYNTHETIC" == 0 ]] || source=(--synthetic chatglm2-6b)
    CHATGLM_CPU_KERNELS="${KERNELS-avx2}" "$CHATGLM" bench "${source[@]}" --dtype "$1" --threads "$2" --prompt-len "$3" --gen-len "$4" --repeat "$REPEAT" \
        "${@:5}" --json 2>>"$OUT.stderr" | tail -1
}
theirs() { # theirs FMT THREADS PROMPT_LEN GEN_LEN
    wait_quiet
    CGBENCH_THREADS="$2" LD_PRELOAD="$BUILD/libthreads_shim.so" \
        "$BUILD/bin/cgbench" "$MODELS/chatglm2-$1.bin" "$3" "$4" "$REPEAT" 2>>"$OUT.stderr" | tail -1
}
record() { # record PHASE FMT THREADS ENGINE JSON
    printf '{"phase":"%s","format":"%s","threads":%s,"engine":"%s","loadavg_after":"%s","result":%s}\n' \
        "$1" "$2" "$3" "$4" "$(cut -d' ' -f1 /proc/loadavg)" "${5:-null}" >>"$OUT"
    [[ -n "${5:-}" ]] || log "  FAILED (see $OUT.stderr)"
}

membw() { # memory read bandwidth, 1 and 2 threads; run at the start and the end (the table keeps the best)
    local line t g
    log "memory read bandwidth (1 GiB buffer on huge pages, best of 10)"
    "$BUILD/membw" 1 2 | while read -r line; do
        t="${line#threads=}"; t="${t%% *}"
        g="${line#*best_gb_s=}"; g="${g%% *}"
        printf '{"phase":"membw","threads":%s,"gb_s":%s}\n' "$t" "$g" >>"$OUT"
        log "  $line"
    done
}

# A probe of THREADS threads just before and just after our decode run of FMT: this VM's bandwidth moves by a
# fifth within minutes, so the decode target (% of the read bandwidth) is judged against these (table.py).
membw_adjacent() { # membw_adjacent FMT THREADS
    local line g
    line=$("$BUILD/membw" "$2" | tail -1)
    g="${line#*best_gb_s=}"; g="${g%% *}"
    printf '{"phase":"membw_adjacent","format":"%s","threads":%s,"gb_s":%s}\n' "$1" "$2" "$g" >>"$OUT"
    log "  adjacent probe: $line"
}

measure() {
    [[ -x "$CHATGLM" ]] || (cd "$REPO" && cargo build --release -p chatglm-cli)
    [[ -x "$BUILD/bin/cgbench" ]] || { echo "chatglm.cpp not built: run with PHASES=build first" >&2; exit 1; }
    local stamp fmt t probe
    stamp="$(date +%Y%m%d-%H%M%S)"
    OUT="$RESULTS/run-$stamp.jsonl"
    : >"$OUT"
    log "results: $OUT"
    {
        printf '{"phase":"meta","date":"%s","cpu":"%s","nproc":%s,"loadavg":"%s","ours_git":"%s","gen_len":%s,' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$(nproc)" \
            "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo ?)" \
            "$GEN_LEN"
        printf '"decode_prompt_len":%s,"prompt_len":%s,"repeat":%s,"files":{' "$DECODE_PROMPT_LEN" "$PROMPT_LEN" "$REPEAT"
        local first=1
        for fmt in $(printf '%s\n' $FORMATS $PREFILL_FORMATS | sort -u); do
            [[ $first == 1 ]] || printf ','
            first=0
            printf '"%s":%s' "$fmt" "$(stat -c %s "$MODELS/chatglm2-$fmt.bin")"
        done
        printf '}}\n'
    } >>"$OUT"
    membw
    for t in $THREADS; do
        for fmt in $FORMATS; do
            log "decode $fmt, $t thread(s): chatglm.cpp"
            record decode "$fmt" "$t" chatglm.cpp "$(theirs "$fmt" "$t" "$DECODE_PROMPT_LEN" "$GEN_LEN")"
            log "decode $fmt, $t thread(s): ChatGLM.rs"
            [[ "${ADJACENT_PROBES:-1}" == 0 ]] || membw_adjacent "$fmt" "$t"
            probe=()
            [[ "${READ_PROBE:-8}" == 0 ]] || probe=(--read-probe "${READ_PROBE:-8}")
            record decode "$fmt" "$t" ChatGLM.rs "$(ours "$fmt" "$t" "$DECODE_PROMPT_LEN" "$GEN_LEN" "${probe[@]}")"
            [[ "${ADJACENT_PROBES:-1}" == 0 ]] || membw_adjacent "$fmt" "$t"
        done
    done
    for t in $PREFILL_THREADS; do
        for fmt in $PREFILL_FORMATS; do
            log "prefill-$PROMPT_LEN $fmt, $t thread(s): chatglm.cpp"
            record prefill "$fmt" "$t" chatglm.cpp "$(theirs "$fmt" "$t" "$PROMPT_LEN" 1)"
            log "prefill-$PROMPT_LEN $fmt, $t thread(s): ChatGLM.rs"
            record prefill "$fmt" "$t" ChatGLM.rs "$(ours "$fmt" "$t" "$PROMPT_LEN" 1)"
        done
    done
    membw
    python3 "$HERE/table.py" "$OUT" "$CKPT" | tee "${OUT%.jsonl}.md"
}

if has_phase measure; then measure; fi
