#!/usr/bin/env python3
"""Golden data for the ChatGLM family (ChatGLM3-6B, ChatGLM2-6B-32K, ChatGLM3-6B-32K) from the OFFICIAL
Hugging Face remote code.  See README.md next to this file.

    python generate.py --official /tmp/official --out /work/main/golden/family \
        --dev-tokenizer /work/main/testdata/dev/model/safetensors-f32/tokenizer.model \
        --real-tokenizer /work/main/testdata/chatglm2-tokenizer/tokenizer.model

--official must contain (official files are NOT shipped with this data):
    chatglm3-6b/                 configuration_chatglm.py modeling_chatglm.py tokenization_chatglm.py config.json
    chatglm3-6b-thudm-github/    the same three .py files, later copy (THUDM/ChatGLM3 repo, model/), cross-check only
    chatglm2-6b-32k/             configuration_chatglm.py modeling_chatglm.py tokenization_chatglm.py config.json
    chatglm3-openai-demo/        utils.py of THUDM/ChatGLM3 openai_api_demo (process_response of the demo)

Everything runs on CPU in float32 and is deterministic (fixed seeds).
"""
import argparse
import copy
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import traceback

import numpy as np
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------------------------- helpers


def f32(x):
    """float32 value -> python float printed with the shortest float32 round-trip decimal."""
    return float(str(np.float32(x)))


def f32list(t):
    a = t.detach().to(torch.float32).cpu().numpy().reshape(-1)
    return [float(s) for s in (str(v) for v in a)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def dump(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


WORK = tempfile.mkdtemp(prefix="glm_family_pkgs_")
sys.path.insert(0, WORK)


def load_official(src_dir, pkg, patch_modeling=None):
    """Import the official files of src_dir as package `pkg` (relative imports work).
    patch_modeling: optional function(text)->text (only used for the clearly-labelled reconstruction)."""
    dst = os.path.join(WORK, pkg)
    os.makedirs(dst, exist_ok=True)
    for f in ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py"):
        with open(os.path.join(src_dir, f), encoding="utf-8") as fi:
            text = fi.read()
        if f == "modeling_chatglm.py" and patch_modeling is not None:
            text = patch_modeling(text)
        with open(os.path.join(dst, f), "w", encoding="utf-8") as fo:
            fo.write(text)
    open(os.path.join(dst, "__init__.py"), "w").close()
    cfg = importlib.import_module(pkg + ".configuration_chatglm")
    mdl = importlib.import_module(pkg + ".modeling_chatglm")
    tok = importlib.import_module(pkg + ".tokenization_chatglm")
    return cfg, mdl, tok


# --------------------------------------------------------------------------------------------- tiny models

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
            ffn_hidden_size=160)


def tiny_config_dict(official_config_path, padded_vocab, seq_length, extra=None):
    with open(official_config_path) as f:
        d = json.load(f)
    d.update(TINY)
    d["padded_vocab_size"] = padded_vocab
    d["seq_length"] = seq_length
    d["torch_dtype"] = "float32"
    # The official repo's name with "-tiny": config.json is where a checkpoint
    # without its modeling code says which release (and so which rope) it is.
    d["_name_or_path"] = d.get("_name_or_path", "chatglm") + "-tiny"
    if extra:
        d.update(extra)
    return d


def init_weights(model, seed, n_real_vocab):
    """Same scheme as testdata/README.md (dev model)."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(model.named_parameters())
    hidden = model.config.hidden_size
    for name in sorted(sd):
        p = sd[name]
        shape = tuple(p.shape)
        n = lambda: torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith("layernorm.weight"):
            v = 1 + 0.1 * n()
        elif "word_embeddings" in name:
            v = n()
        elif name.endswith("query_key_value.weight"):
            v = n() / math.sqrt(shape[1])
        elif name.endswith("query_key_value.bias"):
            v = 0.1 * n()
        elif name.endswith("self_attention.dense.weight"):
            v = 0.5 * n() / math.sqrt(shape[1])
        elif name.endswith("dense_h_to_4h.weight"):
            v = n() / math.sqrt(shape[1])
        elif name.endswith("dense_4h_to_h.weight"):
            v = 0.5 * n() / math.sqrt(shape[1])
        elif name.endswith("output_layer.weight"):
            v = 2 * n() / math.sqrt(hidden)
            v[n_real_vocab:] = 0
        elif "prefix_encoder" in name:
            # P-Tuning v2: embedding N(0,1)*0.5 (no projection: these ARE the past keys/values);
            # projection MLP weights N(0,1)/sqrt(in), biases 0.1 N(0,1)
            if name.endswith("embedding.weight"):
                v = 0.5 * n()
            elif name.endswith("weight"):
                v = n() / math.sqrt(shape[1])
            else:
                v = 0.1 * n()
        else:
            raise RuntimeError("unexpected parameter " + name)
        with torch.no_grad():
            p.copy_(v)


def build_model(mdl, cfgmod, cfg_dict, seed, n_real_vocab):
    config = cfgmod.ChatGLMConfig(**{k: v for k, v in cfg_dict.items() if k not in ("architectures",)})
    config.architectures = cfg_dict.get("architectures")
    torch.manual_seed(0)
    model = mdl.ChatGLMForConditionalGeneration(config, empty_init=False)
    model = model.float().eval()
    init_weights(model, seed, n_real_vocab)
    return model


def save_model(model, cfg_dict, outdir, tokenizer_src, state_filter=None):
    from safetensors.torch import save_file
    os.makedirs(outdir, exist_ok=True)
    sd = model.state_dict()
    if state_filter:
        sd = {k: v for k, v in sd.items() if state_filter(k)}
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    save_file(sd, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
    dump(cfg_dict, os.path.join(outdir, "config.json"))
    if tokenizer_src:
        shutil.copyfile(tokenizer_src, os.path.join(outdir, "tokenizer.model"))
        dump({"name_or_path": "chatglm-family-tiny", "remove_space": False, "do_lower_case": False,
              "tokenizer_class": "ChatGLMTokenizer",
              "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}},
             os.path.join(outdir, "tokenizer_config.json"))
    return list(sd.keys())


def weights_summary(model):
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().float()
        out[k] = {"shape": list(v.shape), "dtype": "float32", "sum": float(v.double().sum()),
                  "abs_sum": float(v.double().abs().sum()), "first8": f32list(v.reshape(-1)[:8])}
    return out


@torch.no_grad()
def logits_of(model, ids, **kw):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, return_dict=True, **kw)
    return out.logits[0].float()


def per_position(lg):
    return {"argmax_per_position": lg.argmax(-1).tolist(),
            "max_per_position": f32list(lg.max(-1).values),
            "logsumexp_per_position": f32list(torch.logsumexp(lg, -1))}


@torch.no_grad()
def incremental(model, ids, prefill, extra_kw=None):
    """Prefill `prefill` tokens, then feed one token at a time with past_key_values and explicit position ids."""
    extra_kw = extra_kw or {}
    full = logits_of(model, ids, **extra_kw)
    out = model(input_ids=torch.tensor([ids[:prefill]]), position_ids=torch.arange(prefill)[None], use_cache=True,
                return_dict=True)
    past = out.past_key_values
    steps = [out.logits[0, -1].float()]
    for pos in range(prefill, len(ids)):
        out = model(input_ids=torch.tensor([[ids[pos]]]), position_ids=torch.tensor([[pos]]), past_key_values=past,
                    use_cache=True, return_dict=True)
        past = out.past_key_values
        steps.append(out.logits[0, -1].float())
    diffs = [float((s - full[prefill - 1 + i]).abs().max()) for i, s in enumerate(steps)]
    return full, steps, diffs, past


# --------------------------------------------------------------------------------------------- ChatGLM3 prompts

TOOLS = [
    {"name": "track", "description": "追踪指定股票的实时价格",
     "parameters": {"type": "object", "properties": {"symbol": {"description": "需要追踪的股票代码"}},
                    "required": ["symbol"]}},
    {"name": "text-to-speech", "description": "将文本转换为语音",
     "parameters": {"type": "object",
                    "properties": {"text": {"description": "需要转换成语音的文本"},
                                   "voice": {"description": "要使用的语音类型（男声、女声等）"},
                                   "speed": {"description": "语音的速度（快、中等、慢等）"}},
                    "required": ["text"]}},
]
TOOLS_EN = [
    {"name": "get_current_weather", "description": "Get the current weather in a given location",
     "parameters": {"type": "object",
                    "properties": {"location": {"type": "string",
                                                "description": "The city and state, e.g. San Francisco, CA"},
                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["location"]}},
]
SYS_DEFAULT = ("You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's instructions "
               "carefully. Respond using markdown.")
SYS_TOOLS = "Answer the following questions as best as you can. You have access to the following tools:"


def conversations():
    C = []
    C.append(dict(name="zh_single", query="你好", history=[]))
    C.append(dict(name="en_single", query="Hello, who are you?", history=[]))
    C.append(dict(name="empty_query", query="", history=[]))
    C.append(dict(name="zh_system", query="晚上睡不着应该怎么办",
                  history=[{"role": "system", "content": SYS_DEFAULT}]))
    C.append(dict(name="en_system", query="Write a haiku about rust.",
                  history=[{"role": "system", "content": "You are a terse poet."}]))
    C.append(dict(name="zh_multiturn", query="那明天呢？",
                  history=[{"role": "user", "content": "今天北京天气怎么样？"},
                           {"role": "assistant", "content": "今天北京晴，气温 20 度左右。"}]))
    C.append(dict(name="en_multiturn_system", query="And in Python?",
                  history=[{"role": "system", "content": SYS_DEFAULT},
                           {"role": "user", "content": "How do I reverse a list in Rust?"},
                           {"role": "assistant", "content": "Use `v.reverse()` or `v.iter().rev()`."}]))
    C.append(dict(name="three_rounds", query="第三个问题",
                  history=[{"role": "user", "content": "问题一"}, {"role": "assistant", "content": "回答一"},
                           {"role": "user", "content": "问题二"}, {"role": "assistant", "content": "回答二"}]))
    C.append(dict(name="tools_zh_first_turn", query="帮我查询股票10111的价格",
                  history=[{"role": "system", "content": SYS_TOOLS, "tools": TOOLS}]))
    C.append(dict(name="tools_en_first_turn", query="What's the weather like in Boston?",
                  history=[{"role": "system", "content": SYS_TOOLS, "tools": TOOLS_EN}]))
    obs_hist = [{"role": "system", "content": SYS_TOOLS, "tools": TOOLS},
                {"role": "user", "content": "帮我查询股票10111的价格"},
                {"role": "assistant", "metadata": "track", "content": 'tool_call(symbol="10111")'}]
    C.append(dict(name="observation_turn", query=json.dumps({"price": 12412}, ensure_ascii=False),
                  history=obs_hist, role="observation"))
    C.append(dict(name="observation_turn_code_block", query='{"price": 12412}',
                  history=[obs_hist[0], obs_hist[1],
                           {"role": "assistant", "metadata": "track",
                            "content": ' ```python\ntool_call(symbol="10111")\n```'}], role="observation"))
    C.append(dict(name="after_observation_answer", query="谢谢，再查一下10112",
                  history=obs_hist + [{"role": "observation", "content": '{"price": 12412}'},
                                      {"role": "assistant", "content": "根据您的查询，股票代码为10111的价格为12412。"}]))
    C.append(dict(name="assistant_metadata_interpreter", query="画一个爱心",
                  history=[{"role": "system", "content": "你是一位智能AI助手，你叫ChatGLM，你连接着一台电脑。"},
                           {"role": "user", "content": "计算 1+1"},
                           {"role": "assistant", "metadata": "interpreter",
                            "content": "```python\nprint(1+1)\n```"},
                           {"role": "observation", "content": "2"},
                           {"role": "assistant", "content": "结果是 2。"}]))
    C.append(dict(name="user_metadata", query="next",
                  history=[{"role": "user", "metadata": "some meta", "content": "first"},
                           {"role": "assistant", "content": "ok"}]))
    C.append(dict(name="role_system_as_query", query="You are a helpful assistant.", history=[], role="system"))
    C.append(dict(name="role_assistant_as_query", query="partial answer", history=[], role="assistant"))
    C.append(dict(name="special_text_not_special", query="<|user|>[gMASK]sop</s><s>", history=[]))
    C.append(dict(name="whitespace_newlines", query="  line1\n\nline2\t tab \r\n end  ", history=[]))
    C.append(dict(name="mixed_emoji_code", query="解释这段代码 😀:\n```rust\nfn main() { println!(\"hi\"); }\n```",
                  history=[{"role": "system", "content": ""}]))
    C.append(dict(name="tools_empty_list_not_rendered", query="hi",
                  history=[{"role": "system", "content": SYS_TOOLS, "tools": []}]))
    return C


def chatglm3_tokenizer_cases(tokmods, real_tok_path):
    toks = {name: m.ChatGLMTokenizer(vocab_file=real_tok_path) for name, m in tokmods.items()}
    primary = toks["chatglm3-6b"]
    t = primary
    special = {
        "sp_vocab_size": t.tokenizer.sp_model.vocab_size(),
        "tokenizer_vocab_size": t.vocab_size,
        "special_tokens": dict(t.tokenizer.special_tokens),
        "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id,
        "bos_id_sp": t.tokenizer.bos_id, "unk_id_sp": t.tokenizer.sp_model.unk_id(),
        "get_command": {k: t.get_command(k) for k in ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>",
                                                       "<|observation|>", "<eos>", "<bos>", "<pad>"]},
        "prefix_tokens": t.get_prefix_tokens(),
        "chat_stop_token_ids": [t.eos_token_id, t.get_command("<|user|>"), t.get_command("<|observation|>")],
        "encode_newline_metadata": t.tokenizer.encode("\n"),
        "convert_ids_to_tokens_64787_64798": [t.convert_ids_to_tokens(i) for i in range(64787, 64798)],
    }
    cases = []
    agree = True
    for c in conversations():
        role = c.get("role", "user")
        res = {}
        for name, tk in toks.items():
            r = tk.build_chat_input(c["query"], history=copy.deepcopy(c["history"]), role=role)
            res[name] = {k: r[k][0].tolist() for k in ("input_ids", "attention_mask", "position_ids")}
        ids = res["chatglm3-6b"]["input_ids"]
        same = all(v == res["chatglm3-6b"] for v in res.values())
        agree &= same
        # message-level breakdown (what build_single_message produced)
        parts = []
        for item in c["history"]:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            parts.append({"role": item["role"], "metadata": item.get("metadata", ""), "content_rendered": content,
                          "ids": t.build_single_message(item["role"], item.get("metadata", ""), content)})
        parts.append({"role": role, "metadata": "", "content_rendered": c["query"],
                      "ids": t.build_single_message(role, "", c["query"])})
        cases.append({
            "name": c["name"], "query": c["query"], "history": c["history"], "role": role,
            "input_ids": ids, "attention_mask": res["chatglm3-6b"]["attention_mask"],
            "position_ids": res["chatglm3-6b"]["position_ids"],
            "decode": t.decode(ids), "decode_skip_special_tokens": t.decode(ids, skip_special_tokens=True),
            "messages": parts, "all_official_copies_agree": same,
        })
    decodes = []
    for ids in ([64790, 64792, 64795, 30910, 13, 36474, 54591, 64796],
                [64796, 30910, 13, 36474, 54591, 2],
                [64796, 3060, 13, 13, 64797],
                [0, 1, 2, 64789, 64790, 64791, 64792, 64793],
                [36474, 54591, 64795, 36474, 54591],
                [30910, 13],
                [13, 30910]):
        decodes.append({"ids": ids, "decode": t.decode(ids), "decode_skip_special_tokens": t.decode(ids, skip_special_tokens=True),
                        "tokens": t.convert_ids_to_tokens(ids)})
    # encode_special_tokens option (tokenizer(...) path with role tokens inside text)
    enc = []
    for text in ["<|user|>\n你好<|assistant|>", "a<|observation|>b", "[gMASK]sop<|system|>"]:
        t_plain = tokmods["chatglm3-6b"].ChatGLMTokenizer(vocab_file=real_tok_path)
        t_spec = tokmods["chatglm3-6b"].ChatGLMTokenizer(vocab_file=real_tok_path, encode_special_tokens=True)
        enc.append({"text": text, "encode": t_plain.encode(text),
                    "encode_with_encode_special_tokens_true": t_spec.encode(text)})
    return {"tokenizer_source": "chatglm3-6b (HF mirror); cross-checked with chatglm3-6b-thudm-github",
            "special": special, "cases": cases, "decode": decodes, "encode_special_tokens": enc,
            "all_cases_agree_between_official_copies": agree}


# --------------------------------------------------------------------------------------------- process_response

PR_INPUTS = [
    # (name, output, history_kind)   history_kind: "tools" -> history[0] is a system message with tools
    ("plain_text", "你好👋！我是人工智能助手 ChatGLM3-6B，很高兴见到你，欢迎问我任何问题。", "plain"),
    ("plain_text_leading_newline_and_spaces", "\n  Hello there.  \n", "plain"),
    ("plain_training_time", "我的训练数据截止到[[训练时间]]。", "plain"),
    ("plain_multi_line", "第一行\n第二行\n第三行", "plain"),
    ("tool_call_official", 'track\n ```python\ntool_call(symbol="10111")\n```', "tools"),
    ("tool_call_no_space_before_fence", 'track\n```python\ntool_call(symbol="10111")\n```', "tools"),
    ("tool_call_multi_args", 'text-to-speech\n ```python\ntool_call(text="你好", voice="女声", speed=1.5)\n```', "tools"),
    ("tool_call_nested_values", 'get_current_weather\n ```python\ntool_call(location="Boston, MA", unit="celsius", '
                                'days=[1, 2], opts={"a": None, "b": True})\n```', "tools"),
    ("tool_call_no_args", "track\n ```python\ntool_call()\n```", "tools"),
    ("tool_call_int_and_str", 'calc\n ```python\ntool_call(a=1, b="x")\n```', "tools"),
    ("tool_call_metadata_with_spaces", '  track  \n ```python\ntool_call(symbol="1")\n```', "tools"),
    ("tool_call_multiline_args", 'track\n ```python\ntool_call(\n    symbol="10111",\n    n=2,\n)\n```', "tools"),
    ("tool_call_but_no_tools_in_history", 'track\n ```python\ntool_call(symbol="10111")\n```', "plain"),
    ("metadata_interpreter_no_tools", "interpreter\n ```python\nprint(1+1)\n```", "plain"),
    ("two_segments_text_then_tool", '好的，我来查询。<|assistant|>track\n ```python\ntool_call(symbol="10111")\n```', "tools"),
    ("two_segments_tool_then_text", 'track\n ```python\ntool_call(symbol="1")\n```<|assistant|>\n完成', "tools"),
    ("empty_output", "", "plain"),
    ("only_newline", "\n", "plain"),
    ("no_newline_with_metadata_like_text", "track", "tools"),
    # malformed
    ("malformed_unclosed_paren", 'track\n ```python\ntool_call(symbol="10111"\n```', "tools"),
    ("malformed_positional_args", "track\n ```python\ntool_call(1, 2)\n```", "tools"),
    ("malformed_trailing_newline_after_fence", 'track\n ```python\ntool_call(symbol="1")\n```\n', "tools"),
    ("malformed_no_code_fence", 'track\ntool_call(symbol="1")', "tools"),
    ("malformed_unknown_name", "track\n ```python\nfoo(symbol=1)\n```", "tools"),
    ("malformed_only_metadata_line", "track\n", "tools"),
    ("malformed_plain_json_args", 'track\n ```python\n{"symbol": "1"}\n```', "tools"),
]


def run_process_response(mdl, demo_utils):
    hist_tools = [{"role": "system", "content": SYS_TOOLS, "tools": TOOLS}, {"role": "user", "content": "q"}]
    hist_plain = [{"role": "user", "content": "q"}]
    out = []
    for name, output, kind in PR_INPUTS:
        history = hist_tools if kind == "tools" else hist_plain
        rec = {"name": name, "output": output, "history_kind": kind, "history": history}
        try:
            # process_response does not use `self`
            resp, new_hist = mdl.ChatGLMForConditionalGeneration.process_response(None, output, history)
            rec["model_process_response"] = {"ok": True, "response": resp, "new_history": new_hist}
        except Exception as e:  # record the official behaviour
            rec["model_process_response"] = {"ok": False, "exception": type(e).__name__, "message": str(e)}
        try:
            resp = demo_utils.process_response(output, use_tool=(kind == "tools"))
            rec["openai_demo_process_response"] = {"ok": True, "response": resp}
        except Exception as e:
            rec["openai_demo_process_response"] = {"ok": False, "exception": type(e).__name__, "message": str(e)}
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------- main model goldens

def chat_inputs(tok):
    base = tok.build_chat_input("请用一句话介绍你自己，并解释什么是注意力机制。",
                                history=[{"role": "system", "content": SYS_DEFAULT}])["input_ids"][0].tolist()
    return base


def make_inputs(tok, vocab, n_long):
    base = chat_inputs(tok)
    rs = np.random.RandomState(1)
    long = base + rs.randint(3, vocab, size=max(0, n_long - len(base))).tolist()
    return base, long[:n_long]


def forward_cases(model, tok, lengths, row_positions=None, vocab=4005):
    base, long = make_inputs(tok, vocab, max(lengths))
    cases, full = [], {}
    for L in lengths:
        ids = (base if L <= len(base) else long)[:L]
        lg = logits_of(model, ids)
        lg2 = logits_of(model, ids, position_ids=torch.arange(L)[None], attention_mask=torch.ones(1, L, dtype=torch.long))
        c = {"length": L, "input_ids": ids, "position_ids": list(range(L))}
        c.update(per_position(lg))
        c["logits_first"] = f32list(lg[0])
        c["logits_last"] = f32list(lg[-1])
        if row_positions:
            c["logits_rows"] = {str(p): f32list(lg[p]) for p in row_positions if p < L}
        c["max_abs_diff_explicit_position_ids_and_mask"] = float((lg - lg2).abs().max())
        cases.append(c)
        full[L] = lg
    return cases, full


@torch.no_grad()
def chat_cases(model, tok, mdl, queries, max_new=24):
    out = []
    for q in queries:
        query, history, role = q["query"], q["history"], q.get("role", "user")
        inputs = tok.build_chat_input(query, history=copy.deepcopy(history), role=role)
        prompt_ids = inputs["input_ids"][0].tolist()
        max_length = len(prompt_ids) + max_new
        extra = [q["forced"]] if q.get("forced") else []
        resp, new_hist = model.chat(tok, query, history=copy.deepcopy(history), role=role, do_sample=False,
                                    max_length=max_length, logits_processor=mdl.LogitsProcessorList(list(extra)))
        eos = [tok.eos_token_id, tok.get_command("<|user|>"), tok.get_command("<|observation|>")]
        lp = mdl.LogitsProcessorList(list(extra))
        lp.append(mdl.InvalidScoreLogitsProcessor())
        g = model.generate(**inputs, max_length=max_length, num_beams=1, do_sample=False, top_p=0.8, temperature=0.8,
                           logits_processor=lp, eos_token_id=eos, output_scores=True, return_dict_in_generate=True)
        gen = g.sequences[0].tolist()[len(prompt_ids):]
        margins = []
        for s in g.scores:
            top = torch.topk(s[0].float(), 2).values
            margins.append(f32(top[0] - top[1]))
        out.append({"query": query, "history": history, "role": role, "max_length": max_length,
                    "forced": q.get("forced_desc"),
                    "prompt_ids": prompt_ids, "generated_ids": gen,
                    "stopped_on_stop_token": bool(gen and gen[-1] in eos),
                    "chat_decoded_ids": gen[:-1],
                    "raw_decode": tok.decode(gen[:-1]),
                    "response": resp, "new_history": new_hist,
                    "top1_minus_top2_logit_per_step": margins})
    return out


class ForceTokenAt:
    """Test-only logits processor passed through chat(logits_processor=...): adds +100 to `token` when the
    number of generated tokens equals `step` (used to exercise the official stop handling)."""

    def __init__(self, prompt_len, step, token):
        self.prompt_len, self.step, self.token = prompt_len, step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.step:
            scores = scores.clone()
            scores[:, self.token] += 100.0
        return scores


def rope_table_rows(model, positions):
    rpe = model.transformer.rotary_pos_emb
    cache = rpe(model.transformer.seq_length)  # [seq, n_elem/2... , 2]
    return {"shape": list(cache.shape),
            "rows": {str(p): f32list(cache[p]) for p in positions}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dev-tokenizer", default="/work/main/testdata/dev/model/safetensors-f32/tokenizer.model")
    ap.add_argument("--real-tokenizer", default="/work/main/testdata/chatglm2-tokenizer/tokenizer.model")
    ap.add_argument("--skip-lora", action="store_true")
    args = ap.parse_args()
    O = args.official
    OUT = args.out
    os.makedirs(OUT, exist_ok=True)

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    import transformers, sentencepiece, safetensors
    versions.update(transformers=transformers.__version__, sentencepiece=sentencepiece.__version__,
                    safetensors=safetensors.__version__)
    sources = {}
    for sub in ("chatglm3-6b", "chatglm3-6b-thudm-github", "chatglm2-6b-32k", "chatglm3-openai-demo"):
        d = os.path.join(O, sub)
        sources[sub] = {f: sha256(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    sources["real_tokenizer.model"] = sha256(args.real_tokenizer)
    sources["dev_tokenizer.model"] = sha256(args.dev_tokenizer)

    cfg3, mdl3, tok3 = load_official(os.path.join(O, "chatglm3-6b"), "glm3_hf")
    _, mdl3b, tok3b = load_official(os.path.join(O, "chatglm3-6b-thudm-github"), "glm3_gh")
    cfg2k, mdl2k, tok2k = load_official(os.path.join(O, "chatglm2-6b-32k"), "glm2_32k")

    # ------------------------------------------------------------------ 2. tokenizer / prompt cases (real vocab)
    print("tokenizer cases", flush=True)
    tokd = chatglm3_tokenizer_cases({"chatglm3-6b": tok3, "chatglm3-6b-thudm-github": tok3b}, args.real_tokenizer)
    dump(tokd, os.path.join(OUT, "chatglm3", "prompts.json"))

    # ------------------------------------------------------------------ 3. process_response
    print("process_response", flush=True)
    spec = importlib.util.spec_from_file_location("glm3_demo_utils", os.path.join(O, "chatglm3-openai-demo", "utils.py"))
    demo_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_utils)
    dump({"cases": run_process_response(mdl3, demo_utils)}, os.path.join(OUT, "chatglm3", "process_response.json"))

    # ------------------------------------------------------------------ 4. tiny ChatGLM3 model
    print("tiny chatglm3", flush=True)
    dev_tok = tok3.ChatGLMTokenizer(vocab_file=args.dev_tokenizer)
    n_real = dev_tok.vocab_size  # 4000 sp pieces + 9 specials = 4009
    pv = ((n_real + 63) // 64) * 64
    cfgd = tiny_config_dict(os.path.join(O, "chatglm3-6b", "config.json"), pv, 512)
    m3 = build_model(mdl3, cfg3, cfgd, 20240701, n_real)
    d3 = os.path.join(OUT, "chatglm3", "tiny")
    keys = save_model(m3, cfgd, os.path.join(d3, "model"), args.dev_tokenizer)
    dump(weights_summary(m3), os.path.join(d3, "golden", "weights_summary.json"))
    cases, full = forward_cases(m3, dev_tok, [1, 7, 33, 130], vocab=4000)
    dump({"dtype": "float32", "model": "chatglm3/tiny", "cases": cases}, os.path.join(d3, "golden", "forward.json"))
    from safetensors.torch import save_file
    save_file({f"logits_len{L}": full[L].contiguous() for L in (1, 7, 33)},
              os.path.join(d3, "golden", "forward_logits_all_positions.safetensors"), metadata={"format": "pt"})
    ids27 = cases[2]["input_ids"][:27]
    fullr, steps, diffs, _ = incremental(m3, ids27, 7)
    # chunked continuation: 5 tokens at once after a 7-token prefill
    with torch.no_grad():
        o = m3(input_ids=torch.tensor([ids27[:7]]), position_ids=torch.arange(7)[None], use_cache=True, return_dict=True)
        o2 = m3(input_ids=torch.tensor([ids27[7:12]]), position_ids=torch.arange(7, 12)[None],
                past_key_values=o.past_key_values, use_cache=True, return_dict=True)
    chunk_diff = float((o2.logits[0].float() - fullr[7:12]).abs().max())
    dump({"dtype": "float32", "token_ids": ids27, "prefill": 7,
          "incremental": [f32list(s) for s in steps], "full_recompute": [f32list(fullr[6 + i]) for i in range(len(steps))],
          "max_abs_diff_per_step": diffs, "chunked_5_tokens_after_7_prefill_max_abs_diff": chunk_diff,
          "kv_cache_layout": "per layer (key, value), each [seq, batch, kv_groups, head_dim]"},
         os.path.join(d3, "golden", "incremental.json"))
    queries = [
        {"query": "你好", "history": []},
        {"query": "What is attention?", "history": [{"role": "system", "content": SYS_DEFAULT}]},
        {"query": "那明天呢？", "history": [{"role": "user", "content": "今天天气怎么样？"},
                                         {"role": "assistant", "content": "今天晴。"}]},
        {"query": '{"price": 12412}', "role": "observation",
         "history": [{"role": "system", "content": SYS_TOOLS, "tools": TOOLS},
                     {"role": "user", "content": "帮我查询股票10111的价格"},
                     {"role": "assistant", "metadata": "track", "content": 'tool_call(symbol="10111")'}]},
    ]
    for step, tokname, qq in ((4, "<|user|>", "你好"), (3, "<eos>", "Hi"), (5, "<|observation|>", "查询股票")):
        plen = len(dev_tok.build_chat_input(qq)["input_ids"][0])
        queries.append({"query": qq, "history": [], "forced": ForceTokenAt(plen, step, dev_tok.get_command(tokname)),
                        "forced_desc": f"+100 on {tokname} (id {dev_tok.get_command(tokname)}) at generated step {step}"})
    try:
        chats = chat_cases(m3, dev_tok, mdl3, queries)
        chat_err = None
    except Exception as e:
        chats, chat_err = [], traceback.format_exc()
    dump({"chat": chats, "error": chat_err,
          "note": "chat(): do_sample=False, max_length=len(prompt)+24; generated_ids from an identical generate() call "
                  "with eos_token_id=[eos, <|user|>, <|observation|>] and InvalidScoreLogitsProcessor. chat() always "
                  "drops the LAST generated id (outputs[len(prompt):-1]) whether or not it was a stop token."},
         os.path.join(d3, "golden", "generate.json"))

    # ------------------------------------------------------------------ 5. 32K variants
    long_len = 600
    rows = [0, 1, 255, 256, 300, 511, 512, 599]
    rope_positions = [0, 1, 2, 100, 599, 1000, 1023]

    def run_32k(tag, mdl, cfgmod, official_cfg, rope_ratio, seed, note, nreal, tokm):
        print("32k", tag, rope_ratio, flush=True)
        cd = tiny_config_dict(official_cfg, pv, 1024, {"rope_ratio": rope_ratio})
        m = build_model(mdl, cfgmod, cd, seed, nreal)
        ttk = tokm.ChatGLMTokenizer(vocab_file=args.dev_tokenizer)
        dd = os.path.join(OUT, tag)
        save_model(m, cd, os.path.join(dd, "model"), args.dev_tokenizer)
        dump(weights_summary(m), os.path.join(dd, "golden", "weights_summary.json"))
        cs, fl = forward_cases(m, dev_tok, [7, 130, long_len], row_positions=rows, vocab=4000)
        chat = None
        if hasattr(ttk, "build_prompt"):  # ChatGLM2-style chat() of the 32k file
            with torch.no_grad():
                hist = [("你好", "你好！有什么可以帮你？")]
                prompt = ttk.build_prompt("介绍一下长文本模型", hist)
                pids = ttk([prompt], return_tensors="pt")["input_ids"][0].tolist()
                resp, nh = m.chat(ttk, "介绍一下长文本模型", history=list(hist), do_sample=False, max_length=len(pids) + 16)
                g = m.generate(**ttk([prompt], return_tensors="pt"), max_length=len(pids) + 16, do_sample=False,
                               num_beams=1)
            chat = {"query": "介绍一下长文本模型", "history": hist, "prompt": prompt, "prompt_ids": pids,
                    "generated_ids": g[0].tolist()[len(pids):], "response": resp, "new_history": nh,
                    "max_length": len(pids) + 16}
        # the same weights with rope_ratio=1 (shows that the scaling matters)
        m1 = copy.deepcopy(m)
        m1.transformer.rotary_pos_emb.rope_ratio = 1
        lg1 = logits_of(m1, cs[-1]["input_ids"])
        dump({"dtype": "float32", "model": tag, "rope_ratio": rope_ratio, "note": note, "cases": cs, "chat": chat,
              "same_weights_rope_ratio_1": {"length": long_len, "argmax_per_position": lg1.argmax(-1).tolist(),
                                            "max_abs_diff_vs_rope_ratio_model_per_position":
                                                f32list((lg1 - fl[long_len]).abs().max(-1).values)}},
             os.path.join(dd, "golden", "forward.json"))
        ids = cs[-1]["input_ids"]
        fullr, steps, diffs, _ = incremental(m, ids, 590)
        dump({"dtype": "float32", "token_ids": ids, "prefill": 590,
              "incremental": [f32list(s) for s in steps],
              "full_recompute_argmax": [int(fullr[589 + i].argmax()) for i in range(len(steps))],
              "note": "incremental[i] = logits at position 589+i (i=0: last prefill row); compare with a full forward",
              "max_abs_diff_per_step": diffs}, os.path.join(dd, "golden", "incremental.json"))
        rt = rope_table_rows(m, rope_positions)
        rt["note"] = ("model.transformer.rotary_pos_emb(seq_length) of the official module: rows = positions, "
                      "each row = [n_elem/2 pairs of (cos, sin)] flattened, n_elem = kv_channels/2 = 8")
        m1r = rope_table_rows(m1, rope_positions)
        dump({"rope_ratio": rope_ratio, "table": rt, "table_with_rope_ratio_1": m1r},
             os.path.join(dd, "golden", "rope_table.json"))
        return m

    run_32k("chatglm2-32k", mdl2k, cfg2k, os.path.join(O, "chatglm2-6b-32k", "config.json"), 16, 20240702,
            "official THUDM/chatglm2-6b-32k modeling_chatglm.py; rope_ratio 16 = the official config.json value",
            4005, tok2k)
    run_32k("chatglm2-32k-ratio4", mdl2k, cfg2k, os.path.join(O, "chatglm2-6b-32k", "config.json"), 4, 20240703,
            "official THUDM/chatglm2-6b-32k modeling_chatglm.py; rope_ratio 4 (non-official value)", 4005, tok2k)

    # ChatGLM3-6B-32K: official modeling file NOT available here -> reconstruction, clearly labelled.
    def patch_glm3_32k(text):
        a = "    def __init__(self, dim, original_impl=False, device=None, dtype=None):\n"
        b = "    def __init__(self, dim, rope_ratio=1, original_impl=False, device=None, dtype=None):\n"
        assert text.count(a) == 1
        text = text.replace(a, b)
        a = "        self.original_impl = original_impl\n\n    def forward_impl("
        b = "        self.original_impl = original_impl\n        self.rope_ratio = rope_ratio\n\n    def forward_impl("
        assert text.count(a) == 1
        text = text.replace(a, b)
        a = "        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))\n"
        assert text.count(a) == 1
        text = text.replace(a, "        base = base * self.rope_ratio\n" + a)
        a = "RotaryEmbedding(rotary_dim // 2, original_impl=config.original_rope"
        assert text.count(a) == 1
        text = text.replace(a, "RotaryEmbedding(rotary_dim // 2, rope_ratio=config.rope_ratio, original_impl=config.original_rope")
        return text

    cfg3k, mdl3k, _ = load_official(os.path.join(O, "chatglm3-6b"), "glm3_32k_recon", patch_glm3_32k)
    run_32k("chatglm3-32k-RECONSTRUCTED", mdl3k, cfg3k, os.path.join(O, "chatglm3-6b", "config.json"), 50, 20240704,
            "NOT the official chatglm3-6b-32k file (not found): official chatglm3-6b modeling_chatglm.py with "
            "`base = base * self.rope_ratio` inserted in RotaryEmbedding.forward_impl (see README)", n_real, tok3)

    # ------------------------------------------------------------------ 6a. P-Tuning v2
    pt_out = {}
    for proj in (False, True):
        print("ptuning", proj, flush=True)
        cd = tiny_config_dict(os.path.join(O, "chatglm3-6b", "config.json"), pv, 512,
                              {"pre_seq_len": 4, "prefix_projection": proj})
        m = build_model(mdl3, cfg3, cd, 20240701, n_real)  # base weights: same seed -> same as chatglm3/tiny
        # re-seed only the prefix encoder so base weights stay identical to chatglm3/tiny
        g = torch.Generator().manual_seed(20240705 + int(proj))
        with torch.no_grad():
            for k, p in sorted(m.transformer.prefix_encoder.named_parameters()):
                if k == "embedding.weight":
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
                elif k.endswith("weight"):
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for k, v in m.state_dict().items():
            if not k.startswith("transformer.prefix_encoder"):
                assert torch.equal(v, m3.state_dict()[k]), k
        tag = "ptuning-v2-projection" if proj else "ptuning-v2"
        dd = os.path.join(OUT, "chatglm3", tag)
        pkeys = save_model(m, cd, dd, None, state_filter=lambda k: k.startswith("transformer.prefix_encoder"))
        ids = cases[2]["input_ids"]
        lg = logits_of(m, ids)
        fullr, steps, diffs, _ = incremental(m, ids[:20], 7)
        pt_out[tag] = {"config": {"pre_seq_len": 4, "prefix_projection": proj}, "prefix_encoder_keys": pkeys,
                       "prefix_shapes": {k: list(v.shape) for k, v in m.state_dict().items() if "prefix_encoder" in k},
                       "input_ids": ids, **per_position(lg), "logits_last": f32list(lg[-1]),
                       "incremental_token_ids": ids[:20], "incremental_prefill": 7,
                       "incremental_max_abs_diff_per_step": diffs,
                       "incremental_last": f32list(steps[-1])}
    dump({"base_model": "chatglm3/tiny (identical base weights)", "cases": pt_out},
         os.path.join(OUT, "chatglm3", "ptuning_golden.json"))

    # ------------------------------------------------------------------ 6b. PEFT LoRA
    if not args.skip_lora:
        try:
            import peft
            from peft import LoraConfig, get_peft_model
            print("lora", peft.__version__, flush=True)
            versions["peft"] = peft.__version__
            base = copy.deepcopy(m3)
            lc = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                            target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                            task_type="CAUSAL_LM")
            pm = get_peft_model(base, lc).eval()
            g = torch.Generator().manual_seed(20240706)
            with torch.no_grad():
                for k, p in sorted(pm.named_parameters()):
                    if "lora_A" in k or "lora_B" in k:
                        p.copy_(0.5 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            dd = os.path.join(OUT, "chatglm3", "lora")
            pm.save_pretrained(dd, safe_serialization=True)
            ids = cases[2]["input_ids"]
            with torch.no_grad():
                lg_peft = pm(input_ids=torch.tensor([ids]), use_cache=False, return_dict=True).logits[0].float()
            merged = pm.merge_and_unload().eval()
            lg = logits_of(merged, ids)
            lg_base = logits_of(m3, ids)
            from safetensors.torch import load_file
            ad = load_file(os.path.join(dd, "adapter_model.safetensors"))
            dump({"peft_version": peft.__version__, "adapter_keys": sorted(ad.keys()),
                  "adapter_shapes": {k: list(v.shape) for k, v in sorted(ad.items())},
                  "scaling": lc.lora_alpha / lc.r, "input_ids": ids, **per_position(lg),
                  "logits_first": f32list(lg[0]), "logits_last": f32list(lg[-1]),
                  "max_abs_diff_merged_vs_unmerged_peft": float((lg - lg_peft).abs().max()),
                  "max_abs_diff_vs_base_model": float((lg - lg_base).abs().max()),
                  "merged_weights_summary": {k: v for k, v in weights_summary(merged).items()
                                             if "layers.0." in k}},
                 os.path.join(OUT, "chatglm3", "lora_golden.json"))
        except Exception:
            dump({"error": traceback.format_exc()}, os.path.join(OUT, "chatglm3", "lora_golden.json"))

    dump({"versions": versions, "official_sources_sha256": sources, "state_dict_keys_chatglm3_tiny": keys},
         os.path.join(OUT, "MANIFEST.json"))
    print("done", flush=True)


if __name__ == "__main__":
    main()
