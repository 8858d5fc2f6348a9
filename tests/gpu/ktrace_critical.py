#!/usr/bin/env python3
"""Kernel timelines (kernel_trace.so CSVs) as critical-path shares: with kernels taken in start order, each one's
end after the latest end before it, summed by kernel name and divided by the steps (launches of NAME, default
argmax_rows) over the last (1 - SKIP) of each trace; the traces side by side.

  ktrace_critical.py A.csv B.csv ... [--skip 0.3] [--step argmax_rows] [--window qmmx_]

--window P: only the kernels from the first to the last whose name starts with P (a run's batched decode steps,
not its prefill or other runs); an idle gap is charged to the kernel that ends it ("gap before NAME").
"""
import argparse
import collections
import csv


def shares(path, skip, step, window):
    rows = [(int(r["start_ns"]), int(r["end_ns"]), r["name"][:40]) for r in csv.DictReader(open(path))]
    rows.sort()
    if window:
        at = [i for i, r in enumerate(rows) if r[2].startswith(window)]
        rows = rows[at[0]:at[-1] + 1] if at else rows
    rows = rows[int(len(rows) * skip):]
    crit = collections.Counter()
    latest = rows[0][0]
    steps = 0
    for s, e, n in rows:
        crit[n] += max(0, e - max(latest, s))
        if s > latest:
            crit["gap before " + n] += s - latest
        latest = max(latest, e)
        steps += n == step
    return {n: v / max(steps, 1) / 1e3 for n, v in crit.items()}, (rows[-1][1] - rows[0][0]) / max(steps, 1) / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--skip", type=float, default=0.3)
    ap.add_argument("--step", default="argmax_rows")
    ap.add_argument("--window", default="")
    a = ap.parse_args()
    got = [shares(p, a.skip, a.step, a.window) for p in a.traces]
    names = sorted(set().union(*(g[0] for g in got)), key=lambda n: -got[0][0].get(n, 0))
    print(f"{'µs a step on the critical path':40}" + "".join(f" {i:>9}" for i in range(len(got))))
    print(f"{'(step)':40}" + "".join(f" {g[1]:9.2f}" for g in got))
    for n in names:
        print(f"{n:40}" + "".join(f" {g[0].get(n, 0):9.2f}" for g in got))


if __name__ == "__main__":
    main()
