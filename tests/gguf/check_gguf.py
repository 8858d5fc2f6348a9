#!/usr/bin/env python3
"""Checks GGUF files written by `chatglm quantize` with the reference Python
reader of llama.cpp (the `gguf` package from PyPI).

For every file: the metadata keys llama.cpp's `chatglm` architecture needs,
every tensor listed with its ggml type and shape (`ne`, innermost first), the
expected tensor set for the config, norms and biases in F32. With
--reference (the same model written as f32): every tensor dequantized by
gguf-py must be within its format's error bound of the f32 values, and
re-quantizing the f32 values with gguf-py's reference quantizer must give
our bytes (ggml bit-compatibility).

Usage: check_gguf.py [--reference dev-f32.gguf] FILE.gguf...
Exit status 0 when every check passes.
"""

import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

REQUIRED_KEYS = [
    "general.architecture",
    "general.alignment",
    "chatglm.context_length",
    "chatglm.embedding_length",
    "chatglm.feed_forward_length",
    "chatglm.block_count",
    "chatglm.attention.head_count",
    "chatglm.attention.head_count_kv",
    "chatglm.attention.layer_norm_rms_epsilon",
    "chatglm.rope.dimension_count",
    "chatglm_rs.config_json",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
]

# Relative RMS error allowed after dequantization, per format (Gaussian-like
# weights; the bounds are ~3x what these formats give on the dev model).
RMS_BOUND = {
    T.F32: 0.0,
    T.F16: 1e-3,
    T.BF16: 1e-2,
    T.Q8_0: 1.5e-2,
    T.Q5_1: 6e-2,
    T.Q5_0: 8e-2,
    T.Q4_1: 1.2e-1,
    T.Q4_0: 1.6e-1,
}


def value(field):
    return field.contents()


def expected_tensors(meta):
    """GGUF name -> ne (innermost first) implied by the config."""
    h = meta["chatglm.embedding_length"]
    ffn = meta["chatglm.feed_forward_length"]
    heads = meta["chatglm.attention.head_count"]
    kv = meta["chatglm.attention.head_count_kv"]
    head_dim = meta.get("chatglm.attention.key_length", h // heads)
    vocab = meta.get("chatglm.vocab_size", len(meta["tokenizer.ggml.tokens"]))
    qkv = (heads + 2 * kv) * head_dim
    out = {"token_embd.weight": [h, vocab], "output_norm.weight": [h], "output.weight": [h, vocab]}
    for i in range(meta["chatglm.block_count"]):
        out.update({
            f"blk.{i}.attn_norm.weight": [h],
            f"blk.{i}.attn_qkv.weight": [h, qkv],
            f"blk.{i}.attn_qkv.bias": [qkv],
            f"blk.{i}.attn_output.weight": [heads * head_dim, h],
            f"blk.{i}.ffn_norm.weight": [h],
            f"blk.{i}.ffn_up.weight": [h, 2 * ffn],
            f"blk.{i}.ffn_down.weight": [ffn, h],
        })
    return out


def f32_values(t):
    """Dequantized values in numpy (outermost-first) shape."""
    return quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)


def check_file(path, reference, failures):
    def fail(msg):
        failures.append(f"{path}: {msg}")
        print(f"  FAIL {msg}")

    r = GGUFReader(path)
    meta = {k: value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    print(f"{path}: {len(meta)} metadata keys, {len(r.tensors)} tensors")
    for k in sorted(meta):
        v = meta[k]
        shown = f"[{type(v[0]).__name__ if v else '?'} x {len(v)}]" if isinstance(v, list) else repr(v)
        if isinstance(v, str) and len(v) > 60:
            shown = repr(v[:57]) + "..."
        print(f"  {k} = {shown}")
    for k in REQUIRED_KEYS:
        if k not in meta:
            fail(f"missing metadata key {k}")
    if meta.get("general.architecture") != "chatglm":
        fail(f"general.architecture is {meta.get('general.architecture')!r}")
    if meta.get("tokenizer.ggml.model") != "llama":
        fail(f"tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}")
    n_tokens = len(meta.get("tokenizer.ggml.tokens", []))
    for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if len(meta.get(k, [])) != n_tokens:
            fail(f"{k} has {len(meta.get(k, []))} entries, tokens has {n_tokens}")

    expected = expected_tensors(meta)
    seen = {}
    for t in r.tensors:
        ne = [int(d) for d in t.shape]
        print(f"  tensor {t.name:32} {t.tensor_type.name:5} ne={ne} offset={int(t.data_offset)}")
        seen[t.name] = t
        if t.name not in expected:
            fail(f"unexpected tensor {t.name}")
        elif expected[t.name] != ne:
            fail(f"tensor {t.name}: ne {ne}, expected {expected[t.name]}")
        if len(ne) == 1 and t.tensor_type != T.F32:
            fail(f"tensor {t.name}: a vector should be F32, is {t.tensor_type.name}")
        if int(t.data_offset) % meta.get("general.alignment", 32) != 0:
            fail(f"tensor {t.name}: data offset {int(t.data_offset)} is not aligned")
    for name in expected:
        if name not in seen:
            fail(f"tensor {name} missing")

    if reference is None:
        return
    exact, total = 0, 0
    for name, t in seen.items():
        ref = reference.get(name)
        if ref is None:
            continue
        got = f32_values(t)
        if got.shape != ref.shape:
            fail(f"tensor {name}: dequantized shape {got.shape}, reference {ref.shape}")
            continue
        rms = float(np.sqrt(np.mean((got - ref) ** 2)) / max(np.sqrt(np.mean(ref**2)), 1e-30))
        bound = RMS_BOUND.get(t.tensor_type)
        if bound is None or rms > bound:
            fail(f"tensor {name} ({t.tensor_type.name}): relative RMS error {rms:.3e} exceeds {bound}")
        if t.tensor_type != T.F32:
            total += 1
            requant = quants.quantize(ref, t.tensor_type)
            if np.array_equal(np.asarray(requant).view(np.uint8).ravel(), np.asarray(t.data).view(np.uint8).ravel()):
                exact += 1
            else:
                fail(f"tensor {name} ({t.tensor_type.name}): gguf-py's reference quantizer gives different bytes")
    if total:
        print(f"  {exact}/{total} non-f32 tensors are byte-identical to gguf-py's reference quantization")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="the same model written as f32")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    reference = None
    if args.reference:
        reference = {t.name: f32_values(t) for t in GGUFReader(args.reference).tensors}
    failures = []
    for path in args.files:
        check_file(path, reference, failures)
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print(f"  {f}")
        return 1
    print(f"\nall checks passed on {len(args.files)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
