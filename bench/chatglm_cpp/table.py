#!/usr/bin/env python3
"""Markdown table from a bench/vs_chatglm_cpp.sh results file (JSON lines).

    table.py RESULTS.jsonl [MORE.jsonl ...] [CHECKPOINT_DIR]

With several results files, each cell keeps the best run of that engine/format/threads/phase (best-of across runs
on a shared machine); the memory bandwidth is the best probe of all files.

Decode GB/s = weight bytes streamed per decoded token (the figure ChatGLM.rs reports for that format, used for both
engines) / time per token, and its % of this machine's memory read bandwidth at the same thread count; where our
run had `--read-probe`, also its share of a read of the same weights in the same seconds. Prefill rows
give GFLOP/s instead (2 x matrix parameters per token, from config.json). Ratio = ours / theirs in speed (>1: we
are faster)."""
import json
import sys
from pathlib import Path


def matrix_params(ckpt):
    try:
        c = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, TypeError):
        return None
    h, f, L = c["hidden_size"], c["ffn_hidden_size"], c["num_layers"]
    qkv = h + 2 * c["multi_query_group_num"] * c["kv_channels"]
    per_layer = h * qkv + h * h + h * 2 * f + f * h
    return L * per_layer + h * c["padded_vocab_size"]


def main():
    files = [a for a in sys.argv[1:] if a.endswith(".jsonl")]
    dirs = [a for a in sys.argv[1:] if not a.endswith(".jsonl")]
    rows = [json.loads(line) for fn in files for line in open(fn) if line.strip()]
    metas = [r for r in rows if r["phase"] == "meta"]
    meta = metas[0] if metas else {}
    ckpt = dirs[0] if dirs else None
    bw = {}
    for r in rows:
        if r["phase"] == "membw":
            bw[r["threads"]] = max(bw.get(r["threads"], 0), r["gb_s"])
    # Probes taken just before and after our decode run of a format (ADJACENT_PROBES): the better of the two.
    adj = {}
    for r in rows:
        if r["phase"] == "membw_adjacent":
            k = (r["format"], r["threads"])
            adj[k] = max(adj.get(k, 0), r["gb_s"])
    res = {}
    wbytes = {}
    for r in rows:
        if r["phase"] in ("decode", "prefill"):
            k = (r["phase"], r["format"], r["threads"], r["engine"])
            new, old = r["result"], res.get(k)
            score = (lambda x: -x["decode_ms_per_token_best"]) if r["phase"] == "decode" else (
                lambda x: x["prefill_tokens_per_s_best"])
            if old is None or (new is not None and score(new) > score(old)):
                res[k] = new
            if r["engine"] == "ChatGLM.rs" and r["result"]:
                wbytes[r["format"]] = r["result"]["weight_bytes_per_token"]
                ckpt = ckpt or r["result"].get("source")
    mp = matrix_params(ckpt)

    def fmt(x, p=1):
        return "—" if x is None else f"{x:,.{p}f}"

    out = []
    out.append(
        "| format | threads | phase | ChatGLM.rs ms/token | chatglm.cpp ms/token | ChatGLM.rs tokens/s "
        "| chatglm.cpp tokens/s | ChatGLM.rs GB/s (% of BW) | chatglm.cpp GB/s (% of BW) | ours ÷ theirs (speed) |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({k[:3] for k in res}, key=lambda k: (k[0] != "decode", -k[2], ["q4_0", "q8_0", "f16"].index(k[1])
                                                        if k[1] in ("q4_0", "q8_0", "f16") else 9))
    for phase, f, t in keys:
        ours, theirs = res.get((phase, f, t, "ChatGLM.rs")), res.get((phase, f, t, "chatglm.cpp"))
        cells = {}
        for name, r in (("ours", ours), ("theirs", theirs)):
            if not r:
                cells[name] = (None, None, "failed")
                continue
            if phase == "decode":
                ms = r["decode_ms_per_token_best"]
                gbs = wbytes.get(f, 0) / (ms / 1e3) / 1e9 if f in wbytes else None
                ach = "—" if gbs is None else f"{gbs:.1f} GB/s" + (f" ({100 * gbs / bw[t]:.0f}%)" if t in bw else "")
                if gbs is not None and name == "ours" and (f, t) in adj:
                    ach += f", {100 * gbs / adj[(f, t)]:.0f}% of the adjacent probe"
                probe = r.get("read_probe") if name == "ours" else None
                if probe:
                    ach += (f"; paired read probe: {100 * probe['decode_share_of_read_median']:.0f}% of a read of the "
                            f"same weights ({probe['decode_gb_per_s_median']:.1f} of {probe['read_gb_per_s_median']:.1f} GB/s)")
            else:
                tps = r["prefill_tokens_per_s_best"]
                ms = 1e3 / tps
                ach = "—" if mp is None else f"{2 * mp * tps / 1e9:.0f} GFLOP/s"
            cells[name] = (ms, 1e3 / ms, ach)
        ratio = (cells["theirs"][0] / cells["ours"][0]) if cells["ours"][0] and cells["theirs"][0] else None
        label = "decode" if phase == "decode" else f"prefill-{(ours or theirs or {}).get('prompt_len', '?')}"
        out.append(
            f"| {f} | {t} | {label} | {fmt(cells['ours'][0])} | {fmt(cells['theirs'][0])} | {fmt(cells['ours'][1], 2)} "
            f"| {fmt(cells['theirs'][1], 2)} | {cells['ours'][2]} | {cells['theirs'][2]} | "
            f"{'—' if ratio is None else f'{ratio:.2f}×'} |"
        )
    notes = []
    bad = [k for k, r in res.items() if r and r.get("threads") != k[2]]
    if bad:
        notes.append("WARNING: thread count not applied for " + ", ".join(f"{k[3]} {k[1]} {k[0]} t={k[2]}" for k in bad))
    if bw:
        notes.append("Memory read bandwidth (1 GiB sum on huge pages, plain and prefetching passes, best of 10, best of the probes at the start and end): "
                     + ", ".join(f"{v:.1f} GB/s with {k} thread{'s' if k > 1 else ''}" for k, v in sorted(bw.items())))
    if adj:
        notes.append("Adjacent probes (the better of those just before and after our decode run): "
                     + ", ".join(f"{f} {v:.1f} GB/s ({t} thread{'s' if t > 1 else ''})" for (f, t), v in sorted(adj.items())))
    if any(r and r.get("read_probe") for r in res.values()):
        notes.append("Paired read probe (`chatglm bench --read-probe`): rounds of 4 decode steps, each followed by "
                     "read-only passes over the same weights on the same threads (with and without software prefetch, "
                     "the faster counted); medians over the rounds, the share being the median of the rounds' ratios")
    if wbytes:
        files = meta.get("files", {})
        notes.append("Weight bytes per decoded token (ChatGLM.rs figure, used for both): "
                     + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in wbytes.items())
                     + "; chatglm.cpp file sizes: " + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in files.items()))
    rss = []
    for (phase, f, t, eng), r in sorted(res.items()):
        if r and phase == "decode" and t == max(x[2] for x in res):
            rss.append(f"{eng} {f} {r['peak_rss_bytes'] / 2**30:.1f} GiB")
    if rss:
        notes.append("Peak RSS (decode runs at the highest thread count; ChatGLM.rs reads the f16 safetensors and "
                     "quantizes at load, chatglm.cpp maps its converted file): " + ", ".join(rss))
    if meta:
        notes.append(f"Decode: {meta.get('gen_len')} greedy tokens after a {meta.get('decode_prompt_len')}-token prompt, "
                     f"EOS ignored; best of {meta.get('repeat')} run(s) per process"
                     + (f", best of {len(metas)} invocations" if len(metas) > 1 else "")
                     + ". Load average at start: " + "; ".join(m.get("loadavg", "?") for m in metas)
                     + f"; ChatGLM.rs at {', '.join(sorted({m.get('ours_git', '?') for m in metas}))}; "
                     f"{meta.get('cpu')}, {meta.get('nproc')} CPUs; " + ", ".join(m.get("date", "?") for m in metas) + ".")
    print("\n".join(out))
    print()
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
