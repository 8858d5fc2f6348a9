#!/usr/bin/env python3
"""Tiny checkpoints in the exact layout of the official INT4/INT8 releases
(THUDM/chatglm2-6b-int4: `quantization_bit` in config.json, quantized encoder
weights as int8 `weight` + per-row `weight_scale`), built from the dev tiny
model the way the official `quantization.py` builds them, and the
dequantized reference each must match.

    python generate.py --dev ../../testdata/dev/model/safetensors-f32 --out .

For bits in (4, 8), writes
    chatglm2-int{bits}-tiny/    pytorch_model.bin (torch.save of the state dict, f16 floats),
                                config.json (quantization_bit, torch_dtype float16), tokenizer files
    chatglm2-int{bits}-tiny-dequantized/
                                model.safetensors in f16: each quantized weight as the official
                                CUDA extraction computes it (f16 q · f16 scale, rounded to f16),
                                every other tensor the f16 value; config.json without quantization_bit

What the official code does (quantization.py, QuantizedLinear.__init__), in f16:
    scale = weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)
    q = torch.round(weight / scale[:, None]).to(torch.int8)
    bits == 4: two values a byte, the first in the high nibble (the extraction kernel reads
               high = byte >> 4, low = (byte << 4) >> 4, both signed)
Only the encoder's query_key_value, dense, dense_h_to_4h and dense_4h_to_h are quantized.
Deterministic (no randomness); CPU only.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

QUANTIZED = ("self_attention.query_key_value.weight", "self_attention.dense.weight",
             "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")


def quantize(weight_f16, bits):
    scale = weight_f16.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)
    q = torch.round(weight_f16 / scale[:, None]).to(torch.int8)
    return q, scale


def pack_int4(q):
    hi = q[:, 0::2].to(torch.int16)
    lo = q[:, 1::2].to(torch.int16)
    packed = ((hi << 4) | (lo & 0x0F)) & 0xFF
    return packed.to(torch.uint8).view(torch.int8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", required=True, help="the dev tiny model folder (safetensors-f32)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    state = load_file(os.path.join(args.dev, "model.safetensors"))
    config = json.load(open(os.path.join(args.dev, "config.json")))
    for bits in (4, 8):
        folder = os.path.join(args.out, f"chatglm2-int{bits}-tiny")
        reference = folder + "-dequantized"
        for d in (folder, reference):
            os.makedirs(d, exist_ok=True)
            for f in ("tokenizer.model", "tokenizer_config.json"):
                shutil.copy(os.path.join(args.dev, f), d)
        packed_state, deq_state = {}, {}
        for name, t in state.items():
            h = t.to(torch.float16)
            if name.endswith(QUANTIZED) and ".encoder.layers." in name:
                q, scale = quantize(h, bits)
                packed_state[name] = pack_int4(q) if bits == 4 else q
                packed_state[name + "_scale"] = scale
                deq_state[name] = q.to(torch.float16) * scale[:, None]
            else:
                packed_state[name] = h
                deq_state[name] = h
        torch.save({k: v.contiguous() for k, v in packed_state.items()}, os.path.join(folder, "pytorch_model.bin"))
        save_file({k: v.contiguous() for k, v in deq_state.items()}, os.path.join(reference, "model.safetensors"))
        quant_config = dict(config, quantization_bit=bits, torch_dtype="float16")
        json.dump(quant_config, open(os.path.join(folder, "config.json"), "w"), indent=2)
        ref_config = dict(config, quantization_bit=0, torch_dtype="float16")
        json.dump(ref_config, open(os.path.join(reference, "config.json"), "w"), indent=2)
        print(f"wrote {folder} and {reference}")


if __name__ == "__main__":
    main()
