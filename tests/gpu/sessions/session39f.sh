#!/usr/bin/env bash
# Session 39's fifth call: h→4h's wide groups of 7 pairs (QMMG_WIDE_PAIRS=7: ChatGLM2-6B's 856 tile pairs as 123
# groups of 14 warps on 132 SMs where 8 pairs make 107; f16 activations only, the hand-off written a value at a
# time) and the kernel after a grouped one launched as soon as every block has started (QMMG_EARLY_DEPENDENTS=1:
# with whole-group grids 9–25 SMs sit idle during QKV and h→4h, where the next product's blocks could start and
# request their first weights), alone and together, against the default; the qmma suite and cuda_generate under
# the first; three rounds of 32 int4 sequences alternating; 64 sequences; batch 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
R=${OUT:-$BIN/report}
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
P7=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS=7
ED=CHATGLM_NVRTC_DEFINES=QMMG_EARLY_DEPENDENTS=1
PE=CHATGLM_NVRTC_DEFINES=QMMG_WIDE_PAIRS=7,QMMG_EARLY_DEPENDENTS=1
bn() {  # N int4 sequences under the settings given
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency "${N:-32}" 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
for t in qmma cuda_generate; do
  s=$(date +%s)
  env "$P7" timeout 200 "$BIN/tests/$t" --test-threads=1 >"$R/t-$t-p7.log" 2>&1
  echo "$t under $P7: rc=$? $(($(date +%s) - s))s $(grep -E '^test result' "$R/t-$t-p7.log" | tail -1)"
  grep -E "FAILED|panicked" "$R/t-$t-p7.log" | head -5
done
for i in 1 2 3; do
  echo "32 int4 sequences, round $i: default $(bn X=1) | pairs 7 $(bn "$P7") | early dependents $(bn "$ED")" \
    "| both $(bn "$PE")"
done
echo "64 int4 sequences: default $(N=64 bn X=1) | pairs 7 $(N=64 bn "$P7") | both $(N=64 bn "$PE")"
echo "16 int4 sequences: default $(N=16 bn X=1) | pairs 7 $(N=16 bn "$P7") | both $(N=16 bn "$PE")"
for c in X=1 "$P7"; do
  echo "$c batch 1 q4_0: $(env "$c" timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 \
    --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/')"
done
