#!/usr/bin/env bash
# Every GPU check and benchmark in one call.
#
#   tests/gpu/run.sh build    Here (no GPU needed): builds the stripped release binary and the
#                             CUDA test executables (WHEEL=1: also the Python wheel) into device-bin/ (git-ignored), with a copy
#                             of the golden test data, so the folder can travel to a GPU machine.
#   tests/gpu/run.sh device   On the GPU machine, from the repository root: runs the CUDA test
#                             suite (golden data and CPU-reference comparisons), then the
#                             benchmarks; writes logs and a summary to $OUT (else device-bin/report).
#
# Environment for `device`: BENCH=0 skips the benchmarks (BENCH_QUICK=1 runs only the f16 one),
# TESTS=0 the tests, PREFETCH_SWEEP="0 8192" times mat-vec L2 prefetch sizes, GRAPH_COMPARE=1 adds a decode run without CUDA graphs,
# LT_COMPARE=1 prefill with and without cuBLASLt, MMA_COMPARE=1 decode attention on tensor cores and not,
# MMA_BLOCKS_SWEEP="32 64 128" tensor-core decode blocks in all, ATT_PREFETCH_SWEEP="0 8192" bytes per row the
# product after attention starts towards L2 during it, CONCURRENCY=16,64,128 batched decode (aggregate tok/s), PROFILE=1 adds
# per-kernel times from ncu (NCU_CACHE=none: caches not flushed between kernels; PROFILE_DTYPE=q4_0 profiles that format); SERVE_CONCURRENCY=64 the HTTP server
# under that many streaming clients (bench/serve) beside the engine-level figure; CUDA libraries are
# looked for in /usr/local/nvidia/lib64 and /usr/local/cuda/lib64 besides LD_LIBRARY_PATH.
# VARIANT="DECODE_LAZY_RESCALE=1 QMMA_NT4_TWO_BLOCKS=1" times kernel variants against the default (f16 decode at
# 2K/8K/32K; with QUANT=1 also 16 and 32 int4 sequences) and runs the attention, quantized and qmma tests under them.
# BATCH_GRAPHS_COMPARE=1 adds the batched decode without CUDA graphs for batched steps (CHATGLM_CUDA_BATCH_GRAPHS=0).
# QUEUE_COMPARE=1 times decode with each step queued behind the running one (the default) and with
# CHATGLM_CUDA_QUEUE_STEPS=0 alternately.
# SERVE_GRAPHS="0 1" runs the server load test without and with batched-decode CUDA graphs; PACK=1 leaves
# the report as one archive (report.tgz) beside the kernel cache.
# HISTORY=1 times a 4-round chat through the HTTP server with and without KV reuse of the previous round
# (HISTORY_DTYPE, HISTORY_REPEAT: the first question's length in ~48-token repeats).
# `build` compiles the kernels here for the GPU machine's cache where it finds a local NVRTC
# (device-bin/kcache.tgz); each device call leaves $OUT/kcache.tgz (its PTX cache), which copied to
# device-bin/kcache.tgz spares the next call the NVRTC compile of unchanged kernel files.
# QUANT=1 adds the int4/int8 benchmarks (kernel GB/s, decode, prefill, 32 sequences) and the GPU
# memory of an 8K-token int4 dialogue as nvidia-smi reports it, with the f16 and the q8_0 KV cache (QUANT_ONLY=1: only those;
# QMMA_BLOCKS_SWEEP="1" adds decode with at most that many quantized-product blocks per SM).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin

# The default kernels' SASS against the wait session 29 took out of the one-token quantized products
# (tests/gpu/sass_scoreboard.py), where cuobjdump is found (CUOBJDUMP, PATH, or the nvidia-cuda-cuobjdump
# wheel unpacked at /tmp/dis): a bundle whose batch-1 products wait on their next batch is not shipped.
check_scoreboard() {
  local cubin dis
  dis=${CUOBJDUMP:-$(command -v cuobjdump || ls /tmp/dis/nvidia/cu13/bin/cuobjdump 2>/dev/null | head -1)}
  if [ -z "$dis" ] || [ ! -x "$dis" ]; then
    echo "note: no cuobjdump (CUOBJDUMP): the one-token products' scoreboard waits are not checked"
    return 0
  fi
  for cubin in "$1"/tmp/chatglm-kernels/qmma-*.cubin; do
    [ -f "$cubin" ] || continue
    PATH="$(dirname "$dis"):$PATH" "$dis" -sass "$cubin" >"$cubin.sass" && python3 tests/gpu/sass_scoreboard.py "$cubin.sass" || {
      echo "error: the one-token products of $cubin wait on their next batch (tests/gpu/sass_scoreboard.py)" >&2
      rm -f "$cubin.sass"
      return 1
    }
    rm -f "$cubin.sass"
  done
}

# Every grouped-product kernel's spilled bytes against the shipped build's (tests/gpu/stack_check.py): a warning
# for each that spills more, since those spills are read back from L2 before the first weight copies.
check_stack() {
  local cubin dis
  dis=${CUOBJDUMP:-$(command -v cuobjdump || ls /tmp/dis/nvidia/cu13/bin/cuobjdump 2>/dev/null | head -1)}
  [ -n "$dis" ] && [ -x "$dis" ] || return 0
  for cubin in "$1"/tmp/chatglm-kernels/qmm[ax]-*.cubin; do
    [ -f "$cubin" ] || continue
    echo "== $cubin"
    "$dis" -res-usage "$cubin"
  done | python3 tests/gpu/stack_check.py
}

build() {
  local data=${CHATGLM_TESTDATA:-testdata}
  [ -d "$data/dev" ] || { echo "error: golden test data not found at $data (set CHATGLM_TESTDATA)" >&2; exit 1; }
  rm -rf "$BIN"
  mkdir -p "$BIN/tests"
  cargo build --release -p chatglm-cli
  cp target/release/chatglm "$BIN/chatglm"
  strip "$BIN/chatglm"
  cargo build --release -p chatglm-cuda --example gemv_bench
  cp target/release/examples/gemv_bench "$BIN/gemv_bench"
  strip "$BIN/gemv_bench"
  cargo build --release -p chatglm-cuda --example qmma_bench
  cp target/release/examples/qmma_bench "$BIN/qmma_bench"
  strip "$BIN/qmma_bench"
  cargo test --release -p chatglm-cuda -p chatglm-model -p chatglm-engine \
    --features chatglm-model/cuda,chatglm-engine/cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
wanted = {("chatglm_cuda", "lib"), ("chatglm_model", "lib"), ("cuda", "test"), ("cuda_generate", "test"), ("qmma", "test"), ("embed", "test")}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    name, kind = m["target"]["name"], m["target"]["kind"][0]
    if (name, kind) in wanted:
        print(m["executable"], name + ("-lib" if kind == "lib" else ""))
' | while read -r exe name; do
      cp "$exe" "$BIN/tests/$name"
      strip "$BIN/tests/$name"
    done
  # The Python package as a wheel, for its CUDA test on the GPU machine
  # (WHEEL=1: 12 MB more to carry, and the working tree with device-bin/ must
  # stay under the 64 MiB a device call takes).
  if [ "${WHEEL:-0}" != 0 ] && command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q maturin >/dev/null 2>&1 || true
    python3 -m maturin build --release -q -m crates/chatglm-python/Cargo.toml -o "$BIN/wheels" >/dev/null 2>&1 ||
      echo "note: no chatglm_rs wheel built (maturin unavailable)"
  fi
  # The CUPTI kernel tracer for tests/gpu/profile_quant.sh, where CUPTI's headers are found
  # (CUPTI_DIR, or the nvidia-cuda-cupti wheel unpacked at /tmp/cupti; cuda.h from the NVRTC venv).
  local cupti=${CUPTI_DIR:-/tmp/cupti/nvidia/cu13}
  if [ -f "$cupti/include/cupti.h" ] && command -v gcc >/dev/null; then
    gcc -O2 -Wall -shared -fPIC -I"$cupti/include" \
      -I"$(ls -d /tmp/nv/lib/python3*/site-packages/nvidia/cu13/include 2>/dev/null | head -1)" tests/gpu/kernel_trace.c \
      -L"$cupti/lib" -l:libcupti.so.13 -o "$BIN/kernel_trace.so" || echo "note: no kernel tracer built"
  fi
  # The phase-stamp harness of the quantized products (tests/gpu/qmma_phases.cu), where nvcc is found
  # (NVCC, or the nvidia-cuda-nvcc wheel in the NVRTC venv at /tmp/nv).
  local nvcc=${NVCC:-$(ls /tmp/nv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1)}
  if [ -n "$nvcc" ] && [ -x "$nvcc" ]; then
    # PHASES_VARIANT="QMMA_ASYNC_X=1": also qmma_phases-variant, the kernels under those defines.
    local defs="" d
    for d in ${PHASES_VARIANT:-}; do defs="$defs -D$d"; done
    "$nvcc" -O2 -std=c++17 -arch=sm_90 -DQMMA_STAMPS=1 -L"$(dirname "$nvcc")/../lib" tests/gpu/qmma_phases.cu \
      -o "$BIN/qmma_phases" && strip "$BIN/qmma_phases" || echo "note: no qmma_phases built"
    if [ -n "$defs" ]; then
      # shellcheck disable=SC2086
      "$nvcc" -O2 -std=c++17 -arch=sm_90 -DQMMA_STAMPS=1 $defs -L"$(dirname "$nvcc")/../lib" tests/gpu/qmma_phases.cu \
        -o "$BIN/qmma_phases-variant" && strip "$BIN/qmma_phases-variant" || echo "note: no qmma_phases-variant built"
    fi
  fi
  # The kernels compiled here for the GPU machine's cache (sm_90 under the
  # driver and NVRTC versions it reports; KERNEL_CACHE_VERSIONS), where a
  # local NVRTC is found (NVRTC_LIB_DIR, or the nvidia-cuda-nvrtc wheel in
  # a venv at /tmp/nv): each device call then skips its NVRTC compile.
  local nvrtc_dir=${NVRTC_LIB_DIR:-$(ls -d /tmp/nv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)}
  if [ -n "$nvrtc_dir" ] && [ -e "$nvrtc_dir/libnvrtc.so.13" ]; then
    cargo build --release -p chatglm-cuda --example compile_kernels
    local kc; kc=$(mktemp -d)
    # KERNEL_CACHE_VARIANTS="A=1;B=1 C=0": also each of these CHATGLM_NVRTC_DEFINES (';'-separated).
    local v ok=1 IFS=';'
    # Cubins (SASS, what the GPU machine loads) and PTX (its fallback) in two processes, one a core.
    local f pids checked=""
    # The default's cubins and PTX side by side, then the variants' cubins (only: their PTX would not fit a
    # device call) two at a time.
    local jobs=(" cubin" " ptx") j
    for v in ${KERNEL_CACHE_VARIANTS:-}; do jobs+=("$v cubin"); done
    pids=()
    for j in "${jobs[@]}"; do
      CHATGLM_NVRTC_DEFINES=${j% *} LD_LIBRARY_PATH=$nvrtc_dir ./target/release/examples/compile_kernels \
        "${KERNEL_CACHE_ARCH:-90}" "$kc/tmp/chatglm-kernels" "${KERNEL_CACHE_VERSIONS:-driver 13000 nvrtc 13.0}" \
        "${j##* }" >/dev/null &
      pids+=($!)
      if [ ${#pids[@]} = 2 ]; then
        for f in "${pids[@]}"; do wait "$f" || ok=0; done
        pids=()
        # The first pair is the default's: its one-token products must not wait on the next batch's loads.
        [ "$ok" = 1 ] && [ -z "${checked:-}" ] && { check_scoreboard "$kc" || ok=0; checked=1; }
      fi
    done
    for f in "${pids[@]}"; do wait "$f" || ok=0; done
    unset IFS
    check_stack "$kc"
    [ "$ok" = 1 ] &&
      XZ_OPT="-9 -T2" tar cJf "$BIN/kcache.tgz" -C "$kc" tmp/chatglm-kernels &&
      echo "kernel cache for the GPU machine: $BIN/kcache.tgz (xz: the cubins of several variants compress ~18×)"
    rm -rf "$kc"
  else
    echo "note: no local NVRTC (NVRTC_LIB_DIR): the GPU machine compiles its kernels"
  fi
  # The golden data travels with the repository (testdata/ and golden/ are
  # tracked); a copy is made only when it lives elsewhere.
  if [ "$(cd "$data" && pwd)" != "$PWD/testdata" ]; then
    mkdir -p "$BIN/testdata/chatglm2-tokenizer"
    cp "$data/README.md" "$BIN/testdata/"
    cp -r "$data/dev" "$BIN/testdata/dev"
    cp "$data/chatglm2-tokenizer/tokenizer.model" "$BIN/testdata/chatglm2-tokenizer/"
  fi
  ls -la "$BIN" "$BIN/tests"
  du -sh "$BIN"
}

device() {
  export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  local data=$PWD/testdata
  [ -f "$BIN/testdata/README.md" ] && data=$PWD/$BIN/testdata
  export CHATGLM_TESTDATA=$data CHATGLM_REQUIRE_GPU=1
  export CHATGLM_KERNEL_CACHE=${CHATGLM_KERNEL_CACHE:-/tmp/chatglm-kernels}
  # The shipped cache holds SASS (cubins): a fresh machine skips the driver's ~110 s PTX compile.
  export CHATGLM_KERNEL_FORMAT=${CHATGLM_KERNEL_FORMAT:-cubin}
  local out=${OUT:-$BIN/report}
  mkdir -p "$out"
  # Compiled kernels from an earlier call (device-bin/kcache.tgz: the NVRTC
  # PTX cache and the driver's JIT cache) save the next one its compile.
  if [ -f "$BIN/kcache.tgz" ]; then tar xzf "$BIN/kcache.tgz" -C / 2>/dev/null || true; fi
  local cached_at_start; cached_at_start=$(ls "$CHATGLM_KERNEL_CACHE" 2>/dev/null | wc -l)
  local summary=$out/summary.txt
  : >"$summary"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
  } | tee -a "$summary"
  # The first load of every kernel module on this fresh machine: seconds with the shipped cache (with PTX the
  # driver compiles it to SASS here, ~110 s on the H200; cubins load as they are).
  local s; s=$(date +%s)
  "$BIN/chatglm" bench --device cuda --synthetic tiny --prompt-len 4 --gen-len 1 >"$out/first-load.log" 2>&1
  echo "first load (CHATGLM_KERNEL_FORMAT=$CHATGLM_KERNEL_FORMAT, rc $?): $(($(date +%s) - s)) s" | tee -a "$summary"

  if [ "${TESTS:-1}" != 0 ]; then
    local failed=0
    for t in "$BIN"/tests/*; do
      echo "== $(basename "$t")" | tee -a "$summary"
      if "$t" --test-threads=1 --nocapture >"$out/test-$(basename "$t").log" 2>&1; then
        grep -E "^test result" "$out/test-$(basename "$t").log" | tee -a "$summary"
      else
        failed=1
        grep -E -A3 "^test .*FAILED|panicked|^test result" "$out/test-$(basename "$t").log" | head -40 | tee -a "$summary"
      fi
    done
    if ls "$BIN"/wheels/*.whl >/dev/null 2>&1; then
      echo "== chatglm_rs (Python) on the GPU" | tee -a "$summary"
      python3 -m pip install -q --no-index --no-deps --target /tmp/chatglm-py "$BIN"/wheels/*.whl &&
        (cd crates/chatglm-python/tests && PYTHONPATH=/tmp/chatglm-py python3 -m pytest -q -k "cuda or card" 2>&1 | tail -3 | tee -a "$summary") ||
        echo "chatglm_rs wheel did not install" | tee -a "$summary"
    fi
    grep -hE "max \|Δ\|" "$out"/test-*.log | sort | uniq | head -60 >"$out/accuracy.txt" || true
    [ "$failed" = 0 ] && echo "tests: all passed" | tee -a "$summary" || echo "tests: FAILURES (see test-*.log)" | tee -a "$summary"
  fi

  run_bench() {
    local name=$1; shift
    echo "== bench $name: $*" | tee -a "$summary"
    if "$@" >"$out/bench-$name.txt" 2>&1; then tail -n 12 "$out/bench-$name.txt" | tee -a "$summary"; else
      echo "FAILED" | tee -a "$summary"; tail -n 20 "$out/bench-$name.txt" | tee -a "$summary"; fi
  }
  # Runs a command, sampling its GPU memory (nvidia-smi, CUDA context included) every 0.1 s.
  mem_probe() {
    local name=$1; shift
    echo "== memory $name: $*" | tee -a "$summary"
    OUT=$out tests/gpu/mem_probe.sh "$name" "$@" | tee -a "$summary"
  }
  if [ "${BENCH:-1}" != 0 ]; then
    echo "== decode mat-vec kernels (6B shapes, f16, batch 1)" | tee -a "$summary"
    "$BIN/gemv_bench" 2>&1 | tee -a "$summary" || echo "gemv_bench FAILED" | tee -a "$summary"
    echo "== baseline: device copy bandwidth (PyTorch, same run)" | tee -a "$summary"
    python3 - <<'PY' 2>&1 | tee -a "$summary" || true
import torch
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 20
print(f"copy {2*x.numel()/ms/1e9:.3f} TB/s (read+write); f16 6B floor {11.95e9/(2*x.numel()/ms*1e3)*1e3:.3f} ms/token")
PY
    local b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b"
    if [ "${QUANT:-0}" != 0 ]; then
      echo "== quantized products (6B shapes; int4 and int8 tiled weights)" | tee -a "$summary"
      "$BIN/qmma_bench" 2>&1 | tee -a "$summary" || echo "qmma_bench FAILED" | tee -a "$summary"
      run_bench f16-short-baseline $b --dtype f16 --prompt-len 16 --gen-len 256 --repeat 3
      run_bench q4_0-short $b --dtype q4_0 --prompt-len 16 --gen-len 256 --repeat 3
      run_bench q8_0-short $b --dtype q8_0 --prompt-len 16 --gen-len 256 --repeat 3
      for k in ${QMMA_BLOCKS_SWEEP:-}; do
        run_bench "q4_0-short-blocks-$k" env CHATGLM_QMMA_BLOCKS_PER_SM=$k $b --dtype q4_0 --prompt-len 16 --gen-len 256 --repeat 3
        run_bench "q8_0-short-blocks-$k" env CHATGLM_QMMA_BLOCKS_PER_SM=$k $b --dtype q8_0 --prompt-len 16 --gen-len 256 --repeat 3
      done
      run_bench q4_0-long $b --dtype q4_0 --prompt-len 2048 --gen-len 64 --repeat 2 --context 8192 --context-steps 16
      run_bench q4_0-batched32 $b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32
      run_bench q4_0-batched32-no-graphs env CHATGLM_CUDA_BATCH_GRAPHS=0 $b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32
      if [ -n "${VARIANT:-}" ]; then
        # e.g. VARIANT=QMMA_NT4_TWO_BLOCKS=1 (the qmma suite under it when the tests ran: run `qmma` with it too).
        for v in "$VARIANT" "" "$VARIANT"; do
          run_bench "q4_0-batched32-variant-${v:-default}" env CHATGLM_NVRTC_DEFINES="$v" $b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 16,32
        done
        # One-token decode of both formats under the variant, alternating with the default.
        for v in "" "$VARIANT" "" "$VARIANT"; do
          for d in q4_0 q8_0; do
            run_bench "$d-short-variant-${v:-default}" env CHATGLM_NVRTC_DEFINES="$v" $b --dtype $d --prompt-len 16 --gen-len 128 --repeat 2
          done
        done
      fi
      mem_probe q4_0-8k-dialogue $b --dtype q4_0 --prompt-len 8192 --gen-len 64
      # The same dialogue with the int8 (q8_0) KV cache, and its decode speed against f16's.
      mem_probe q4_0-8k-dialogue-kv-q8_0 $b --dtype q4_0 --kv-dtype q8_0 --prompt-len 8192 --gen-len 64
      run_bench q4_0-long-kv-q8_0 $b --dtype q4_0 --kv-dtype q8_0 --prompt-len 2048 --gen-len 64 --repeat 2 --context 8192 --context-steps 16
      run_bench f16-long-kv-q8_0 $b --dtype f16 --kv-dtype q8_0 --prompt-len 2048 --gen-len 64 --repeat 2 --context 8192,32000 --context-steps 16
    fi
    if [ "${QUANT_ONLY:-0}" != 0 ]; then
      save_kernel_cache
      echo "report in $out"
      return
    fi
    run_bench f16 $b --dtype f16 --prompt-len 2048 --gen-len 128 --repeat 3 --context 8192,32000 --context-steps 16
    run_bench f16-short $b --dtype f16 --prompt-len 16 --gen-len 256 --repeat 3
    if [ "${QUEUE_COMPARE:-0}" != 0 ]; then
      # Steps queued behind the running one (default) against each step read before the next is launched.
      for q in 0 1 0 1; do
        run_bench "f16-short-queue-$q" env CHATGLM_CUDA_QUEUE_STEPS=$q $b --dtype f16 --prompt-len 16 --gen-len 256 --repeat 3
      done
      if [ -n "${CONCURRENCY:-}" ]; then
        run_bench batched-queue-0 env CHATGLM_CUDA_QUEUE_STEPS=0 $b --dtype f16 --prompt-len 128 --gen-len 256 --concurrency "$CONCURRENCY"
      fi
    fi
    if [ -n "${CONCURRENCY:-}" ]; then
      run_bench batched $b --dtype f16 --prompt-len 128 --gen-len 256 --concurrency "$CONCURRENCY"
      if [ "${BATCH_GRAPHS_COMPARE:-0}" != 0 ]; then
        run_bench batched-no-graphs env CHATGLM_CUDA_BATCH_GRAPHS=0 $b --dtype f16 --prompt-len 128 --gen-len 256 --concurrency "$CONCURRENCY"
      fi
    fi
    if [ "${LT_COMPARE:-0}" != 0 ]; then
      run_bench prefill-lt $b --dtype f16 --prompt-len 2048 --gen-len 4 --repeat 5
      run_bench prefill-no-lt env CHATGLM_CUBLASLT=0 $b --dtype f16 --prompt-len 2048 --gen-len 4 --repeat 5
    fi
    if [ "${GRAPH_COMPARE:-0}" != 0 ]; then
      run_bench f16-short-no-graphs env CHATGLM_CUDA_GRAPHS=0 $b --dtype f16 --prompt-len 16 --gen-len 256 --repeat 3
    fi
    # Mat-vec L2 prefetch sizes (CHATGLM_GEMV_PREFETCH bytes per row).
    for pb in ${PREFETCH_SWEEP:-}; do
      run_bench "prefetch-$pb" env CHATGLM_GEMV_PREFETCH=$pb $b --dtype f16 --prompt-len 16 --gen-len 128 --repeat 2
    done
    if [ "${MMA_COMPARE:-0}" != 0 ]; then
      for m in 1 0; do
        run_bench "decode-mma-$m" env CHATGLM_DECODE_MMA=$m $b --dtype f16 --prompt-len 0 --gen-len 32 --context 2048,8192,32000 --context-steps 16
      done
    fi
    for pb in ${ATT_PREFETCH_SWEEP:-}; do
      run_bench "after-attention-prefetch-$pb" env CHATGLM_GEMV_PREFETCH_AFTER_ATTENTION=$pb $b --dtype f16 --prompt-len 0 --gen-len 64 --context 2048,8192,32000 --context-steps 32
    done
    # VARIANT="DEFINE=1": a kernel variant (CHATGLM_NVRTC_DEFINES) against the default, alternating, at short,
    # 2K, 8K and 32K contexts; with TESTS on, the attention and graph tests run under the variant first.
    if [ -n "${VARIANT:-}" ]; then
      if [ "${TESTS:-1}" != 0 ] && [ -x "$BIN/tests/cuda" ]; then
        echo "== tests under $VARIANT" | tee -a "$summary"
        for t in gpu_long_context gpu_batched_decode_with_16 gpu_graph_replay gpu_queued_steps gpu_matches_cpu gpu_quantized; do
          CHATGLM_NVRTC_DEFINES="$VARIANT" "$BIN/tests/cuda" "$t" --test-threads=1 2>&1 | grep -E "^test result|panicked" | tee -a "$summary"
        done
        if [ -x "$BIN/tests/qmma" ]; then
          CHATGLM_NVRTC_DEFINES="$VARIANT" "$BIN/tests/qmma" --test-threads=1 2>&1 | grep -E "^test result|panicked" | tee -a "$summary"
        fi
      fi
      for v in "" "$VARIANT" "" "$VARIANT"; do
        run_bench "variant-${v:-default}" env CHATGLM_NVRTC_DEFINES="$v" $b --dtype f16 --prompt-len 16 --gen-len 128 --repeat 2 --context 2048,8192,32000 --context-steps 64
      done
    fi
    for k in ${MMA_BLOCKS_SWEEP:-}; do
      run_bench "decode-mma-blocks-$k" env CHATGLM_DECODE_MMA_BLOCKS=$k $b --dtype f16 --prompt-len 0 --gen-len 32 --context 2048,8192,32000 --context-steps 16
    done
    for k in ${DECODE_SWEEP:-}; do
      run_bench "decode-blocks-$k" env CHATGLM_DECODE_BLOCKS_PER_SM=$k $b --dtype f16 --prompt-len 0 --gen-len 32 --context 2048,8192,32000 --context-steps 16
    done
    if [ "${BENCH_QUICK:-0}" = 0 ]; then
      run_bench bf16 $b --dtype bf16 --prompt-len 2048 --gen-len 64 --repeat 2
      run_bench prefill8k $b --dtype f16 --prompt-len 8192 --gen-len 4
      run_bench prefill32k $b --dtype f16 --prompt-len 32760 --gen-len 4
    fi
  fi
  if [ -n "${SERVE_CONCURRENCY:-}" ]; then
    # The HTTP server on the GPU (random 6B weights, the real tokenizer) under
    # streaming clients, and the engine-level figure for the same shape.
    local tok=$CHATGLM_TESTDATA/chatglm2-tokenizer/tokenizer.model
    # SERVE_GRAPHS="0 1": the server without and with CUDA graphs for batched decode steps.
    for graphs in ${SERVE_GRAPHS:-0}; do
      echo "== serve: HTTP load test, synthetic 6B, $SERVE_CONCURRENCY streaming clients, 256 tokens each, batched graphs $graphs" | tee -a "$summary"
      CHATGLM_CUDA_BATCH_GRAPHS=$graphs CHATGLM_BIN=$BIN/chatglm MODEL="synthetic:chatglm2-6b:$tok" MAX_BATCH=${SERVE_MAX_BATCH:-128} \
        CONCURRENCY=$SERVE_CONCURRENCY REQUESTS=${SERVE_REQUESTS:-256} MAX_TOKENS=256 SECONDS_PER_LEVEL=150 \
        SERVE_ARGS="--device cuda --kv-cache-mb 30000" bench/serve/run.sh >"$out/serve-graphs-$graphs.txt" 2>&1 || echo "serve FAILED" | tee -a "$summary"
      tail -n 12 "$out/serve-graphs-$graphs.txt" | tee -a "$summary"
    done
    run_bench engine-same-shape "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype f16 \
      --prompt-len 32 --gen-len 256 --concurrency "$SERVE_CONCURRENCY"
  fi
  if [ "${HISTORY:-0}" != 0 ]; then
    # Multi-round chat through the HTTP server with and without reusing the previous round's KV cache.
    echo "== serve: multi-round chat latency, --prefix-cache 8 vs 0 (synthetic 6B, the real tokenizer)" | tee -a "$summary"
    CHATGLM_BIN=$BIN/chatglm MODEL="synthetic:chatglm2-6b:$CHATGLM_TESTDATA/chatglm2-tokenizer/tokenizer.model" \
      DTYPE=${HISTORY_DTYPE:-f16} SERVE_ARGS="--device cuda" ROUNDS=4 REPEAT=${HISTORY_REPEAT:-40} \
      bench/serve/history.sh >"$out/history.txt" 2>&1 || echo "history FAILED" | tee -a "$summary"
    grep -E "round|prefix cache" "$out/history.txt" | tee -a "$summary"
  fi
  if [ "${PROFILE:-0}" != 0 ]; then
    # Per-kernel device time of one prefill and a few decode steps (ncu reads
    # each kernel's duration; clocks left as they are).
    echo "== profile (ncu): time per kernel class" | tee -a "$summary"
    local ncu; ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
    if [ -n "$ncu" ]; then
      "$ncu" --clock-control none --cache-control "${NCU_CACHE:-all}" --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
        --launch-skip "${PROFILE_SKIP:-1000}" --launch-count "${PROFILE_COUNT:-1200}" \
        "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype ${PROFILE_DTYPE:-f16} --prompt-len ${PROFILE_PROMPT:-2048} --gen-len 8 \
        >"$out/ncu.csv" 2>"$out/ncu.err" || tail -5 "$out/ncu.err" | tee -a "$summary"
      python3 - "$out/ncu.csv" <<'PY' 2>&1 | tee -a "$summary"
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; rows = rows[1:]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3,
         "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
t = collections.defaultdict(float); b = collections.defaultdict(float); n = collections.Counter()
for r in rows:
    name = re.sub(r"\(.*", "", r[ki]); name = re.sub(r"_\d+$", "", name) if name.startswith(("gemv", "embed")) else name
    v = float(r[vi].replace(",", "")) * scale.get(r[ui], 1.0)
    if r[mi] == "gpu__time_duration.sum":
        t[name] += v; n[name] += 1   # ms
    else:
        b[name] += v
total = sum(t.values())
print(f"{'kernel':48s} {'calls':>6s} {'ms':>9s} {'%':>6s} {'GB/s':>8s}")
for k, v in sorted(t.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{k[:48]:48s} {n[k]:6d} {v:9.3f} {100*v/total:6.1f} {b[k]/(v/1e3)/1e9 if v else 0:8.1f}")
print(f"total kernel time {total:.3f} ms over {sum(n.values())} launches")
# The launches in order (the last step's worth), for gaps between kernels.
seq = [(re.sub(r"\(.*", "", r[ki]), float(r[vi].replace(",", "")) * scale.get(r[ui], 1.0) * 1e3)
       for r in rows if r[mi] == "gpu__time_duration.sum"]
with open(sys.argv[1].replace(".csv", "-seq.txt"), "w") as f:
    for k, us in seq[-400:]:
        f.write(f"{us:9.2f} us  {k}\n")
PY
      if [ -n "${PROFILE_DETAIL:-}" ]; then
        # Hardware counters of a few kernels matching PROFILE_DETAIL (a regex).
        "$ncu" --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
          --section WarpStateStats -k "regex:${PROFILE_DETAIL}" --launch-skip 40 --launch-count 4 \
          "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype ${PROFILE_DTYPE:-f16} --prompt-len 16 --gen-len 8 \
          >"$out/ncu-detail.txt" 2>&1 || true
        grep -E "^  [a-z_0-9]+|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Stall|Warp Cycles Per Issued" "$out/ncu-detail.txt" | head -80 | tee -a "$summary"
      fi
    else
      echo "ncu not found" | tee -a "$summary"
    fi
  fi
  save_kernel_cache
  # PACK=1: the report as one archive (a device call returns only a few files).
  if [ "${PACK:-0}" != 0 ]; then
    tar czf /tmp/report.tgz -C "$out" --exclude kcache.tgz . && find "$out" -mindepth 1 -not -name kcache.tgz -delete &&
      mv /tmp/report.tgz "$out/report.tgz"
  fi
  echo "report in $out"
}

save_kernel_cache() {
  local n; n=$(ls "$CHATGLM_KERNEL_CACHE" 2>/dev/null | wc -l)
  echo "kernel cache: ${cached_at_start:-0} files carried in, $n at the end (more: the carried ones missed)" |
    tee -a "${OUT:-$BIN/report}/summary.txt"
  tar czf "${OUT:-$BIN/report}/kcache.tgz" -C / "${CHATGLM_KERNEL_CACHE#/}" 2>/dev/null || true
}

case "${1:-}" in
  build) build ;;
  device) device ;;
  *) echo "usage: tests/gpu/run.sh build|device" >&2; exit 2 ;;
esac
