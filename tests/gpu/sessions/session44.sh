#!/usr/bin/env bash
# Session 44's first call: where a 32-sequence int4 step's time goes on the committed build (session 43's
# final): the CUPTI timeline (per kernel mean and the gap before it, a stretch of the step boundary) and ncu of
# the step's kernels outside the four products (decode attention, output layer, argmax, stage_step, embed).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
echo "baseline 32: $(bn X=1) $(bn X=1)"
PROFILE_DTYPES= PROFILE_CONCURRENCY=32 SKIP_FRACTION=0.6 bash tests/gpu/profile_quant.sh "$R" 2>&1 | tail -40
python3 - /tmp/ktrace-q4_0-batched32.csv <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows: r["s"], r["e"] = int(r["start_ns"]), int(r["end_ns"])
rows.sort(key=lambda r: r["s"])
rows = rows[int(len(rows)*0.7):]
# a step boundary: from the last layer's 4h->h to layer 0's QKV of the next step
idx = [i for i, r in enumerate(rows) if r["name"].startswith("argmax")]
for i in idx[2:4]:
    t0 = rows[i-6]["s"]
    for j in range(i-6, min(i+10, len(rows))):
        r = rows[j]
        print(f"  {(r['s']-t0)/1e3:8.2f} {(r['e']-t0)/1e3:8.2f} {(r['e']-r['s'])/1e3:7.2f} g{r['grid']:>5} {r['name'][:48]}")
    print()
PY
