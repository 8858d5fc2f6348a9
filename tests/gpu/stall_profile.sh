#!/usr/bin/env bash
# Why the quantized products issue as few instructions as they do: ncu's warp-state (stall reason) and
# scheduler statistics of a few launches of each kernel matching STALL_KERNELS (regexes, ';'-separated), in one
# device call (after `tests/gpu/run.sh build` and `tests/gpu/pack.sh`; carry device-bin/pack.txz and
# device-bin/kcache.tgz):
#   tests/gpu/stall_profile.sh [out-dir]
# Defaults: the grouped 32-token int4 products (32 sequences, prompt 128) and the one-token int4 products
# (batch-1 decode). Per kernel: duration, DRAM throughput, issue slots used, warps a scheduler, eligible
# warps, and the stall reasons as warps stalled per issued instruction (largest first).
# STALL_CACHE=none: caches kept between the profiled launches (ncu's --cache-control; default all: flushed).
# STALL_CMD: a command to profile instead of `chatglm bench` (e.g. "device-bin/qmma_bench", or the Marlin peer
# "env MARLIN_SHAPES=h_to_4h device-bin/marlin_peer 32" with STALL_KERNELS=Marlin).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=device-bin
out=${1:-${OUT:-$BIN/report}}
mkdir -p "$out"
# shellcheck source=tests/gpu/device_env.sh
. tests/gpu/device_env.sh
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
[ -n "$ncu" ] || { echo "ncu not found"; exit 1; }
b="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b --dtype ${STALL_DTYPE:-q4_0}"
metrics="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__warps_active.avg.per_cycle_active"
metrics+=",smsp__warps_eligible.avg.per_cycle_active,sm__cycles_active.avg,sm__cycles_elapsed.avg"
metrics+=",smsp__inst_executed.sum,smsp__inst_executed_pipe_lsu.sum,smsp__inst_executed_op_shared_ld.sum"
metrics+=",l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,launch__registers_per_thread,launch__grid_size"
metrics+=",regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
# Tensor-pipe load (is the mma.sync rate the bound?) and the L2 side of the loads.
metrics+=",sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_hmma.sum"
metrics+=",lts__t_sectors_srcunit_tex_op_read.sum,dram__bytes_read.sum"
# How busy the SM's load path is (weights and the activations each block re-reads).
metrics+=",l1tex__throughput.avg.pct_of_peak_sustained_active,lts__throughput.avg.pct_of_peak_sustained_elapsed"
# Which execution pipe the "math pipe throttle" stalls queue for: each pipe's active cycles and instructions.
metrics+=",regex:sm__pipe_[a-z0-9_]+_cycles_active\\.avg\\.pct_of_peak_sustained_active"
metrics+=",regex:sm__inst_executed_pipe_[a-z0-9_]+\\.sum$"
IFS=';' read -r -a kernels <<<"${STALL_KERNELS:-qmmg_0_4_;qmma_0_1_[0-9]_2}"
for k in "${kernels[@]}"; do
  case ${STALL_CMD:+cmd}$k in
    cmd*) args="" ;;
    qmmg*|*_4_*|*_8_*) args="--prompt-len 128 --gen-len 16 --concurrency ${STALL_CONCURRENCY:-32}" ;;
    *) args="--prompt-len 16 --gen-len 16" ;;
  esac
  name=$(echo "$k" | tr -c 'a-zA-Z0-9_\n' '_')
  echo "== $k ($args)"
  # shellcheck disable=SC2086
  timeout "${STALL_LIMIT:-240}" "$ncu" --clock-control none --cache-control "${STALL_CACHE:-all}" -k "regex:$k" --launch-skip "${STALL_SKIP:-120}" \
    --launch-count "${STALL_COUNT:-8}" --metrics "$metrics" --csv --page raw ${STALL_CMD:-$b $args} >"$out/stall-$name.csv" \
    2>"$out/stall-$name.err" || { echo "ncu rc $?"; tail -3 "$out/stall-$name.err"; }
  python3 - "$out/stall-$name.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if len(rows) < 3:
    print("no rows"); sys.exit()
head, units, data = rows[0], rows[1], rows[2:]
col = {h: i for i, h in enumerate(head)}
by = collections.defaultdict(list)
for r in data:
    by[r[col["Kernel Name"]]].append(r)
def val(r, m):
    try: return float(r[col[m]].replace(",", ""))
    except (KeyError, ValueError): return float("nan")
for name, rs in by.items():
    avg = lambda m: sum(val(r, m) for r in rs) / len(rs)
    print(f"{name} x{len(rs)}: {avg('gpu__time_duration.sum')/1e3:.2f} us, grid {avg('launch__grid_size'):.0f}, "
          f"{avg('launch__registers_per_thread'):.0f} regs, DRAM {avg('dram__throughput.avg.pct_of_peak_sustained_elapsed'):.1f}%, "
          f"SM {avg('sm__throughput.avg.pct_of_peak_sustained_elapsed'):.1f}%, SM active {avg('sm__cycles_active.avg')/max(avg('sm__cycles_elapsed.avg'),1)*100:.0f}% of elapsed")
    print(f"   issue active {avg('smsp__issue_active.avg.pct_of_peak_sustained_active'):.1f}%, warps/scheduler {avg('smsp__warps_active.avg.per_cycle_active'):.2f}, "
          f"eligible {avg('smsp__warps_eligible.avg.per_cycle_active'):.2f}, inst {avg('smsp__inst_executed.sum')/1e3:.0f}K "
          f"(lsu {avg('smsp__inst_executed_pipe_lsu.sum')/1e3:.0f}K, lds {avg('smsp__inst_executed_op_shared_ld.sum')/1e3:.0f}K, "
          f"bank conflicts {avg('l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum')/1e3:.0f}K)")
    print(f"   tensor pipe {avg('sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active'):.1f}% active, "
          f"hmma {avg('sm__inst_executed_pipe_tensor_op_hmma.sum')/1e3:.0f}K, L2 reads {avg('lts__t_sectors_srcunit_tex_op_read.sum')*32/1e6:.1f} MB, "
          f"DRAM reads {avg('dram__bytes_read.sum')/1e6:.1f} MB, "
          f"L1 throughput {avg('l1tex__throughput.avg.pct_of_peak_sustained_active'):.1f}%, "
          f"L2 throughput {avg('lts__throughput.avg.pct_of_peak_sustained_elapsed'):.1f}%")
    st = [(m.replace("smsp__average_warps_issue_stalled_", "").replace("_per_issue_active.ratio", ""), avg(m))
          for m in col if m.startswith("smsp__average_warps_issue_stalled_")]
    st.sort(key=lambda kv: -kv[1] if kv[1] == kv[1] else 0)
    pipes = [(m[len("sm__pipe_"):-len("_cycles_active.avg.pct_of_peak_sustained_active")], avg(m)) for m in col
             if m.startswith("sm__pipe_") and m.endswith("_cycles_active.avg.pct_of_peak_sustained_active")]
    pipes.sort(key=lambda kv: -kv[1] if kv[1] == kv[1] else 0)
    print("   pipes active %: " + ", ".join(f"{k} {v:.1f}" for k, v in pipes if v == v and v >= 1.0))
    insts = [(m[len("sm__inst_executed_pipe_"):-len(".sum")], avg(m)) for m in col
             if m.startswith("sm__inst_executed_pipe_") and m.endswith(".sum")]
    insts.sort(key=lambda kv: -kv[1] if kv[1] == kv[1] else 0)
    print("   pipe instructions K: " + ", ".join(f"{k} {v/1e3:.0f}" for k, v in insts if v == v and v >= 1e3))
    print("   stalls/issue: " + ", ".join(f"{k} {v:.2f}" for k, v in st[:9] if v == v and v > 0.02))
PY
done
