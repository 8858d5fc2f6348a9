#!/usr/bin/env python3
"""Multi-round chat latency against a running `chatglm serve`: each round sends the whole history (as
OpenAI clients do) and streams the reply; prints each round's prompt tokens, time to first token and
total time, and the server's prefix-cache counters. Python standard library only.

    python3 bench/serve/history.py --url http://127.0.0.1:8000 [--rounds 3] [--repeat 6] [--max-tokens 8]

Run it against `chatglm serve --prefix-cache 8` (the default) and `--prefix-cache 0` to see what reusing the
previous round's KV cache saves (bench/serve/history.sh does both).
"""
import argparse
import json
import sys
import time
import urllib.request

QUESTION = ("请详细介绍一下大语言模型推理服务中的分页键值缓存、连续批处理和分块预填充是如何协同工作的，"
            "并比较它们在显存占用、吞吐量和首字延迟方面的取舍。")
FOLLOW_UPS = ["总结一下。", "Now in English, briefly.", "再举一个例子。", "What is the main trade-off?"]


def stream_round(url, messages, max_tokens):
    body = json.dumps({"messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    start = time.time()
    first, text, usage = None, [], None
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta:
                    if first is None:
                        first = time.time() - start
                    text.append(delta)
    return "".join(text), first, time.time() - start, usage


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=60) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=6, help="the first question repeated this many times")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    messages = [{"role": "user", "content": QUESTION * args.repeat}]
    for r in range(args.rounds):
        reply, ttft, total, usage = stream_round(args.url, messages, args.max_tokens)
        prompt = usage["prompt_tokens"] if usage else "?"
        ttft_s = f"{ttft:.2f}" if ttft is not None else "-"
        print(f"{args.label}round {r + 1}: {prompt} prompt tokens, first token {ttft_s} s, total {total:.2f} s")
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": FOLLOW_UPS[r % len(FOLLOW_UPS)]}]
    hits = metric(args.url, "chatglm_prefix_cache_hits_total")
    tokens = metric(args.url, "chatglm_prefix_cache_tokens_total")
    print(f"{args.label}prefix cache: {hits:.0f} hits, {tokens:.0f} prompt tokens reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
