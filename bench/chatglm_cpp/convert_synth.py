#!/usr/bin/env python3
"""Convert a ChatGLM2-6B safetensors checkpoint to chatglm.cpp's GGML format with chatglm.cpp's own converter.

    convert_synth.py CONVERT_PY CHECKPOINT_DIR OUT.bin {q4_0,q8_0,f16}

CONVERT_PY is `chatglm_cpp/convert.py` of the chatglm.cpp sdist; its `ChatGLM2Converter.convert(f, model, tokenizer,
ggml_type)` does the writing and quantizing. Instead of the official model code (transformers + remote code + the
whole model in memory) it gets stand-ins:
  model.config        the fields of config.json
  model.state_dict()  a lazy mapping: each lookup reads one tensor from the safetensors shards and returns a
                      float32 torch tensor, so memory holds one tensor (and its quantized copy) at a time
  tokenizer.tokenizer.sp_model.serialized_model_proto()   from the `sentencepiece` package
The output is written to OUT.bin.tmp and renamed when complete.
"""
import importlib.util
import json
import os
import struct
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def load_converter(convert_py):
    # convert.py imports transformers at module level but only uses it in its CLI path; stub it out.
    stub = types.ModuleType("transformers")
    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer"):
        setattr(stub, name, None)
    sys.modules.setdefault("transformers", stub)
    spec = importlib.util.spec_from_file_location("chatglm_cpp_convert", convert_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_ST_DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32}


class LazySafetensors(Mapping):
    """name -> float32 torch tensor, read on demand from (sharded) safetensors files."""

    def __init__(self, ckpt: Path):
        import torch

        self.torch = torch
        index = ckpt / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
            "model.safetensors"
        ]
        self.where = {}
        for fname in files:
            path = ckpt / fname
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (path, 8 + n, info)
        self.extra = {}

    def __getitem__(self, name):
        if name in self.extra:
            return self.extra[name]
        path, base, info = self.where[name]
        lo, hi = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(base + lo)
            raw = f.read(hi - lo)
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_ST_DTYPES[info["dtype"]]).astype(np.float32)
        del raw
        return self.torch.from_numpy(arr.reshape(info["shape"]))

    def __setitem__(self, name, value):
        self.extra[name] = value

    def __iter__(self):
        return iter(self.where)

    def __len__(self):
        return len(self.where)


def main():
    convert_py, ckpt, out, fmt = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    cv = load_converter(convert_py)
    import sentencepiece as spm

    config = types.SimpleNamespace(**json.loads((ckpt / "config.json").read_text()))
    state = LazySafetensors(ckpt)
    model = types.SimpleNamespace(config=config, state_dict=lambda: state)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    tokenizer = types.SimpleNamespace(tokenizer=types.SimpleNamespace(sp_model=sp))
    ggml_type = cv.GGMLType[fmt.upper()]

    t0 = time.time()
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        cv.ChatGLM2Converter.convert(f, model, tokenizer, ggml_type)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e9:.3f} GB, {fmt}) in {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
