"""Overhead of the Python package: chat() through chatglm_rs against the same
ChatSession::chat call from Rust, on a synthetic ChatGLM2-6B (random weights,
the real tokenizer), back to back in one process tree.

    tests/python/run.sh  # or any venv with chatglm_rs installed
    cargo build --release -p chatglm-engine --example chat_timing
    target/python-venv/bin/python bench/python/chat_overhead.py TOKENIZER [DTYPE] [RUNS] [NEW_TOKENS]
"""

import pathlib
import statistics
import subprocess
import sys
import time

import chatglm_rs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_chat(tokenizer: str, dtype: str, runs: int, new_tokens: int) -> float:
    p = chatglm_rs.Pipeline.synthetic(tokenizer, "chatglm2-6b", "cpu", dtype)
    p.chat("你好", do_sample=False, max_new_tokens=new_tokens)  # warm-up, as the Rust side
    ms, inside = [], []
    for _ in range(runs):
        t = time.perf_counter()
        p.chat("你好", do_sample=False, max_new_tokens=new_tokens)
        ms.append((time.perf_counter() - t) * 1e3)
        inside.append(p.last_call_seconds * 1e3)
    # Same call, same moment: what Python and the binding add around the Rust work
    # (immune to this machine's drift, unlike comparing separate processes).
    extra = [a - b for a, b in zip(ms, inside)]
    print(
        f"python chat(): wall median {statistics.median(ms):.2f} ms, of which in Rust {statistics.median(inside):.2f} ms; "
        f"added by Python: median {statistics.median(extra):.3f} ms = {100 * statistics.median(extra) / statistics.median(ms):.3f}%"
    )
    return statistics.median(ms)


def rust_chat(tokenizer: str, dtype: str, runs: int, new_tokens: int) -> float:
    exe = ROOT / "target" / "release" / "examples" / "chat_timing"
    out = subprocess.run([str(exe), tokenizer, dtype, str(runs), str(new_tokens)], check=True, capture_output=True, text=True)
    print(out.stdout.strip())
    return float(out.stdout.split("median ")[1].split(" ms")[0])


def main() -> None:
    tokenizer = sys.argv[1]
    dtype = sys.argv[2] if len(sys.argv) > 2 else "q4_0"
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    new_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    rust = [rust_chat(tokenizer, dtype, runs, new_tokens)]
    py = python_chat(tokenizer, dtype, runs, new_tokens)
    rust.append(rust_chat(tokenizer, dtype, runs, new_tokens))
    base = statistics.mean(rust)
    print(
        f"separate processes, python / rust = {py / base:.4f} (rust before and after: {rust[0]:.2f}, {rust[1]:.2f} ms; "
        "this VM drifts by up to ±20% between minutes, so the in-call figure above is the measurement)"
    )


if __name__ == "__main__":
    main()
