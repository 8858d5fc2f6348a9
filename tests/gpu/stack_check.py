#!/usr/bin/env python3
"""Flags grouped-product kernels that spill more than the shipped build.

Reads `cuobjdump -res-usage` of one or more cubins on stdin (each cubin's output after a line
"== NAME") and compares every qmmx_*/qmmh_*/qmmg_* kernel's STACK bytes with
tests/gpu/stack_baseline.txt ("kernel stack" lines, the default build's). A kernel above its
baseline is printed as a warning: its spilled values are read back from L2 in the prologue,
before the first weight copies (~200 KB of shared memory a block leaves L1 no room), and
session 49's runs 346-347 lost 26-30% to 16-80 bytes of it. Exit status 0 always: variants
may spill deliberately; the build log says so.
    cuobjdump -res-usage X.cubin | python3 tests/gpu/stack_check.py
"""
import os
import re
import sys

base_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stack_baseline.txt")
baseline = {}
with open(base_path) as f:
    for line in f:
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            baseline[parts[0]] = int(parts[1])

cubin, func, worse, seen = "", None, [], 0
for line in sys.stdin:
    if line.startswith("== "):
        cubin = line[3:].strip()
        continue
    m = re.match(r"\s*Function (\S+):", line)
    if m:
        func = m.group(1)
        continue
    m = re.match(r"\s*REG:(\d+) STACK:(\d+)", line)
    if m and func and re.match(r"qmm[xhg]_", func):
        seen += 1
        stack = int(m.group(2))
        if func in baseline and stack > baseline[func]:
            worse.append(f"{os.path.basename(cubin)} {func}: STACK {stack} bytes, the shipped build {baseline[func]}")
        func = None
for w in worse:
    print("warning: spills more than the shipped build:", w)
print(f"stack check: {seen} grouped kernels, {len(worse)} above the shipped build's stack")
