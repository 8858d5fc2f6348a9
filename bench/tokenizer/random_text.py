#!/usr/bin/env python3
"""Writes deterministic random text stressing the tokenizer, for the
differential check against SentencePiece in run.sh.

usage: random_text.py SEED N_FRAGMENTS OUT
Fragments: ASCII, CJK, whitespace runs (spaces, tabs, CR/LF, NBSP, ideographic
space), control characters, emoji and astral-plane characters, other BMP and
private-use characters, and literal special-looking strings (▁, <s>, [gMASK], <0x0A>).
"""

import random
import sys


def main():
    seed, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    pools = [
        lambda: chr(rng.randint(0x20, 0x7E)),
        lambda: chr(rng.randint(0x4E00, 0x9FFF)),
        lambda: rng.choice([" ", "  ", "    ", "\t", "\n", "\r\n", "\u3000", "\u00a0", " " * rng.randint(5, 40)]),
        lambda: chr(rng.randint(0x1, 0x1F)),
        lambda: chr(rng.choice([rng.randint(0x1F300, 0x1FAFF), rng.randint(0x20000, 0x2FFFF),
                                rng.randint(0x10000, 0x10FFFF)])),
        lambda: chr(rng.randint(0x80, 0xD7FF)),
        lambda: chr(rng.randint(0xE000, 0xFFFD)),
        lambda: rng.choice(["\u2581", "\u2581\u2581", "<s>", "</s>", "<unk>", "[gMASK]", "sop", "eop", "<0x0A>"]),
    ]
    weights = [30, 25, 15, 3, 5, 8, 2, 2]
    text = "".join(rng.choices(pools, weights)[0]() for _ in range(n))
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)


if __name__ == "__main__":
    main()
