#!/usr/bin/env bash
# Peak GPU memory of one command as nvidia-smi reports it for its process (CUDA context included),
# sampled every 0.1 s, on the GPU machine (after `tests/gpu/run.sh build` and `tests/gpu/pack.sh`):
#   tests/gpu/mem_probe.sh NAME COMMAND...      e.g. tests/gpu/mem_probe.sh q4_0-8k device-bin/chatglm bench
#                                               --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 8192
# Prints the command's memory and speed lines and "peak GPU memory of NAME: N MiB"; its output goes to
# $OUT/mem-NAME.txt (else device-bin/report).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
out=${OUT:-$BIN/report}
mkdir -p "$out"
# shellcheck source=tests/gpu/device_env.sh
. tests/gpu/device_env.sh
name=$1
shift
"$@" >"$out/mem-$name.txt" 2>&1 &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
    awk -F', ' -v p="$pid" '$1 == p { print $2 }')
  [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m
  sleep 0.1
done
wait "$pid"
rc=$?
grep -iE "memory|GiB|tok/s|rror" "$out/mem-$name.txt" | tail -n 6
echo "peak GPU memory of $name (rc $rc): $peak MiB"
