#!/usr/bin/env python3
"""Checks the one-token quantized products' SASS for the wait session 29 found (bench/RESULTS.md, runs 205-209).

ptxas tracks every weight load of a lane on one write scoreboard; if the first instruction of batch k's consume
waits on that scoreboard, it waits for batch k + 1's loads too, issued just before, and the stream keeps one batch
a warp in flight (q4_0 decode 5% slower). QMMA_TOUCH moves that wait ahead of the requests; a form of it that
ptxas can undo (a touch on one path only) measured nothing. This reads `cuobjdump -sass` output and, in every
one-token kernel (qmma_F_1_M_2), after each group of in-loop weight loads (`LDG.E.NA.128` after the wait for the
kernel ahead), looks for an instruction that waits on the loads' scoreboard before the next group's touch:
calls, barriers and reconvergence points may (they wait at a step's end, where the next batch is due anyway);
anything else is the consume waiting on the next batch.

    sass_scoreboard.py FILE.sass      exit 0: no such wait; 1: a kernel waits (printed); 2: nothing to check

Control bits (Volta and newer, sm_90 included): the top 23 bits of each 128-bit instruction; in the second
64-bit word, bits 41-44 stall, 46-48 write scoreboard, 49-51 read scoreboard, 52-57 wait mask.
"""
import re
import sys

KERNEL = re.compile(r"Function : (qmma_\d_1_\d_2)\b")
INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,5})\*/\s+(.*?)\s*;?\s*/\* (0x[0-9a-f]{16}) \*/")
WORD = re.compile(r"/\* (0x[0-9a-f]{16}) \*/")
# Waits there are allowed: a step's end (the next batch is due), calls (their callee's registers).
ALLOWED = ("CALL", "BSYNC", "BAR", "WARPSYNC", "EXIT", "RET", "BRA", "BPT", "ENDCOLLECTIVE")
# The touch ahead of a group of requests: this many instructions before it may wait.
TOUCH_WINDOW = 64


def parse(lines):
    """{kernel: [(address, text, write_sb, wait_mask)]} of the one-token kernels."""
    kernels, cur = {}, None
    i = 0
    while i < len(lines):
        m = re.search(r"Function : (\S+)", lines[i])
        if m:
            cur = m.group(1) if KERNEL.search(lines[i]) else None
            if cur:
                kernels[cur] = []
        elif cur:
            m = INSTR.match(lines[i])
            if m and i + 1 < len(lines):
                hi = WORD.search(lines[i + 1])
                if hi:
                    c = int(hi.group(1), 16) >> 41
                    kernels[cur].append((m.group(1), m.group(2), (c >> 5) & 7, (c >> 11) & 0x3F))
                    i += 2
                    continue
        i += 1
    return kernels


def groups_of_loads(ins):
    """Index ranges of the in-loop weight-load groups (after the wait for the kernel ahead)."""
    start = next((k for k, x in enumerate(ins) if "ACQBULK" in x[1]), None)
    if start is None:
        return []
    loads = [k for k in range(start, len(ins)) if "LDG.E.NA.128" in ins[k][1]]
    groups, cur = [], []
    for k in loads:
        if cur and k - cur[-1] > 40:
            groups.append(cur)
            cur = []
        cur.append(k)
    if cur:
        groups.append(cur)
    return groups


def check(ins):
    """Instructions that wait on a group's scoreboard between the group and the next one's touch."""
    groups = groups_of_loads(ins)
    bad = []
    for n, g in enumerate(groups):
        sb = ins[g[0]][2]
        if sb == 7:  # no scoreboard: nothing to wait on
            continue
        end = groups[n + 1][0] - TOUCH_WINDOW if n + 1 < len(groups) else len(ins)
        # The loop ends at the kernel's first exit after it (what follows: the end's signal, the trap stub).
        end = min(end, next((k for k in range(g[-1] + 1, len(ins)) if "EXIT" in ins[k][1]), end))
        for k in range(g[-1] + 1, max(end, g[-1] + 1)):
            addr, text, _, wait = ins[k]
            op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
            if wait >> sb & 1 and op not in ALLOWED:
                bad.append((addr, text, sb))
                break
    return groups, bad


def main():
    if len(sys.argv) != 2:
        print("usage: sass_scoreboard.py FILE.sass (the output of cuobjdump -sass)", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        kernels = parse(f.read().split("\n"))
    if not kernels:
        print("no one-token qmma kernels in", sys.argv[1], file=sys.stderr)
        return 2
    failed = 0
    for name, ins in sorted(kernels.items()):
        groups, bad = check(ins)
        if not groups:
            print(f"{name}: no in-loop weight loads found", file=sys.stderr)
            return 2
        for addr, text, sb in bad:
            failed += 1
            print(f"{name}: /*{addr}*/ {text} waits on scoreboard {sb}, the next batch's loads")
    print(f"{len(kernels)} one-token kernels: " + ("no consume waits on the next batch" if not failed
                                                  else f"{failed} consume(s) wait on the next batch"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
