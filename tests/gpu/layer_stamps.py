#!/usr/bin/env python3
"""One layer of one 32-sequence decode step on one clock: the grouped products' block stamps (QMMG_STAMPS=1 with
QMMG_STAMP_STEP / QMMG_STAMP_LAYER) and the decode attention's (SHORT_STAMPS=2, the same layer), from a
`chatglm bench ... --concurrency 32` log:
   python3 tests/gpu/layer_stamps.py stamps.txt [GHz]
Per kernel: its blocks' starts (first, median, last) and, for the attention, each phase's end (median, last), in
µs after the QKV product's first block start. The products' own phases: tests/gpu/qmmg_stamps.py."""
import re
import statistics
import sys
from collections import defaultdict

ghz = float(sys.argv[2]) if len(sys.argv) > 2 else 1.98
qgs = re.compile(r"QGS F(\d) M(\d) H(\d) b(\d+) t0 (\d+) runs (\d) \[.*\] st (\d+): (.*)")
shs = re.compile(r"SHS g (\d+) wt (\d+) ctx (\d+) t0 (\d+) wait (\d+) tiles (\d+) merge1 (\d+) merge2 (\d+) out (\d+)")
products = defaultdict(list)
attention = []
for line in open(sys.argv[1], errors="replace"):
    m = qgs.search(line)
    if m:
        f, mode, hx, b, t0 = (int(m.group(i)) for i in range(1, 6))
        n = int(m.group(7))
        v = [int(x) for x in m.group(8).split()][:n]
        products[(f, mode, hx)].append((b, t0, v))
        continue
    m = shs.search(line)
    if m:
        attention.append(tuple(int(m.group(i)) for i in range(1, 10)))
names = {1: "residual (dense)", 2: "h->4h", 3: "QKV"}
qkv = [t0 for (f, mode, hx), bl in products.items() if mode == 3 for _, t0, _ in bl]
base = min(qkv) if qkv else min((a[3] for a in attention), default=0)
us = lambda ns: (ns - base) / 1e3


def spread(xs):
    xs = sorted(xs)
    return f"first {xs[0]:7.2f}  median {statistics.median(xs):7.2f}  last {xs[-1]:7.2f}  ({len(xs)} blocks)"


for (f, mode, hx), bl in sorted(products.items(), key=lambda kv: min(t0 for _, t0, _ in kv[1])):
    starts = [us(t0) for _, t0, _ in bl]
    ends = [us(t0) + v[-1] / ghz / 1e3 for _, t0, v in bl if v]
    print(f"F{f} M{mode} H{hx} {names.get(mode, mode):17} start {spread(starts)}")
    if ends:
        print(f"{'':24} end   {spread(ends)}")
if attention:
    print(f"attention ({len(attention)} blocks, ctx {attention[0][2]})")
    starts = [us(a[3]) for a in attention]
    print(f"  start  {spread(starts)}")
    acc = [us(a[3]) for a in attention]
    for k, name in enumerate(["wait", "tiles", "merge1", "merge2", "out"]):
        acc = [t + a[4 + k] / 1e3 for t, a in zip(acc, attention)]
        print(f"  {name:6} {spread(acc)}")
