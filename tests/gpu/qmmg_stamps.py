#!/usr/bin/env python3
"""Summarises the grouped products' phase stamps (qmma_bench under CHATGLM_NVRTC_DEFINES=QMMG_STAMPS=1):
   python3 tests/gpu/qmmg_stamps.py bench-output.txt [GHz]
Per kernel (format, MODE, form): µs after the earliest block's start (median / max over blocks) at which each
phase ends — the wait for the kernel ahead, each run's chunk loop, its part published (counter taken), the parts
summed, the run's epilogue — and where the last block ends."""
import re
import statistics
import sys
from collections import defaultdict

ghz = float(sys.argv[2]) if len(sys.argv) > 2 else 1.98
line_re = re.compile(r"QGS F(\d) M(\d) H(\d) b(\d+) t0 (\d+) runs (\d) \[(-?\d+):(-?\d+) (-?\d+):(-?\d+) (-?\d+):(-?\d+)\] st (\d+): (.*)")
kernels = defaultdict(list)
for line in open(sys.argv[1], errors="replace"):
    m = line_re.search(line)
    if not m:
        continue
    f, mode, hx, b, t0, nr = (int(m.group(i)) for i in range(1, 7))
    runs = [(int(m.group(7 + 2 * i)), int(m.group(8 + 2 * i))) for i in range(nr)]
    n = int(m.group(13))
    v = [int(x) for x in m.group(14).split()][:n]
    kernels[(f, mode, hx)].append((b, t0, runs, v))
for key, blocks in sorted(kernels.items()):
    base = min(t0 for _, t0, _, _ in blocks)
    phases = defaultdict(list)
    ends = []
    for b, t0, runs, v in blocks:
        off = (t0 - base) / 1e3
        phases["start"].append(off)
        it = iter(v)
        try:
            phases["waited"].append(off + next(it) / ghz / 1e3)
            for r, (_, kind) in enumerate(runs):
                phases[f"run{r} loop"].append(off + next(it) / ghz / 1e3)
                if kind != 2:
                    phases[f"run{r} published"].append(off + next(it) / ghz / 1e3)
                if kind == 1:
                    phases[f"run{r} summed"].append(off + next(it) / ghz / 1e3)
                if kind != 0:
                    phases[f"run{r} end"].append(off + next(it) / ghz / 1e3)
        except StopIteration:
            pass
        ends.append(off + v[-1] / ghz / 1e3 if v else off)
    kinds = defaultdict(int)
    for _, _, runs, _ in blocks:
        kinds["/".join(str(k) for _, k in runs)] += 1
    print(f"F{key[0]} MODE {key[1]} {'f16' if key[2] else 'q8'}: {len(blocks)} blocks, run kinds (0 part, 1 summed, 2 whole) {dict(kinds)}")
    for name, xs in phases.items():
        if not xs:
            continue
        print(f"  {name:16} median {statistics.median(xs):7.2f}  max {max(xs):7.2f}  (n {len(xs)})")
    print(f"  {'last stamp':16} median {statistics.median(ends):7.2f}  max {max(ends):7.2f}")
