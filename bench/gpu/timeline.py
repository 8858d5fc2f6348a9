#!/usr/bin/env python3
"""Summarises decode steps from an nsys `cuda_gpu_trace` CSV (tests/gpu/run.sh TIMELINE=1).

A step ends with the kernel that picks the token (argmax_rows or sample_rows).
For the last steps it prints, per kernel name: launches per step, mean time,
and the mean gap from its end to the next kernel's start (negative: the next
kernel started before it ended, e.g. programmatic dependent launch).
Usage: timeline.py TRACE.csv [STEPS]
"""
import collections
import csv
import sys


def main():
    path = sys.argv[1]
    last = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no rows")
    start_key = next(k for k in rows[0] if k.startswith("Start"))
    dur_key = next(k for k in rows[0] if k.startswith("Duration"))
    events = sorted((int(r[start_key]), int(r[dur_key]), r["Name"]) for r in rows)
    ends = [i for i, (_, _, n) in enumerate(events) if n.startswith(("argmax_rows", "sample_rows"))]
    if len(ends) < 2:
        sys.exit(f"{path}: fewer than two decode steps found")
    ends = ends[-(last + 1):]
    dur = collections.defaultdict(float)
    gap = collections.defaultdict(float)
    count = collections.Counter()
    steps = []
    for a, b in zip(ends, ends[1:]):
        step = events[a + 1:b + 1]
        steps.append((step[0][0], step[-1][0] + step[-1][1], sum(d for _, d, _ in step)))
        for (s, d, n), (s2, _, _) in zip(step, step[1:] + [events[b + 1] if b + 1 < len(events) else step[-1]]):
            name = n.split("(")[0][:40]
            dur[name] += d
            gap[name] += s2 - (s + d)
            count[name] += 1
    k = len(steps)
    wall = sum(e - s for s, e, _ in steps) / k / 1e3
    busy = sum(b for _, _, b in steps) / k / 1e3
    print(f"{k} decode steps: {wall:.1f} us from first start to last end, kernels busy {busy:.1f} us (sum of durations)")
    print(f"{'kernel':40s} {'per step':>8s} {'us each':>8s} {'us/step':>8s} {'gap us':>7s}")
    for name in sorted(dur, key=lambda n: -dur[n]):
        c = count[name]
        print(f"{name:40s} {c / k:8.1f} {dur[name] / c / 1e3:8.2f} {dur[name] / k / 1e3:8.1f} {gap[name] / c / 1e3:7.2f}")


if __name__ == "__main__":
    main()
