#!/usr/bin/env python3
"""Write a ChatGLM2-6B model file in chatglm.cpp 0.4.2's GGML format with random weights (numpy only).

    write_random.py OUT.bin {q4_0,q8_0,f16} TOKENIZER_MODEL [CONFIG_DIR]

For speed comparisons only: the file has the real shapes, tensor names, config and tokenizer of ChatGLM2-6B,
and random values (f16 weights ~N(0, 0.02); quantized blocks of random codes with a small constant scale), which
is what `chatglm bench --synthetic chatglm2-6b` runs on our side. No PyTorch and no 12.5 GB source checkpoint are
needed (chatglm.cpp's own converter needs both; see convert_synth.py for the converter-based path).

The layout follows chatglm.cpp's convert.py (ChatGLM2Converter): b"ggml", the model type, a version-2 config
record, the sentencepiece model, then per tensor its name, shape, GGML type and data aligned to 16 bytes. With
CONFIG_DIR, the matching config.json is written there too (bench/chatglm_cpp/table.py reads it for GB/s).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

CHATGLM2 = 2
TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
CONFIG = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "multi_query_group_num": 2,
    "kv_channels": 128,
    "num_layers": 28,
    "ffn_hidden_size": 13696,
    "padded_vocab_size": 65024,
    "layernorm_epsilon": 1e-5,
    "seq_length": 32768,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
ROWS_PER_CHUNK = 1024


def data_bytes(kind, rows, cols, rng):
    """`rows` rows of a (rows × cols) tensor of `kind`, as the file stores them."""
    n = rows * cols
    if kind == "f32":
        return np.ones(n, dtype=np.float32).tobytes()
    if kind == "f16":
        return (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float16).tobytes()
    block = {"q4_0": 18, "q8_0": 34}[kind]
    blocks = rng.integers(0, 256, size=(n // 32, block), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    blocks[:, 0:2] = scale
    return blocks.tobytes()


def write_tensor(f, name, shape, kind, rng):
    f.write(struct.pack("i", len(name.encode())))
    f.write(name.encode())
    f.write(struct.pack("i" * (2 + len(shape)), len(shape), *shape, TYPES[kind]))
    f.seek((f.tell() + 15) // 16 * 16)
    rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    for r0 in range(0, rows, ROWS_PER_CHUNK):
        f.write(data_bytes(kind, min(ROWS_PER_CHUNK, rows - r0), cols, rng))


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[2] not in ("q4_0", "q8_0", "f16"):
        sys.exit(__doc__)
    out, fmt, tokenizer = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    c = CONFIG
    h, ffn, vocab = c["hidden_size"], c["ffn_hidden_size"], c["padded_vocab_size"]
    qkv = h + 2 * c["multi_query_group_num"] * c["kv_channels"]
    rng = np.random.default_rng(0)
    proto = tokenizer.read_bytes()
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"ggml")
        f.write(struct.pack("i", CHATGLM2))
        values = [TYPES[fmt], vocab, h, c["num_attention_heads"], c["multi_query_group_num"], c["num_layers"], ffn,
                  c["layernorm_epsilon"], 0, 10000.0, c["seq_length"], c["eos_token_id"], c["pad_token_id"]]
        f.write(struct.pack("iiiiiiiififiii", 2, *values))
        f.write(struct.pack("i", len(proto)))
        f.write(proto)
        write_tensor(f, "transformer.embedding.word_embeddings.weight", (vocab, h), fmt, rng)
        for i in range(c["num_layers"]):
            p = f"transformer.encoder.layers.{i}."
            write_tensor(f, p + "input_layernorm.weight", (h,), "f32", rng)
            write_tensor(f, p + "self_attention.query_key_value.weight", (qkv, h), fmt, rng)
            write_tensor(f, p + "self_attention.query_key_value.bias", (qkv,), "f32", rng)
            write_tensor(f, p + "self_attention.dense.weight", (h, h), fmt, rng)
            write_tensor(f, p + "post_attention_layernorm.weight", (h,), "f32", rng)
            write_tensor(f, p + "mlp.dense_h_to_4h.weight", (2 * ffn, h), fmt, rng)
            write_tensor(f, p + "mlp.dense_4h_to_h.weight", (h, ffn), fmt, rng)
            print(f"layer {i + 1}/{c['num_layers']}", file=sys.stderr, flush=True)
        write_tensor(f, "transformer.encoder.final_layernorm.weight", (h,), "f32", rng)
        write_tensor(f, "transformer.output_layer.weight", (vocab, h), fmt, rng)
    tmp.rename(out)
    if len(sys.argv) == 5:
        d = Path(sys.argv[4])
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(CONFIG, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
