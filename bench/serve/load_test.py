"""Load test for `chatglm serve`: N concurrent streaming chat clients on loopback.

Standard library only. For each concurrency level, clients send streaming
`/v1/chat/completions` requests (distinct prompts, greedy) until the request
budget or the time budget of that level is spent, then the level reports
requests/s, generated tokens/s (aggregate), p50/p99 latency, p50/p99 time to
first token and p50/p99 inter-token latency (gaps between content chunks).
Bounded in requests and seconds; loopback only.

`--mix` varies prompt lengths (about 10 to 1,000 tokens) and max_tokens
(1/4 to 2x --max-tokens) from a seeded generator, as real chats do; `--rate R`
makes arrivals an open-loop Poisson process of R requests/s (the level's
client count then caps how many run at once) instead of clients that send
their next request as soon as the last one ends.

    python3 load_test.py --url http://127.0.0.1:8000 --concurrency 1,8,32
    python3 load_test.py --concurrency 64 --mix --rate 20 --requests 400
"""

import argparse
import http.client
import ipaddress
import json
import random
import statistics
import threading
import time
import urllib.parse


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def check_loopback(host):
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to load-test {host}: loopback addresses only")


def one_request(host, port, prompt, max_tokens, timeout_s):
    """Returns (latency_s, ttft_s, completion_tokens, inter-chunk gaps) of one streamed chat."""
    body = json.dumps({
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
        ttft = None
        tokens = 0
        gaps, last = [], None
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                # The server reports a request that failed mid-stream in the stream itself.
                raise RuntimeError(f"stream error: {json.dumps(chunk['error'])[:200]}")
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                elif last is not None:
                    gaps.append(now - last)
                last = now
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        latency = time.perf_counter() - t0
        return latency, ttft if ttft is not None else latency, tokens, gaps
    finally:
        conn.close()


def request_shape(i, max_tokens, mix, seed, max_words=800):
    """The prompt and max_tokens of request i."""
    if not mix:
        return f"请回答第{i}个问题：what is {i} times {i + 3}?", max_tokens
    rng = random.Random(seed * 1_000_003 + i)
    words = int(rng.lognormvariate(4.0, 1.0)) + 5  # median ~60 words, long tail
    words = min(words, max_words)
    prompt = f"第{i}个问题：" + " ".join(rng.choice(["alpha", "数据", "model", "推理", "token", "系统"]) for _ in range(words))
    return prompt, max(1, int(max_tokens * rng.uniform(0.25, 2.0)))


def run_level(host, port, concurrency, requests, max_seconds, max_tokens, timeout_s, mix=False, rate=None, seed=0,
              max_words=800):
    lock = threading.Lock()
    issued = [0]
    results, errors = [], []
    deadline = time.perf_counter() + max_seconds
    # Open loop: request i may start at arrivals[i] (Poisson process of `rate` per second).
    arrivals = None
    if rate:
        rng, t, arrivals = random.Random(seed), 0.0, []
        for _ in range(requests):
            t += rng.expovariate(rate)
            arrivals.append(t)
    start = time.perf_counter()

    def worker():
        while True:
            with lock:
                if issued[0] >= requests or time.perf_counter() >= deadline:
                    return
                i = issued[0]
                issued[0] += 1
            if arrivals is not None:
                wait = start + arrivals[i] - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            prompt, n = request_shape(i, max_tokens, mix, seed, max_words)
            try:
                r = one_request(host, port, prompt, n, timeout_s)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - count and report
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    toks = sum(r[2] for r in results)
    gaps = [g for r in results for g in r[3]]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens": toks,
        "tokens_per_s": toks / wall,
        "latency_p50_s": percentile(lat, 50),
        "latency_p99_s": percentile(lat, 99),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "itl_p50_s": percentile(gaps, 50),
        "itl_p99_s": percentile(gaps, 99),
        "mean_tokens": statistics.mean(r[2] for r in results) if results else 0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=64,
                    help="requests per level (default 64; at least one per client)")
    ap.add_argument("--seconds", type=float, default=60, help="stop issuing after this long per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600, help="per-request timeout in seconds")
    ap.add_argument("--mix", action="store_true", help="vary prompt lengths and max_tokens (seeded)")
    ap.add_argument("--rate", type=float, help="open-loop Poisson arrivals, requests per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-prompt-words", type=int, default=800,
                    help="with --mix, the longest prompt in words (about 1.5 tokens each)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    check_loopback(host)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    rows = []
    print(f"{'clients':>7} {'reqs':>5} {'err':>4} {'wall s':>7} {'req/s':>7} {'tok/s':>8} "
          f"{'p50 s':>7} {'p99 s':>7} {'ttft p50':>8} {'ttft p99':>8} {'itl p50':>8} {'itl p99':>8}", flush=True)
    for c in levels:
        n = max(args.requests, c)
        r = run_level(host, port, c, n, args.seconds, args.max_tokens, args.timeout, args.mix, args.rate, args.seed,
                      args.max_prompt_words)
        rows.append(r)
        print(f"{c:>7} {r['requests']:>5} {r['errors']:>4} {r['wall_s']:>7.2f} {r['requests_per_s']:>7.2f} "
              f"{r['tokens_per_s']:>8.1f} {r['latency_p50_s']:>7.3f} {r['latency_p99_s']:>7.3f} "
              f"{r['ttft_p50_s']:>8.3f} {r['ttft_p99_s']:>8.3f} {r['itl_p50_s'] * 1e3:>6.1f}ms "
              f"{r['itl_p99_s'] * 1e3:>6.1f}ms", flush=True)
        if r["first_error"]:
            print(f"        first error: {r['first_error']}")
    if len(rows) > 1 and rows[0]["tokens_per_s"] > 0:
        for r in rows[1:]:
            print(f"aggregate tokens/s at {r['concurrency']} clients = "
                  f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.1f}x the {rows[0]['concurrency']}-client rate")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
