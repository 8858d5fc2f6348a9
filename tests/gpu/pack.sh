#!/usr/bin/env bash
# Packs what `tests/gpu/run.sh build` left in device-bin/ into device-bin/pack.txz (xz: about a third of the
# stripped binaries' size) so that a device call's working tree stays within its 64 MiB, and says whether it fits:
#   tests/gpu/pack.sh [FILE...]      FILE: paths under device-bin/ (default: the binary, qmma_bench, the
#                                    phase harnesses and kernel tracer where built, and the cuda, cuda_generate,
#                                    qmma and chatglm_cuda-lib tests)
# Then carry ["device-bin/pack.txz", "device-bin/kcache.tgz"]; tests/gpu/variant_quick.sh unpacks both.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
LIMIT=$((64 << 20))
if [ $# -gt 0 ]; then
  files=("$@")
else
  files=()
  for f in chatglm qmma_bench qmma_phases qmma_phases-variant kernel_trace.so \
    tests/cuda tests/cuda_generate tests/qmma tests/embed tests/chatglm_cuda-lib; do
    [ -e "$BIN/$f" ] && files+=("$f")
  done
fi
[ ${#files[@]} -gt 0 ] || { echo "error: nothing to pack in $BIN (run tests/gpu/run.sh build first)" >&2; exit 1; }
rm -f "$BIN/pack.txz"
tar -C "$BIN" -cJf "$BIN/pack.txz" "${files[@]}"
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
pack=$(stat -c %s "$BIN/pack.txz")
kcache=$(stat -c %s "$BIN/kcache.tgz" 2>/dev/null || echo 0)
total=$((tracked + untracked + pack + kcache))
printf 'packed %s\n' "${files[*]}"
printf 'pack.txz %.1f MB, kcache.tgz %.1f MB, tree %.1f MB: %.1f of %.1f MB\n' \
  "$(echo "$pack / 1000000" | bc -l)" "$(echo "$kcache / 1000000" | bc -l)" \
  "$(echo "($tracked + $untracked) / 1000000" | bc -l)" "$(echo "$total / 1000000" | bc -l)" \
  "$(echo "$LIMIT / 1000000" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: too large for a device call; pack fewer files (tests/gpu/pack.sh FILE...)" >&2
  exit 1
fi
