#!/usr/bin/env bash
# Session 35's device call (from the repository root, after tests/gpu/run.sh build and tests/gpu/pack.sh, with
# session 32's build beside it: device-bin/s32/chatglm and device-bin/kcache_s32.tgz): where batch-1 q4_0 decode
# lost 2.7% between session 32's build (905885e) and session 33's. Four configurations, alternating, ROUNDS rounds
# (default 2), prompt 8 (no grouped kernel runs):
#   cur  this build, its kernels        s32  session 32's binary, its kernels
#   C    this binary, session 32's qmma and decode_mma cubins (under this build's cache keys)
#   D    session 32's binary, this build's qmma and decode_mma cubins
# then the CUPTI kernel timelines of cur and s32 side by side (tests/gpu/ktrace_compare.py). Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
[ -f "$BIN/s32.txz" ] && tar xf "$BIN/s32.txz" -C "$BIN"
OUT=${OUT:-$BIN/report}
mkdir -p "$OUT"
cur=$CHATGLM_KERNEL_CACHE
mkdir -p /tmp/kc_s32 /tmp/kcC /tmp/kcD
tar xf "$BIN/kcache_s32.tgz" -C /tmp/kc_s32
s32=/tmp/kc_s32/tmp/chatglm-kernels
cp "$cur"/* /tmp/kcC/
cp "$s32"/* /tmp/kcD/
for m in qmma decode_mma; do
  a=$(ls "$cur"/$m-*.cubin) b=$(ls "$s32"/$m-*.cubin)
  echo "$m: this build $(basename "$a"), session 32 $(basename "$b")"
  cp "$b" "/tmp/kcC/$(basename "$a")"
  cp "$a" "/tmp/kcD/$(basename "$b")"
done
bench() { # label binary cache, bench arguments
  local label=$1 bin=$2 kc=$3
  shift 3
  echo "$label $* :: $(CHATGLM_KERNEL_CACHE=$kc timeout 120 "$bin" bench --device cuda --synthetic chatglm2-6b \
    --dtype q4_0 "$@" 2>&1 | grep -E '^decode  |^decode host' | tr '\n' ' ')"
}
for _ in $(seq "${ROUNDS:-2}"); do
  for p in ${PROMPTS:-8}; do
    bench cur "$BIN/chatglm" "$cur" --prompt-len "$p" --gen-len 128 --repeat 2
    bench s32 "$BIN/s32/chatglm" "$s32" --prompt-len "$p" --gen-len 128 --repeat 2
    bench C "$BIN/chatglm" /tmp/kcC --prompt-len "$p" --gen-len 128 --repeat 2
    bench D "$BIN/s32/chatglm" /tmp/kcD --prompt-len "$p" --gen-len 128 --repeat 2
  done
done | tee "$OUT/batch1.txt"
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
for label in cur s32; do
  bin=$BIN/chatglm kc=$cur
  [ $label = s32 ] && bin=$BIN/s32/chatglm kc=$s32
  LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so \
    KTRACE_OUT=/tmp/kt-$label.csv CHATGLM_KERNEL_CACHE=$kc timeout 120 "$bin" bench --device cuda \
    --synthetic chatglm2-6b --dtype q4_0 --prompt-len 8 --gen-len 96 >"$OUT/trace-$label.log" 2>&1
  tail -3 "$OUT/trace-$label.log"
done
python3 tests/gpu/ktrace_compare.py /tmp/kt-cur.csv /tmp/kt-s32.csv | tee "$OUT/ktrace_compare.txt"
gzip -c /tmp/kt-cur.csv >"$OUT/kt-cur.csv.gz"
gzip -c /tmp/kt-s32.csv >"$OUT/kt-s32.csv.gz"
