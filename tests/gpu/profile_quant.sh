#!/usr/bin/env bash
# Where a quantized decode step's time goes, on the GPU machine (after
# `tests/gpu/run.sh build`, from the repository root):
#   tests/gpu/profile_quant.sh [out-dir]
# 1. A timeline (CUPTI kernel records, CUDA graph nodes one by one) of batch-1 decode
#    for each of PROFILE_DTYPES (default "q4_0 q8_0 f16"; empty: none) and, with
#    PROFILE_CONCURRENCY (default 32), of that many int4 sequences: per kernel
#    the mean time and the mean gap before it (the previous kernel's end to
#    its start), so kernel boundaries show up beside the kernels.
# 2. With PROFILE_STALLS=1, ncu's warp-state and source-level stall counters of the
#    one-token quantized products (which SASS lines the warps wait on); STALL_KERNELS and
#    STALL_ARGS (bench arguments, e.g. "--prompt-len 128 --gen-len 8 --concurrency 32") pick others.
# 3. Where device-bin/qmma_phases exists, each block's phase stamps of those products (below).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
out=${1:-${OUT:-$BIN/report}}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export CHATGLM_KERNEL_CACHE=${CHATGLM_KERNEL_CACHE:-/tmp/chatglm-kernels}
# The shipped cache holds SASS (cubins): a fresh machine skips the driver's ~110 s PTX compile.
export CHATGLM_KERNEL_FORMAT=${CHATGLM_KERNEL_FORMAT:-cubin}
summary=$out/profile.txt
: >"$summary"
b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b"

# The kernel timeline comes from device-bin/kernel_trace.so (tests/gpu/kernel_trace.c, a CUPTI
# activity recorder injected with CUDA_INJECTION64_PATH; `tests/gpu/run.sh build` makes it).
cupti_dir=$(dirname "$( (ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 2>/dev/null;
  find / -name libcupti.so.13 -not -path "*/proc/*" 2>/dev/null) | head -1)" 2>/dev/null)
timeline() {
  local name=$1; shift
  echo "== timeline $name: $*" | tee -a "$summary"
  if [ ! -f "$BIN/kernel_trace.so" ] || [ -z "$cupti_dir" ]; then
    echo "no kernel tracer (device-bin/kernel_trace.so, libcupti.so.13)" | tee -a "$summary"; return
  fi
  LD_LIBRARY_PATH=$cupti_dir:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/$BIN/kernel_trace.so \
    KTRACE_OUT=/tmp/ktrace-$name.csv "$@" >"$out/trace-$name.log" 2>&1 ||
    { tail -5 "$out/trace-$name.log" | tee -a "$summary"; return; }
  python3 - "/tmp/ktrace-$name.csv" "${SKIP_FRACTION:-0.6}" <<'PY' 2>&1 | tee -a "$summary"
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    r["s"], r["e"] = int(r["start_ns"]), int(r["end_ns"])
rows.sort(key=lambda r: r["s"])
rows = rows[int(len(rows) * float(sys.argv[2])):]  # the steady decode steps at the end
dur = collections.defaultdict(list); gap = collections.defaultdict(list)
prev_end = None
for r in rows:
    name = r["name"][:34]
    dur[name].append(r["e"] - r["s"])
    if prev_end is not None and r["s"] - prev_end < 50_000:
        gap[name].append(r["s"] - prev_end)
    prev_end = max(prev_end or 0, r["e"])
span = rows[-1]["e"] - rows[0]["s"]
busy = sum(sum(v) for v in dur.values()); gaps = sum(sum(v) for v in gap.values())
print(f"{len(rows)} kernels over {span/1e6:.2f} ms: in kernels {busy/1e6:.2f} ms, between them (< 50 µs) {gaps/1e6:.2f} ms")
print(f"{'kernel':34} {'grid':>5} {'regs':>4} {'count':>6} {'mean µs':>8} {'gap µs':>7} {'total ms':>9}")
first = {}
for r in rows: first.setdefault(r["name"][:34], r)
for name, v in sorted(dur.items(), key=lambda kv: -sum(kv[1])):
    g = gap.get(name, [])
    f = first[name]
    print(f"{name:34} {f['grid']:>5} {f['registers']:>4} {len(v):6d} {sum(v)/len(v)/1e3:8.2f} "
          f"{(sum(g)/len(g)/1e3 if g else 0):7.2f} {sum(v)/1e6:9.2f}")
mid = len(rows) // 2
print("a stretch from the middle (start offset, gap before, duration, µs):")
t0 = rows[mid]["s"]
for i in range(mid, min(mid + 14, len(rows))):
    r = rows[i]
    print(f"  {(r['s']-t0)/1e3:8.2f} {(r['s']-rows[i-1]['e'])/1e3:7.2f} {(r['e']-r['s'])/1e3:7.2f}  {r['name'][:40]}")
PY
}

for d in ${PROFILE_DTYPES-q4_0 q8_0 f16}; do
  timeline "$d-short" $b --dtype "$d" --prompt-len 16 --gen-len 64
done
if [ "${PROFILE_CONCURRENCY:-32}" != 0 ]; then
  timeline "q4_0-batched${PROFILE_CONCURRENCY:-32}" $b --dtype q4_0 --prompt-len 128 --gen-len 64 \
    --concurrency "${PROFILE_CONCURRENCY:-32}"
fi

if [ "${PROFILE_STALLS:-0}" != 0 ]; then
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  if [ -n "$ncu" ]; then
    for k in ${STALL_KERNELS:-qmma_0_1_2_2 qmma_0_1_1_2 qmma_0_1_3_2}; do
      echo "== stalls of $k (q4_0, ${STALL_ARGS:-one token})" | tee -a "$summary"
      "$ncu" --clock-control none --section WarpStateStats --section SourceCounters --section SpeedOfLight \
        --section Occupancy -k "regex:^$k\$" --launch-skip 60 --launch-count 1 \
        $b --dtype q4_0 ${STALL_ARGS:---prompt-len 16 --gen-len 8} >"$out/ncu-$k.txt" 2>&1 || true
      grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued" "$out/ncu-$k.txt" |
        head -8 | tee -a "$summary"
      sed -n '/Source Counters/,$p' "$out/ncu-$k.txt" | grep -vE "^ *-+ *$" | head -40 | tee -a "$summary"
    done
  else
    echo "ncu not found" | tee -a "$summary"
  fi
fi
# 3. Phase stamps of every block of the one-token quantized products (tests/gpu/qmma_phases.cu, built by
#    `tests/gpu/run.sh build` where nvcc is found): q4_0 and q8_0.
#    device-bin/qmma_phases-variant (PHASES_VARIANT at build) runs after each, for an A/B in one call.
for f in 0 2; do
  for exe in "$BIN/qmma_phases" "$BIN/qmma_phases-variant"; do
    [ -x "$exe" ] || continue
    echo "== phases of the one-token products, format $f: $(basename "$exe")" | tee -a "$summary"
    timeout 120 "$exe" "$f" 2>&1 | tee -a "$summary"
  done
done
echo "profile in $summary"
