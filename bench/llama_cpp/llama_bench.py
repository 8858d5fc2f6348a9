#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on one GGUF file: prefill of PROMPT_LEN tokens in one
batch, then GEN_LEN single-token decode steps, N threads; prints one JSON line.

    python llama_bench.py MODEL.gguf --threads 2 --prompt-len 512 --gen-len 32 --repeat 2
"""
import argparse
import json
import resource
import time

from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=a.prompt_len + a.gen_len + 8, n_batch=a.prompt_len, n_threads=a.threads,
                n_threads_batch=a.threads, logits_all=False, verbose=False, use_mmap=True)
    # Ids of ordinary tokens (the synthetic model's values are random: any ids do).
    prompt = [64790, 64792] + [30910 + (i * 7919) % 30000 for i in range(a.prompt_len - 2)]
    prefill, decode = [], []
    for _ in range(a.repeat):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill.append(a.prompt_len / (time.perf_counter() - t))
        tok = 30910
        t = time.perf_counter()
        for _ in range(a.gen_len):
            llm.eval([tok])
        decode.append((time.perf_counter() - t) / a.gen_len * 1e3)
    print(json.dumps({
        "engine": "llama.cpp", "model": a.model, "threads": a.threads,
        "prefill_tok_s": max(prefill), "decode_ms": min(decode),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


if __name__ == "__main__":
    main()
