#!/usr/bin/env python3
"""The grouped products' phases, from QMMG_STAMPS=1 output (`qmma_bench`, or real steps: `chatglm bench ...
--concurrency 32`):
   python3 tests/gpu/qmmg_stamps.py stamps.txt [GHz] [kv_group_from]
A block's stamps: the wait, then per run its chunk loop, (part) published | (summed) the parts summed, then (QKV,
MODE 3) the epilogue's start (after the norm scaling), its first pass (RoPE, outputs), (key/value groups, from group
kv_group_from = n_heads·head_dim/128, default 32) the cache rows written, and the run's end. Prints the median and
max over blocks, in µs after the kernel's earliest block start, per (format, MODE, activation form)."""
import re
import statistics
import sys
from collections import defaultdict

ghz = float(sys.argv[2]) if len(sys.argv) > 2 else 1.98
kv_from = int(sys.argv[3]) if len(sys.argv) > 3 else 32
line_re = re.compile(r"QGS F(\d) M(\d) H(\d) b(\d+) t0 (\d+) runs (\d) \[(-?\d+):(-?\d+) (-?\d+):(-?\d+) (-?\d+):(-?\d+)\] st (\d+): (.*)")
kernels = defaultdict(list)
for line in open(sys.argv[1], errors="replace"):
    m = line_re.search(line)
    if not m:
        continue
    f, mode, hx, b, t0, nr = (int(m.group(i)) for i in range(1, 7))
    runs = [(int(m.group(7 + 2 * i)), int(m.group(8 + 2 * i))) for i in range(min(nr, 3))]
    n = int(m.group(13))
    v = [int(x) for x in m.group(14).split()][:n]
    kernels[(f, mode, hx)].append((b, t0, runs, v))
for key, blocks in sorted(kernels.items()):
    base = min(t0 for _, t0, _, _ in blocks)
    phases = defaultdict(list)
    spans = defaultdict(list)  # (run kind, phase): its duration
    ends = []
    for b, t0, runs, v in blocks:
        off = (t0 - base) / 1e3
        it = iter(v)
        us = lambda: off + next(it) / ghz / 1e3
        kind_name = {0: "part", 1: "summed", 2: "whole"}
        prev = [None]

        def stamp(label, kind, phase):
            t = us()
            phases[label].append(t)
            if prev[0] is not None:
                spans[(kind_name[kind], phase)].append(t - prev[0])
            prev[0] = t

        try:
            prev[0] = us()
            phases["waited"].append(prev[0])
            for g, kind in runs:
                what = ("kv" if g >= kv_from else "q") if key[1] == 3 else "run"
                stamp(f"{what} loop", kind, "chunks")
                if kind == 0:
                    stamp(f"{what} published", kind, "publish")
                    continue
                if kind == 1:
                    stamp(f"{what} summed", kind, "parts' wait + sum")
                if key[1] == 3:
                    stamp(f"{what} epilogue start", kind, "norm scaling")
                    stamp(f"{what} pass 1", kind, "epilogue pass 1")
                if what == "kv":
                    stamp(f"{what} cache rows", kind, "cache rows")
                stamp(f"{what} end", kind, "epilogue")
        except StopIteration:
            pass
        ends.append(off + v[-1] / ghz / 1e3 if v else off)
    kinds = defaultdict(int)
    for _, _, runs, _ in blocks:
        kinds["/".join(str(k) for _, k in runs)] += 1
    name = {0: "plain", 1: "accumulate (dense, 4h→h)", 2: "SwiGLU (h→4h)", 3: "QKV"}[key[1]]
    print(f"F{key[0]} MODE {key[1]} {name}, {'f16' if key[2] else 'q8'} activations: {len(blocks)} blocks, "
          f"run kinds (0 part, 1 summed, 2 whole) {dict(kinds)}")
    for name, xs in phases.items():
        print(f"  {name:22s} median {statistics.median(xs):6.2f} max {max(xs):6.2f} µs ({len(xs)})")
    print(f"  {'last stamp':22s} median {statistics.median(ends):6.2f} max {max(ends):6.2f} µs")
    print("  durations by run kind:")
    for (kind, phase), xs in sorted(spans.items()):
        print(f"    {kind:6s} {phase:18s} median {statistics.median(xs):6.2f} max {max(xs):6.2f} µs ({len(xs)})")
