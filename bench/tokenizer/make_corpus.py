#!/usr/bin/env python3
"""Builds the deterministic ~1 MB mixed Chinese/English/code text for the
tokenizer encode benchmark.

Sources (all fixed for a given test-data folder and Python version):
  * Chinese: sentences made of Chinese pieces of the real ChatGLM2 vocabulary,
    drawn with random.Random(20240601), joined with Chinese punctuation;
  * English/mixed: the texts of both golden tokenizer.json files, the chat
    prompts and the test-data README.md;
  * code: a fixed list of Python standard-library modules.
The parts are interleaved in chunks and repeated until the target size.
Prints the size, the share of each part and the sha256 of the result.
"""

import argparse
import hashlib
import json
import os
import random
import sysconfig

import sentencepiece as spm

STDLIB_MODULES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "heapq.py",
                  "bisect.py", "fractions.py", "difflib.py", "string.py"]
TARGET_BYTES = 1_000_000
SEED = 20240601


def is_cjk(text):
    return all("\u4e00" <= c <= "\u9fff" for c in text)


def chinese_text(model_path, n_bytes):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    words = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i).lstrip("\u2581")
        if piece and is_cjk(piece):
            words.append(piece)
    rng = random.Random(SEED)
    punct = ["，", "，", "，", "。", "、", "；", "！", "？", "：", "“", "”"]
    out, size = [], 0
    while size < n_bytes:
        sentence = "".join(rng.choice(words) for _ in range(rng.randint(4, 18)))
        sentence += rng.choice(punct)
        if rng.random() < 0.08:
            sentence += "\n\n"
        out.append(sentence)
        size += len(sentence.encode())
    return "".join(out)


def english_text(testdata):
    parts = []
    for rel in ["chatglm2-tokenizer/tokenizer.json", "dev/golden/tokenizer.json"]:
        with open(os.path.join(testdata, rel), encoding="utf-8") as f:
            parts.extend(case["text"] for case in json.load(f)["cases"])
    for rel in ["chatglm2-tokenizer/prompts.json", "dev/golden/prompts.json"]:
        with open(os.path.join(testdata, rel), encoding="utf-8") as f:
            parts.extend(case["prompt"] for case in json.load(f)["cases"])
    with open(os.path.join(testdata, "README.md"), encoding="utf-8", newline="") as f:
        parts.append(f.read())
    return "\n".join(parts)


def code_text():
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    for rel in STDLIB_MODULES:
        with open(os.path.join(stdlib, rel), encoding="utf-8", newline="") as f:
            parts.append(f.read())
    return "\n".join(parts)


def chunks(text, size):
    return [text[i:i + size] for i in range(0, len(text), size)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the real ChatGLM2 tokenizer.model")
    ap.add_argument("--testdata", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    # ~3 bytes per Chinese character: 1000-character chunks balance the byte shares.
    zh = chunks(chinese_text(args.model, 360_000), 1000)
    en = chunks(english_text(args.testdata), 3000)
    code = chunks(code_text(), 3000)
    out, size, i = [], 0, 0
    counts = {"zh": 0, "en": 0, "code": 0}
    while size < TARGET_BYTES:
        for name, part in (("zh", zh), ("en", en), ("code", code)):
            piece = part[i % len(part)]
            out.append(piece)
            n = len(piece.encode())
            counts[name] += n
            size += n
        i += 1
    text = "".join(out)
    data = text.encode()
    with open(args.out, "wb") as f:
        f.write(data)
    shares = ", ".join(f"{k} {v / size:.0%}" for k, v in counts.items())
    print(f"corpus: {len(data)} bytes, {len(text)} chars ({shares}), sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
