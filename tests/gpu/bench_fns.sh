# Sourced by the session scripts (from the repository root, BIN and R set, after device_env.sh): one benchmark
# figure each, under the environment assignments given as arguments (none: the defaults), the suites, the start.
#   b1 [VAR=value...]   batch-1 decode tok/s of DTYPE (default q4_0): prompt 8, 128 new tokens, best of 2
#   bn [VAR=value...]   aggregate tok/s of N (default 32) int4 sequences: prompt 128, 256 new tokens each
b1() {
  env "$@" timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype "${DTYPE:-q4_0}" \
    --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'
}
bn() {
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency "${N:-32}" 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
#   suite CASE NAME     the GPU test suite NAME (device-bin/tests/NAME) under the environment assignment CASE (X=1: the
#                       defaults): its log in $R, a line with its result and the first failures
suite() {
  local s log=$R/t-$2-$(echo "$1" | tr -c 'A-Za-z0-9_\n' '_').log
  s=$(date +%s)
  env "$1" timeout 200 "$BIN/tests/$2" --test-threads=1 >"$log" 2>&1
  echo "$2 under $1: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$log" | tail -1)"
  grep -E "FAILED|panicked|relative error" "$log" | head -8
}
#   session_start       the suites' environment (golden data, a GPU required), the report folder R, the card's name
session_start() {
  export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
  R=${OUT:-$BIN/report}
  mkdir -p "$R"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
}
#   timeline NAME ROWS [VAR=value...]   a 32-sequence int4 run under the kernel tracer (kernel_trace.so, CUPTI):
#                       its figure, the trace in $R/kt-NAME.csv.xz and the first ROWS lines of each kernel's share of
#                       the batched steps' critical path (ktrace_critical.py, qmmx products' window)
timeline() {
  local name=$1 rows=$2 cupti_dir
  shift 2
  [ -f "$BIN/kernel_trace.so" ] || { echo "timeline $name: no kernel tracer in $BIN"; return 0; }
  cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
    find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
  env LD_LIBRARY_PATH="$cupti_dir:$LD_LIBRARY_PATH" CUDA_INJECTION64_PATH="$PWD/$BIN/kernel_trace.so" "$@" \
    KTRACE_OUT="/tmp/kt-$name.csv" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b \
    --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32 2>&1 | grep -E '^batch '
  xz -c "/tmp/kt-$name.csv" >"$R/kt-$name.csv.xz"
  echo "== timeline $name"
  python3 tests/gpu/ktrace_critical.py "/tmp/kt-$name.csv" --skip 0.05 --window qmmx_ | head -"$rows"
}
