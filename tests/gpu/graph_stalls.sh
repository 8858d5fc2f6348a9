#!/usr/bin/env bash
# Whether code placement moves batch-1 decode through instruction fetch: ncu profiles whole recorded decode steps
# (`--graph-profiling graph`: the step's graph as one workload, its kernels overlapping under programmatic
# dependent launch as they do unprofiled) under several kernel lookup orders (CHATGLM_CUDA_LOAD_ORDER; ORDERS,
# default "global-2 reverse list"), and prints each order's step time and stall reasons (warps stalled per issued
# instruction, largest first; `no_instruction` is instruction fetch). Also each order's decode tok/s unprofiled.
# SKIP (default 1200) workloads are passed over first: the synthetic model's fill kernels and the prefill's
# launches come before the decode steps' graphs; each row names what was profiled.
# From the repository root after tests/gpu/run.sh build and tests/gpu/pack.sh; logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
BIN=device-bin
out=${OUT:-$BIN/report}
mkdir -p "$out"
# shellcheck source=tests/gpu/device_env.sh
. tests/gpu/device_env.sh
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
[ -n "$ncu" ] || { echo "ncu not found"; exit 1; }
bench=("$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype "${DTYPE:-q4_0}" --prompt-len 8 --gen-len 64)
metrics="gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active"
metrics+=",regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
for order in ${ORDERS:-global-2 reverse list}; do
  # An unknown order name is the default (global-2) in compile.rs.
  echo "== $order: $(CHATGLM_CUDA_LOAD_ORDER=$order timeout 120 "${bench[@]}" --repeat 2 2>&1 | grep -E '^decode  ')"
  CHATGLM_CUDA_LOAD_ORDER=$order timeout "${LIMIT:-200}" "$ncu" --clock-control none --graph-profiling graph \
    --launch-skip "${SKIP:-1200}" --launch-count "${COUNT:-3}" --metrics "$metrics" --csv --page raw "${bench[@]}" \
    >"$out/graph-$order.csv" 2>"$out/graph-$order.err" || { echo "ncu rc $?"; tail -5 "$out/graph-$order.err"; }
  python3 - "$out/graph-$order.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if len(rows) < 3:
    print("no rows"); sys.exit()
head, data = rows[0], rows[2:]
col = {h: i for i, h in enumerate(head)}
def val(r, m):
    try: return float(r[col[m]].replace(",", ""))
    except (KeyError, ValueError): return float("nan")
for r in data:
    stalls = sorted(((val(r, h), h) for h in head if h.startswith("smsp__average_warps_issue_stalled_")), reverse=True)
    short = lambda h: h.replace("smsp__average_warps_issue_stalled_", "").replace("_per_issue_active.ratio", "")
    print(f"  {r[col['Kernel Name']][:24]}: {val(r, 'gpu__time_duration.sum') / 1e3:.1f} us, {val(r, 'smsp__inst_executed.sum') / 1e6:.2f} M inst, "
          f"issue {val(r, 'smsp__issue_active.avg.pct_of_peak_sustained_active'):.1f}%; stalls: "
          + ", ".join(f"{short(h)} {v:.2f}" for v, h in stalls[:9]))
PY
done 2>&1 | tee "$out/graph_stalls.txt"
