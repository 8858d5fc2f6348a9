#!/usr/bin/env python3
"""Times SentencePiece (C++, via the Python wrapper) encoding a text file.

usage: sp_bench.py TOKENIZER_MODEL TEXT_FILE RUNS [IDS_OUT]
Encodes the whole file as one string RUNS times (single thread) and prints
MB/s and tokens/s like encode_bench; optionally writes the ids, one per line.
The timing includes building the Python list of ids (a few ms per MB).
"""

import sys
import time

import sentencepiece as spm


def main():
    model, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sp = spm.SentencePieceProcessor(model_file=model)
    with open(path, encoding="utf-8", newline="") as f:  # keep \r\n as is
        text = f.read()
    mb = len(text.encode()) / 1e6
    ids = sp.encode(text)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        ids = sp.encode(text)
        times.append(time.perf_counter() - start)
    best, mean = min(times), sum(times) / len(times)
    print(f"sentencepiece {spm.__version__}: {mb:.3f} MB, {len(ids)} tokens, {runs} runs: "
          f"best {mb / best:.2f} MB/s {len(ids) / best:.0f} tokens/s, "
          f"mean {mb / mean:.2f} MB/s {len(ids) / mean:.0f} tokens/s")
    if len(sys.argv) > 4:
        with open(sys.argv[4], "w") as f:
            f.write("\n".join(map(str, ids)) + "\n")


if __name__ == "__main__":
    main()
