#!/usr/bin/env python3
"""Two kernel timelines (kernel_trace.so CSVs) of the same work side by side:
per kernel the mean duration in each and the difference, the mean gap before
it, and the whole step's period, over the last (1 - SKIP) of each trace.

  ktrace_compare.py A.csv B.csv [skip fraction, default 0.6]
"""
import collections
import csv
import sys


def load(path, skip):
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        r["s"], r["e"] = int(r["start_ns"]), int(r["end_ns"])
    rows.sort(key=lambda r: r["s"])
    rows = rows[int(len(rows) * skip):]
    dur, gap = collections.defaultdict(list), collections.defaultdict(list)
    prev = None
    for r in rows:
        name = r["name"][:40]
        dur[name].append(r["e"] - r["s"])
        if prev is not None and r["s"] - prev < 50_000:
            gap[name].append(r["s"] - prev)
        prev = max(prev or 0, r["e"])
    span = rows[-1]["e"] - rows[0]["s"]
    return rows, dur, gap, span


def mean(v):
    return sum(v) / len(v) if v else 0.0


def main():
    skip = float(sys.argv[3]) if len(sys.argv) > 3 else 0.6
    a = load(sys.argv[1], skip)
    b = load(sys.argv[2], skip)
    for label, (rows, dur, gap, span) in (("A", a), ("B", b)):
        busy = sum(sum(v) for v in dur.values())
        gaps = sum(sum(v) for v in gap.values())
        print(f"{label}: {len(rows)} kernels over {span / 1e6:.3f} ms, in kernels {busy / 1e6:.3f} ms, "
              f"gaps {gaps / 1e6:.3f} ms ({busy / len(rows) / 1e3:.2f} µs a kernel)")
    names = sorted(set(a[1]) | set(b[1]), key=lambda n: -(sum(a[1].get(n, [])) / max(len(a[0]), 1)))
    print(f"{'kernel':40} {'n A':>5} {'n B':>5} {'µs A':>8} {'µs B':>8} {'B-A':>7} {'gap A':>6} {'gap B':>6}"
          f" {'per kernel-count share of B-A, µs/1000 kernels':>10}")
    for n in names:
        da, db = a[1].get(n, []), b[1].get(n, [])
        ma, mb = mean(da), mean(db)
        # The difference this kernel adds per 1,000 kernels launched (a step-normalized weight).
        share = (mb * len(db) / len(b[0]) - ma * len(da) / len(a[0])) * 1000 / 1e3
        print(f"{n:40} {len(da):5d} {len(db):5d} {ma / 1e3:8.2f} {mb / 1e3:8.2f} {(mb - ma) / 1e3:7.2f} "
              f"{mean(a[2].get(n, [])) / 1e3:6.2f} {mean(b[2].get(n, [])) / 1e3:6.2f} {share:10.1f}")


if __name__ == "__main__":
    main()
