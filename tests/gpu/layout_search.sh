#!/usr/bin/env bash
# A search over code placements of the batch-1 q4_0 decode step's kernels (from the repository root, after
# tests/gpu/run.sh build and tests/gpu/pack.sh): N random orders (seeded) of the step's kernels, each with 0-2
# cold "spacer" kernels among them, put first with CHATGLM_CUDA_LOAD_FIRST (the rest keep the default order);
# one decode each, then the TOP best and the default again, alternating, ROUNDS times. With the driver's lazy
# loading the lookup order is the layout (compile.rs, load_order); run 249 found that it moves batch-1 only under
# programmatic dependent launch. Also EXTRA_ENVS: lines of "label VAR=value ...", measured with the default.
#   N=24 TOP=3 ROUNDS=2 SEED=36 tests/gpu/layout_search.sh          logs to $OUT/search.txt
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
OUT=${OUT:-$BIN/report}
mkdir -p "$OUT"
one=(--dtype q4_0 --prompt-len 8 --gen-len 128 --repeat 2)
tok() { # env assignments... -> the best decode tok/s of one bench
  env "$@" timeout 150 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b "${one[@]}" 2>&1 |
    awk '/^decode  /{for(i=2;i<=NF;i++) if($i ~ /^tok\/s/) {v=$(i-1); gsub(/[(]/, "", v); if (v+0>b) b=v+0}} END{print b+0}'
}
hot="qmma_0_1_1_2 qmma_0_1_2_2 qmma_0_1_3_2 qmma_2_1_0_2 embed_1 argmax_rows stage_step attn_decode_short16"
spacers="qmmg_0_8_0 qmma_3_1_3_1 qmmh_0_4_2 qmma_0_8_1_0 attn_flash_f16 rms_norm gemv_1_1_0 attn_decode_mma16"
python3 - "${N:-24}" "${SEED:-36}" "$hot" "$spacers" >"$OUT/search_orders.txt" <<'EOF'
import random, sys
n, seed, hot, spacers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
rng = random.Random(seed)
for i in range(n):
    order = hot[:]
    rng.shuffle(order)
    for s in rng.sample(spacers, rng.randint(0, 2)):
        order.insert(rng.randint(0, len(order)), s)
    print(f"r{i} " + ",".join(order))
EOF
{
  echo "default $(tok)"
  while read -r label order; do
    echo "$label $(tok CHATGLM_CUDA_LOAD_FIRST="$order") $order"
  done <"$OUT/search_orders.txt"
  echo "default $(tok)"
} | tee "$OUT/search.txt"
best=$(grep '^r' "$OUT/search.txt" | sort -k2,2 -g -r | head -"${TOP:-3}" | awk '{print $1}')
for _ in $(seq "${ROUNDS:-2}"); do
  echo "again default $(tok)"
  for label in $best; do
    order=$(awk -v l="$label" '$1 == l {print $2}' "$OUT/search_orders.txt")
    echo "again $label $(tok CHATGLM_CUDA_LOAD_FIRST="$order") $order"
  done
  while read -r label envs; do
    [ -n "$label" ] || continue
    # shellcheck disable=SC2086 # the line's assignments, split
    echo "again $label $(tok $envs)"
  done <<<"${EXTRA_ENVS:-}"
done | tee -a "$OUT/search.txt"
